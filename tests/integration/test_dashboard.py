"""The dashboard over real HTTP against ``studypub api`` (its own process): sign-in and sessions, the role
matrix over every route of the app, CSRF, manual publication through the MIS path, the published list,
extension and revocation, users, MIS keys, settings and the audit trail."""

from __future__ import annotations

import re
import time
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from studypub.models import utcnow
from tests.support.api import make_api_key, seed_publication
from tests.support.dashboard import PASSWORD, Browser, make_user

UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"


def db() -> Any:
    from studypub.db import get_sessionmaker

    return get_sessionmaker()()


def task_row(task_id: str) -> Any:
    from studypub.publications import get_task

    with db() as session:
        return get_task(session, task_id)


def audit_actions(actor: str | None = None) -> list[str]:
    from sqlalchemy import select

    from studypub.models import AuditEvent

    with db() as session:
        query = select(AuditEvent.action).order_by(AuditEvent.id)
        if actor:
            query = query.where(AuditEvent.actor == actor)
        return list(session.scalars(query))


@pytest.fixture
def dashboard(api_server: Any) -> Any:
    """The API with a registrator ``reg`` and an administrator ``admin``; Prefect unreachable (runs wait)."""

    def start(**env: str) -> Any:
        make_user("reg", "registrator")
        make_user("admin", "administrator")
        return api_server(**{"PREFECT_API_URL": UNREACHABLE_PREFECT, **env})

    return start


# --- sign-in and sessions -------------------------------------------------------------------------------------


def test_sign_in_sessions_and_sign_out(db_url: str, dashboard: Any) -> None:
    api = dashboard(STUDYPUB_DASHBOARD__REGISTRATOR_SESSION_HOURS="0.001")  # 3.6 s
    with Browser(api.base_url) as b:
        # The bare address leads to the dashboard, then to its sign-in.
        root = b.get("/")
        assert root.status_code == 303 and root.headers["location"] == "/dashboard"
        assert b.get("/dashboard").headers["location"] == "/dashboard/queue"
        page = b.get("/dashboard/queue")
        assert page.status_code == 303 and page.headers["location"].startswith("/dashboard/login?next=")
        assert b.get("/dashboard/api/queue").status_code == 401

        wrong = b.post("/dashboard/login", {"username": "reg", "password": "not the password"})
        assert wrong.status_code == 401 and "password" in wrong.text.lower()
        unknown = b.post("/dashboard/login", {"username": "nobody", "password": PASSWORD})
        assert unknown.status_code == 401 and unknown.text.count("alert") == wrong.text.count("alert")

        signed = b.post("/dashboard/login", {"username": "reg", "password": PASSWORD, "next": "https://evil.example/"})
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard/queue"  # no open redirect
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("sp_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        assert token.count(".") == 2  # a JWT
        assert b.get("/dashboard/queue").status_code == 200

        # A tampered token is refused.
        head, body, sig = token.split(".")
        forged = httpx.get(f"{api.base_url}/dashboard/api/queue", cookies={"sp_session": f"{head}.{body}.{sig[::-1]}"})
        assert forged.status_code == 401

        time.sleep(4)  # the registrator's session lifetime (setting) passes
        assert b.get("/dashboard/api/queue").status_code == 401

    with Browser(api.base_url) as b:
        b.login("admin")  # administrators' lifetime is 24 h
        time.sleep(4)
        assert b.get("/dashboard/api/queue").status_code == 200
        stolen = dict(b.http.cookies)
        out = b.post("/dashboard/logout")
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        # Signing out ends the session everywhere: a copy of the cookie no longer works.
        assert httpx.get(f"{api.base_url}/dashboard/api/queue", cookies=stolen).status_code == 401
    assert "user.signed_in" in audit_actions("admin") and "user.signed_out" in audit_actions("admin")


def test_password_reset_and_disabling_end_sessions(db_url: str, dashboard: Any) -> None:
    api = dashboard()
    victim = make_user("clerk", "registrator")
    with Browser(api.base_url) as clerk, Browser(api.base_url) as admin:
        clerk.login("clerk")
        admin.login("admin")
        assert clerk.get("/dashboard/api/queue").status_code == 200
        assert admin.post(f"/dashboard/users/{victim}/password", {"password": "a new password 42"}).status_code == 303
        assert clerk.get("/dashboard/api/queue").status_code == 401
        assert clerk.post("/dashboard/login", {"username": "clerk", "password": PASSWORD}).status_code == 401
        clerk.login("clerk", "a new password 42")
        assert admin.post(f"/dashboard/users/{victim}/disable").status_code == 303
        assert clerk.get("/dashboard/api/queue").status_code == 401
        assert clerk.post("/dashboard/login", {"username": "clerk", "password": "a new password 42"}).status_code == 401
        assert admin.post(f"/dashboard/users/{victim}/enable").status_code == 303
        clerk.login("clerk", "a new password 42")


def test_sign_in_attempts_are_rate_limited(db_url: str, dashboard: Any) -> None:
    api = dashboard(STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="3/minute")
    with Browser(api.base_url) as b:
        codes = [
            b.post("/dashboard/login", {"username": "reg", "password": f"guess {i}"}).status_code for i in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        # The right password is refused too while the limit holds (no oracle, no brute force).
        assert b.post("/dashboard/login", {"username": "reg", "password": PASSWORD}).status_code == 429


def test_first_administrator_from_settings_and_cli(api_server: Any, tmp_path: Any) -> None:
    import json
    import subprocess

    from tests.support.worker import STUDYPUB

    api = api_server(
        STUDYPUB_DASHBOARD__FIRST_ADMIN_USERNAME="boss",
        STUDYPUB_DASHBOARD__FIRST_ADMIN_PASSWORD="first start password",
    )
    with Browser(api.base_url) as b:
        b.login("boss", "first start password")
        assert b.get("/dashboard/users").status_code == 200
    out = subprocess.run(
        [str(STUDYPUB), "create-user", "--username", "desk1", "--role", "registrator", "--password-stdin"],
        input="desk password 123\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "ok", "username": "desk1", "role": "registrator"}
    short = subprocess.run(
        [str(STUDYPUB), "create-user", "--username", "desk2", "--password-stdin"],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert short.returncode != 0 and "at least 10" in json.loads(short.stdout)["reason"]
    with Browser(api.base_url) as b:
        b.login("desk1", "desk password 123")
        assert b.get("/dashboard/users").status_code == 403


def test_no_built_in_password_in_production() -> None:
    from pydantic import ValidationError

    from studypub.settings import Settings

    with pytest.raises(ValidationError, match="placeholder"):
        Settings(
            env="production",
            secret_key="x" * 40,
            dashboard={"first_admin_username": "admin", "first_admin_password": "changeme"},
        )


# --- the role matrix over every route -------------------------------------------------------------------------

# Every route of the app, by who may use it. A new route fails the test until it is classified here.
PUBLIC, MIS, USER, EXTEND, ADMIN, SUPER = "public", "mis", "user", "extend", "admin", "superadmin"
ACCESS: dict[tuple[str, str], str] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/dashboard/static"): PUBLIC,
    ("GET", "/s/{key}"): PUBLIC,
    ("GET", "/s/{key}/download"): PUBLIC,
    ("GET", "/s/{key}/verify"): PUBLIC,
    ("POST", "/s/{key}/verify"): PUBLIC,
    ("POST", "/webhooks/sms/{provider}/{token}"): PUBLIC,  # authenticated by its token (and Twilio's signature)
    ("GET", "/fhir/{version}/ImagingStudy/{task_id}"): MIS,
    ("GET", "/s/{rest:path}"): PUBLIC,
    ("GET", "/s"): PUBLIC,
    ("GET", "/s/{key}/view"): PUBLIC,
    ("GET", "/s/{key}/view/manifest.json"): PUBLIC,
    ("GET", "/s/{key}/view/study.json"): PUBLIC,
    ("GET", "/s/{key}/view/i/{n}"): PUBLIC,
    ("GET", "/viewer/{path:path}"): PUBLIC,
    ("GET", "/ohif"): PUBLIC,
    ("GET", "/ohif/{path:path}"): PUBLIC,
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/dashboard/login"): PUBLIC,
    ("POST", "/dashboard/login"): PUBLIC,
    ("POST", "/publish"): MIS,
    ("GET", "/publish/{task_id}"): MIS,
    ("POST", "/publish/{task_id}/extend"): MIS,
    ("POST", "/dashboard/logout"): USER,
    ("GET", "/dashboard/queue"): USER,
    ("GET", "/dashboard/api/queue"): USER,
    ("GET", "/dashboard/publish"): USER,
    ("POST", "/dashboard/publish"): USER,
    ("GET", "/dashboard/tasks/{task_id}"): USER,
    ("GET", "/dashboard/published"): USER,
    ("POST", "/dashboard/tasks/{task_id}/extend"): EXTEND,
    ("POST", "/dashboard/tasks/{task_id}/revoke"): ADMIN,
    ("POST", "/dashboard/tasks/{task_id}/retry"): ADMIN,
    ("POST", "/dashboard/tasks/{task_id}/republish"): ADMIN,
    ("POST", "/dashboard/tasks/{task_id}/unlock"): ADMIN,
    ("POST", "/dashboard/tasks/{task_id}/pin"): USER,
    ("POST", "/dashboard/tasks/{task_id}/messages/{message_id}/resend"): USER,
    ("GET", "/dashboard/users"): ADMIN,
    ("POST", "/dashboard/users"): ADMIN,
    ("POST", "/dashboard/users/{user_id}/password"): ADMIN,
    ("POST", "/dashboard/users/{user_id}/role"): ADMIN,
    ("POST", "/dashboard/users/{user_id}/disable"): ADMIN,
    ("POST", "/dashboard/users/{user_id}/enable"): ADMIN,
    ("GET", "/dashboard/api-keys"): ADMIN,
    ("POST", "/dashboard/api-keys"): ADMIN,
    ("POST", "/dashboard/api-keys/{name}/revoke"): ADMIN,
    ("GET", "/dashboard/settings"): ADMIN,
    ("POST", "/dashboard/settings"): ADMIN,
    ("POST", "/dashboard/settings/echo"): ADMIN,
    ("GET", "/dashboard/audit"): ADMIN,
    ("GET", "/dashboard/clinics"): SUPER,
    ("POST", "/dashboard/clinics"): SUPER,
    ("POST", "/dashboard/clinics/{code}"): SUPER,
}


# Path values of the routes that reach the patient and other systems (a message that does not exist is fine).
# Path values of the routes that need more than a task, a user and a key's name to reach.
EXTRA_VALUES = {
    "message_id": "999999",
    "version": "R4",
    "provider": "smsru",
    "token": "not-the-token",
    "n": "0",
    "path": "choose.js",
    "code": "f_khimki",
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the app itself (mounts count as GET)."""
    from starlette.routing import Mount

    from api.app import create_app

    def walk(routes: list[Any]) -> Any:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router (its routes carry the prefix)
                assert not getattr(route.include_context, "prefix", ""), "a router included with a prefix"
                yield from walk(route.original_router.routes)
            else:
                yield route

    found: set[tuple[str, str]] = set()
    for route in walk(create_app().routes):
        if isinstance(route, Mount):
            found.add(("GET", route.path))
            continue
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return found


def test_every_route_is_classified() -> None:
    routes = app_routes()
    assert routes - ACCESS.keys() == set(), "classify the new routes in ACCESS"
    assert ACCESS.keys() - routes == set(), "ACCESS lists routes the app no longer has"


def _concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], path)


def _form(path: str, n: int) -> dict[str, str]:
    if path.endswith("/extend"):
        return {"save_till": (date.today() + timedelta(days=20)).isoformat()}
    if path == "/dashboard/publish":
        return {"patient_id": f"PM{n}", "accession_number": f"AM{n}"}
    if path == "/dashboard/users":
        return {"username": f"made{n}", "password": "made password 1", "role": "registrator"}
    if path.endswith("/password"):
        return {"password": f"reset password {n}"}
    if path.endswith("/role"):
        return {"role": "registrator"}
    if path == "/dashboard/api-keys":
        return {"name": f"key{n}"}
    if path == "/dashboard/settings":
        return {"links.default_retention_days": "20"}
    return {}


def test_role_matrix(db_url: str, dashboard: Any) -> None:
    api = dashboard(
        STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute",
        STUDYPUB_PACS__PORT="9",  # the C-ECHO answers quickly: nothing listens
        STUDYPUB_PACS__ACSE_TIMEOUT="2",
    )
    victim = make_user("victim", "registrator")
    make_api_key("matrix-key")
    values = {
        "task_id": seed_publication(status="FAILED").task_id,
        "user_id": str(victim),
        "name": "matrix-key",
        "key": "A" * 22,
        "rest": "x/y",
        "n": "0",
        **EXTRA_VALUES,
    }
    n = 0
    for (method, template), access in sorted(ACCESS.items()):
        path = _concrete(template, values)
        if access == PUBLIC:
            if template.endswith("/static"):
                path += "/dashboard.css" if template.startswith("/dashboard") else "/link.css"
            with Browser(api.base_url) as b:  # forms need the page's CSRF token, even sign-in
                answer = b.get(path) if method == "GET" else b.post(path, {"username": "x", "password": "y"})
            expected_error = path == "/ready" and answer.status_code == 503  # its dependencies are down here
            assert answer.status_code != 403 and (answer.status_code < 500 or expected_error), (method, path)
            if path != "/dashboard/login":
                assert answer.status_code != 401, (method, path)
            continue
        if access == MIS:
            answer = httpx.request(method, api.base_url + path, json={}, timeout=30)
            assert answer.status_code == 401, (method, path, answer.status_code)
            continue
        for role in (None, "reg", "admin"):
            n += 1
            with Browser(api.base_url) as b:
                if role:
                    b.login(role)
                else:
                    b.get("/dashboard/login")  # a CSRF token, so the role check is what answers
                answer = b.get(path) if method == "GET" else b.post(path, _form(template, n))
            where = (role, method, path, answer.status_code)
            assert answer.status_code < 500, where
            if role is None:
                if path.startswith("/dashboard/api/"):
                    assert answer.status_code == 401, where
                else:
                    assert answer.status_code == 303, where
                    assert answer.headers["location"].startswith("/dashboard/login?next="), where
            elif access == SUPER or (role == "reg" and access in (ADMIN, EXTEND)):  # superadmins: test_clinics
                assert answer.status_code == 403, where
                assert "text/html" in answer.headers["content-type"]
            else:
                assert answer.status_code not in (401, 403), where
                assert not answer.headers.get("location", "").startswith("/dashboard/login?next="), where


def test_csrf_is_required_on_every_form(db_url: str, dashboard: Any) -> None:
    api = dashboard(STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute")
    victim = make_user("victim", "registrator")
    seeded = seed_publication(status="FAILED")
    values = {"task_id": seeded.task_id, "user_id": str(victim), "name": "nokey", **EXTRA_VALUES}
    before = len(audit_actions())
    posts = [template for (method, template) in ACCESS if method == "POST" and template.startswith("/dashboard")]
    assert len(posts) >= 15
    with Browser(api.base_url) as b:
        b.login("admin")
        before = len(audit_actions())
        for template in posts:
            path = _concrete(template, values)
            answer = b.post(path, _form(template, 0), csrf=False)
            assert answer.status_code == 403, (path, answer.status_code)
            forged = b.http.post(path, data={**_form(template, 0), "csrf_token": "0" * 64})
            assert forged.status_code == 403, path
            # The token of another browser's nonce does not pass either.
            other = httpx.get(f"{api.base_url}/dashboard/login")
            token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', other.text).group(1)  # type: ignore[union-attr]
            assert b.http.post(path, data={**_form(template, 0), "csrf_token": token}).status_code == 403, path
        assert len(audit_actions()) == before  # nothing happened
        assert b.get("/dashboard/api/queue").status_code == 200  # still signed in


# --- manual publication ----------------------------------------------------------------------------------------


def test_manual_publication_goes_the_mis_path(db_url: str, dashboard: Any) -> None:
    from sqlalchemy import select

    from studypub.models import ManualRequest, User

    api = dashboard()
    make_user("kh", "registrator", clinic_code="f_Khimki")  # manual requests are the user's clinic's
    with Browser(api.base_url) as b:
        b.login("kh")
        form = b.get("/dashboard/publish")
        assert form.status_code == 200 and 'name="patient_id"' in form.text

        bad = b.post("/dashboard/publish", {"patient_id": "", "accession_number": "A*1", "retention_days": "9999"})
        assert bad.status_code == 422
        assert bad.text.count('class="error" data-field=') == 3
        assert audit_actions("kh") == ["user.signed_in"]  # nothing was recorded

        done = b.post("/dashboard/publish", {"patient_id": "1000001158664", "accession_number": "KP125706548L"})
        assert done.status_code == 303
        location = urlparse(done.headers["location"])
        task_id = location.path.rsplit("/", 1)[1]
        assert parse_qs(location.query) == {"done": ["requested"]}
        page = b.get(done.headers["location"])
        task = task_row(task_id)
        assert task.source == "manual" and task.status == "QUEUED" and task.dispatch_pending
        assert f"/s/{task.link_key}" in page.text and "data-copy" in page.text

        again = b.post("/dashboard/publish", {"patient_id": "1000001158664", "accession_number": "KP125706548L"})
        assert again.headers["location"] == f"/dashboard/tasks/{task_id}?done=existing"

    key = make_api_key("mis")
    mis = httpx.post(
        f"{api.base_url}/publish",
        headers={"X-API-Key": key},
        json={"patient_id": "1000001158664", "accession_number": "KP125706548L", "clinic_code": "f_Khimki"},
    )
    assert mis.status_code == 202 and mis.json()["task_id"] == task_id  # the same idempotency
    with db() as session:
        reg = session.scalars(select(User).where(User.username == "kh")).one()
        rows = session.scalars(select(ManualRequest).where(ManualRequest.task_id == task_id)).all()
        assert [r.user_id for r in rows] == [reg.id, reg.id]


def test_queue_shows_progress_failures_and_links(db_url: str, dashboard: Any) -> None:
    api = dashboard(STUDYPUB_DASHBOARD__PREFECT_UI_URL="http://prefect.clinic:4200")
    failed = seed_publication(status="FAILED", patient_id="PFAIL", accession="AFAIL")
    done = seed_publication(patient_id="PDONE", accession="ADONE")
    from studypub.publications import set_flow_run

    with db() as session:
        set_flow_run(session, failed.task_id, "5f0c2f39-6a3c-4bb5-a4c8-3a2b9b4a6f11")
    with Browser(api.base_url) as b:
        b.login("reg")
        rows = {r["task_id"]: r for r in b.get("/dashboard/api/queue").json()["rows"]}
        assert rows[failed.task_id]["status"] == "FAILED"
        assert "accession number" in rows[failed.task_id]["reason"]
        assert rows[failed.task_id]["run_url"] == (
            "http://prefect.clinic:4200/runs/flow-run/5f0c2f39-6a3c-4bb5-a4c8-3a2b9b4a6f11"
        )
        assert rows[done.task_id]["size"] == len(done.archive) and rows[done.task_id]["reason"] is None
        page = b.get("/dashboard/queue")
        assert 'class="status-failed"' in page.text and "PFAIL" in page.text
        only_failed = b.get("/dashboard/api/queue", params={"status": "FAILED"}).json()["rows"]
        assert [r["task_id"] for r in only_failed] == [failed.task_id]


def test_retry_of_a_failed_publication_without_a_run_queues_it_again(db_url: str, dashboard: Any) -> None:
    api = dashboard()
    failed = seed_publication(status="FAILED")
    with Browser(api.base_url) as b:
        b.login("admin")
        answer = b.post(f"/dashboard/tasks/{failed.task_id}/retry")
        assert answer.status_code == 303
        task = task_row(failed.task_id)
        assert task.status == "QUEUED" and task.requeues == 1 and task.dispatch_pending
        again = b.post(f"/dashboard/tasks/{failed.task_id}/retry")
        assert again.status_code == 409  # no longer failed
    assert "publication.requeued" in audit_actions("admin")


def test_retry_of_a_stuck_publication_is_never_refused_but_a_live_run_is_left_alone(
    db_url: str, dashboard: Any
) -> None:
    """A publication whose run died (its lease ran out) can be retried at once; one whose run is alive cannot."""
    from sqlalchemy import update

    from studypub.models import Task, utcnow

    stuck = seed_publication(status="RUNNING")
    alive = seed_publication(status="RUNNING")
    with db() as session:
        session.execute(update(Task).where(Task.id == stuck.task_id).values(lease_until=utcnow()))
        session.commit()
    api = dashboard()
    with Browser(api.base_url) as b:
        b.login("admin")
        rows = {r["task_id"]: r for r in b.get("/dashboard/api/queue").json()["rows"]}
        assert rows[stuck.task_id]["can_retry"] and not rows[alive.task_id]["can_retry"]
        assert b.post(f"/dashboard/tasks/{stuck.task_id}/retry").status_code == 303
        assert b.post(f"/dashboard/tasks/{alive.task_id}/retry").status_code == 409
    task = task_row(stuck.task_id)
    assert task.status == "QUEUED" and task.dispatch_pending and task.lease_owner is None
    assert task_row(alive.task_id).status == "RUNNING"


def test_retry_of_a_failed_run_is_prefects_retry(db_url: str, dashboard: Any, prefect_api_url: str) -> None:
    """A failed publication whose run failed: the dashboard's Retry sets that run to AwaitingRetry, as the
    Prefect UI's Retry does (the worker then resumes it after the last finished step)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    from studypub.publications import set_flow_run

    @flow(name="dashboard-retry-probe")
    def probe() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(probe, state=Failed(message="storage down"))
    failed = seed_publication(status="FAILED")
    with db() as session:
        set_flow_run(session, failed.task_id, str(run.id))
    api = dashboard(PREFECT_API_URL=prefect_api_url)
    with Browser(api.base_url) as b:
        b.login("admin")
        queue = b.get("/dashboard/queue")
        assert f'action="/dashboard/tasks/{failed.task_id}/retry"' in queue.text  # retry from the queue
        assert b.post(f"/dashboard/tasks/{failed.task_id}/retry").status_code == 303
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.name == "AwaitingRetry"
    task = task_row(failed.task_id)
    assert task.requeues == 0 and task.flow_run_id == str(run.id)  # the same run, not a new one
    assert "publication.retried" in audit_actions("admin")


# --- published studies ------------------------------------------------------------------------------------------


def _column(html: str, col: str) -> list[str]:
    return re.findall(rf'data-col="{col}" data-value="([^"]*)"', html)


def test_published_list_filters_sorts_and_pages(db_url: str, dashboard: Any) -> None:
    from sqlalchemy import update

    from studypub.models import PublishedStudy, Task

    api = dashboard(STUDYPUB_DASHBOARD__PAGE_SIZE="10")
    seeded = [seed_publication(patient_id=f"PID{i:02d}", archive=b"x" * (1000 + i * 37 % 11 * 100)) for i in range(23)]
    seed_publication(status="FAILED", patient_id="PIDFAILED")
    with db() as session:  # spread the upload dates: one per day
        for i, s in enumerate(seeded):
            session.execute(
                update(PublishedStudy)
                .where(PublishedStudy.task_id == s.task_id)
                .values(upload_date=utcnow() - timedelta(days=i), downloads=i % 4)
            )
            session.execute(update(Task).where(Task.id == s.task_id).values(emk_record_id=f"EMK{i:02d}"))
        session.commit()
    with Browser(api.base_url) as b:
        b.login("reg")
        first = b.get("/dashboard/published")
        assert first.status_code == 200
        assert "23" in re.search(r'data-test="total">([^<]*)<', first.text).group(1)  # type: ignore[union-attr]
        assert len(_column(first.text, "size")) == 10 and "PIDFAILED" not in first.text
        uploads = _column(first.text, "upload_date")
        assert uploads == sorted(uploads, reverse=True)  # newest first by default
        last = b.get("/dashboard/published", params={"page": 3})
        assert len(_column(last.text, "size")) == 3

        by_size = b.get("/dashboard/published", params={"sort": "size", "order": "asc"})
        sizes = [int(v) for v in _column(by_size.text, "size")]
        assert sizes == sorted(sizes) and sizes[0] == min(len(s.archive) for s in seeded)
        by_downloads = b.get("/dashboard/published", params={"sort": "downloads", "order": "desc"})
        downloads = [int(v) for v in _column(by_downloads.text, "downloads")]
        assert downloads == sorted(downloads, reverse=True)

        one = b.get("/dashboard/published", params={"pid": "PID07"})
        assert len(_column(one.text, "size")) == 1 and "EMK07" in one.text and f"/s/{seeded[7].link_key}" in one.text
        recent = b.get(
            "/dashboard/published",
            params={
                "upload_from": (date.today() - timedelta(days=4)).isoformat(),
                "upload_to": date.today().isoformat(),
            },
        )
        assert len(_column(recent.text, "size")) == 5
        bad = b.get("/dashboard/published", params={"upload_from": "yesterday"})
        assert bad.status_code == 422 and "Publication date, from: not a date" in bad.text
        far = b.get("/dashboard/published", params={"upload_to": "9999-12-31", "study_from": "0001-01-01"})
        assert far.status_code == 422 and "between 1900 and 2200" in far.text


# --- extension, revocation, audit ----------------------------------------------------------------------------


def test_extend_and_revoke_by_role(db_url: str, dashboard: Any) -> None:
    api = dashboard()
    seeded = seed_publication()
    later = (date.today() + timedelta(days=60)).isoformat()
    with Browser(api.base_url) as reg, Browser(api.base_url) as admin:
        reg.login("reg")
        admin.login("admin")
        assert reg.post(f"/dashboard/tasks/{seeded.task_id}/extend", {"save_till": later}).status_code == 403
        assert reg.post(f"/dashboard/tasks/{seeded.task_id}/revoke").status_code == 403
        page = reg.get(f"/dashboard/tasks/{seeded.task_id}")
        assert "/extend" not in page.text and "/revoke" not in page.text

        before = task_row(seeded.task_id).save_till
        assert admin.post(f"/dashboard/tasks/{seeded.task_id}/extend", {"save_till": later}).status_code == 303
        assert task_row(seeded.task_id).save_till > before
        too_far = (date.today() + timedelta(days=5000)).isoformat()
        refused = admin.post(f"/dashboard/tasks/{seeded.task_id}/extend", {"save_till": too_far})
        assert refused.status_code == 422 and "maximum retention" in refused.text

        assert admin.post(f"/dashboard/tasks/{seeded.task_id}/revoke").status_code == 303
        assert task_row(seeded.task_id).status == "DELETED"
        assert httpx.get(f"{api.base_url}/s/{seeded.link_key}").status_code == 410
        gone = admin.post(f"/dashboard/tasks/{seeded.task_id}/extend", {"save_till": later})
        assert gone.status_code == 410

        audit = admin.get("/dashboard/audit", params={"actor": "admin", "action": "publication."})
        assert 'data-action="publication.extended"' in audit.text and 'data-action="publication.revoked"' in audit.text
        assert 'data-action="publication.requested"' not in audit.text
        assert "Storage period extended" in audit.text and "Link revoked, archive deleted" in audit.text


def test_registrators_may_extend_when_the_setting_allows(db_url: str, dashboard: Any) -> None:
    api = dashboard(STUDYPUB_DASHBOARD__REGISTRATORS_CAN_EXTEND="true")
    seeded = seed_publication()
    with Browser(api.base_url) as reg:
        reg.login("reg")
        later = (date.today() + timedelta(days=60)).isoformat()
        assert reg.post(f"/dashboard/tasks/{seeded.task_id}/extend", {"save_till": later}).status_code == 303
        assert reg.post(f"/dashboard/tasks/{seeded.task_id}/revoke").status_code == 403
    assert "publication.extended" in audit_actions("reg")


# --- users, MIS keys, settings --------------------------------------------------------------------------------


def test_users_and_keys_administration(db_url: str, dashboard: Any) -> None:
    api = dashboard()
    with Browser(api.base_url) as admin:
        admin.login("admin")
        made = admin.post(
            "/dashboard/users", {"username": "desk", "password": "desk password 1", "role": "registrator"}
        )
        assert made.status_code == 303
        dup = admin.post("/dashboard/users", {"username": "desk", "password": "desk password 1", "role": "registrator"})
        assert dup.status_code == 409 and "exists" in dup.text
        short = admin.post("/dashboard/users", {"username": "desk2", "password": "short", "role": "registrator"})
        assert short.status_code == 422 and "at least 10" in short.text

        from sqlalchemy import select

        from studypub.models import User

        with db() as session:
            ids = {u.username: u.id for u in session.scalars(select(User))}
        assert admin.post(f"/dashboard/users/{ids['desk']}/role", {"role": "administrator"}).status_code == 303
        assert admin.post(f"/dashboard/users/{ids['desk']}/role", {"role": "root"}).status_code == 422
        assert admin.post(f"/dashboard/users/{ids['desk']}/role", {"role": "registrator"}).status_code == 303
        assert admin.post(f"/dashboard/users/{2**40}/disable").status_code == 422
        assert admin.post("/dashboard/users/0/disable").status_code == 422
        last = admin.post(f"/dashboard/users/{ids['admin']}/disable")
        assert last.status_code == 409 and "last administrator" in last.text

        slash = admin.post("/dashboard/api-keys", {"name": "a/b"})
        assert slash.status_code == 422 and 'id="newkey"' not in slash.text
        assert admin.post("/dashboard/api-keys", {"name": "long", "clinic_code": "c" * 65}).status_code == 422
        created = admin.post("/dashboard/api-keys", {"name": "mis-main", "clinic_code": "f_Khimki"})
        assert created.status_code == 200
        key = re.search(r'id="newkey" class="mono" aria-label="API key"|value="(sp_[^"]+)"', created.text)
        key_value = re.search(r'value="([^"]+)" id="newkey"', created.text).group(1)  # type: ignore[union-attr]
        assert key is not None and key_value
        listing = admin.get("/dashboard/api-keys")
        assert key_value not in listing.text and "mis-main" in listing.text  # shown once
        body = {"patient_id": "P1", "accession_number": "A1", "clinic_code": "f_Khimki"}
        assert httpx.post(f"{api.base_url}/publish", headers={"X-API-Key": key_value}, json=body).status_code == 202
        assert admin.post("/dashboard/api-keys/mis-main/revoke").status_code == 303
        time.sleep(5.5)  # the API's per-process key cache
        assert httpx.post(f"{api.base_url}/publish", headers={"X-API-Key": key_value}, json=body).status_code == 401
    actions = audit_actions("admin")
    for action in ("user.created", "user.role_changed", "api_key.created", "api_key.revoked"):
        assert action in actions, action


def test_settings_override_the_environment_defaults(db_url: str, dashboard: Any, orthanc: Any) -> None:
    api = dashboard(STUDYPUB_PACS__PORT="9", STUDYPUB_PACS__ACSE_TIMEOUT="2")
    with Browser(api.base_url) as admin:
        admin.login("admin")
        page = admin.get("/dashboard/settings")
        assert page.status_code == 200 and 'placeholder="30"' in page.text
        dates = re.search(r'<select name="deid.dates">(.*?)</select>', page.text, re.S)
        assert dates and re.findall(r'<option value="(\w*)"', dates.group(1)) == ["", "remove", "shift", "keep"]

        echo = admin.post("/dashboard/settings/echo")
        assert 'data-test="echo"' in echo.text and 'class="error"' in echo.text

        clash = admin.post(
            "/dashboard/settings", {"links.default_retention_days": "50", "links.max_retention_days": "40"}
        )
        assert clash.status_code == 200 and "max_retention_days" in clash.text
        saved = admin.post(
            "/dashboard/settings",
            {
                "links.default_retention_days": "10",
                "pacs.host": orthanc.host,
                "pacs.port": str(orthanc.dicom_port),
                "pacs.called_ae": orthanc.aet,
                "deid.dates": "shift",
            },
        )
        assert saved.status_code == 200 and 'role="status"' in saved.text
        assert re.search(r'<option value="shift" selected>', saved.text)
        ok = admin.post("/dashboard/settings/echo")
        assert "ms" in re.search(r'data-test="echo">([^<]*)<', ok.text).group(1)  # type: ignore[union-attr]

        time.sleep(5.5)  # other requests see the saved values within the cache time
        admin.post("/dashboard/publish", {"patient_id": "P10", "accession_number": "A10"})
    from sqlalchemy import select

    from studypub.models import Task

    with db() as session:
        task = session.scalars(select(Task).where(Task.accession_number == "A10")).one()
    days = (task.save_till - utcnow()).total_seconds() / 86400
    assert 9.5 < days <= 11  # the dashboard's default (10 days), not the environment's (30)
    assert "settings.changed" in audit_actions("admin")


def test_pages_speak_the_browsers_language_and_the_switch_is_remembered(db_url: str, dashboard: Any) -> None:
    api = dashboard()
    with Browser(api.base_url) as b:
        b.login("reg")
        for header, lang, says in [
            ("ru-RU,ru;q=0.9", "ru", "Очередь"),
            ("en-US", "en", "Queue"),
            ("es-ES,es;q=0.9", "es", "Cola"),
            ("fr-FR", "fr", "File d'attente"),
            ("de-CH,de;q=0.9", "de", "Warteschlange"),
        ]:
            page = b.get("/dashboard/queue", headers={"Accept-Language": header})
            assert says in page.text and f'lang="{lang}"' in page.text, header
        switched = b.get("/dashboard/published?lang=en&pid=P1", headers={"Accept-Language": "ru"})
        assert "Published studies" in switched.text
        assert 'href="/dashboard/published?pid=P1&amp;lang=de"' in switched.text  # the switch keeps the filter
        remembered = b.get("/dashboard/publish", headers={"Accept-Language": "ru"})
        assert "Publish a study" in remembered.text

        b.login("admin")
        echoed = b.post("/dashboard/settings/echo")  # a form's answer: the switch leads to its page
        assert 'href="/dashboard/settings?lang=fr"' in echoed.text


def test_two_administrators_demoting_each_other_leave_one(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-administrator rule holds under a race (PostgreSQL row locks): of two administrators demoting
    each other at the same moment, one succeeds and the other is refused."""
    import threading

    from sqlalchemy import delete, select

    from studypub.db import migrate
    from studypub.errors import Conflict
    from studypub.models import User
    from studypub.settings import get_settings
    from studypub.users import Role, set_role

    monkeypatch.setenv("STUDYPUB_DATABASE__URL", pg_database)
    get_settings.cache_clear()
    migrate()
    with db() as session:
        session.execute(delete(User))
        session.commit()
    first, second = make_user("adm1", "administrator"), make_user("adm2", "administrator")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(target: int, actor: str) -> None:
        with db() as session:
            barrier.wait()
            try:
                set_role(session, target, Role.REGISTRATOR, actor=actor)
                outcomes.append("demoted")
            except Conflict:
                outcomes.append("refused")

    threads = [
        threading.Thread(target=demote, args=(first, "adm2")),
        threading.Thread(target=demote, args=(second, "adm1")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["demoted", "refused"]
    with db() as session:
        roles = session.scalars(select(User.role).where(User.username.in_(["adm1", "adm2"]))).all()
    assert sorted(roles) == ["administrator", "registrator"]
