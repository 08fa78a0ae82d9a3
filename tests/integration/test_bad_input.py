"""A NUL character in any input is a 422 with a reason in words, never a 500 (issue 10), over real HTTP against
``studypub api`` on SQLite and PostgreSQL (psycopg2 refuses a NUL in a query parameter with a ValueError, which
was a 500 for the sign-in form, the published-list and audit filters and task ids in paths).

Every route of the app is swept (the role matrix's catalogue of routes, tests/integration/test_dashboard.py), so a
new route is covered as soon as it is classified there."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from studypub.models import Task
from tests.integration.test_dashboard import ACCESS, EXTRA_VALUES, PUBLIC, UNREACHABLE_PREFECT, _concrete
from tests.support.api import make_api_key, seed_publication
from tests.support.dashboard import PASSWORD, Browser, make_user

NUL_REASON = "NUL character"
MIS_BODY: dict[str, Any] = {
    "patient_id": "1000001158664",
    "accession_number": "KP125706548L",
    "emk_record_id": "123456",
    "clinic_code": "default",
    "service_title": "МРТ суставов",
    "study_date": "2025-02-01T16:18:02+03:00",
}


def tasks_count() -> int:
    from studypub.db import get_sessionmaker

    with get_sessionmaker()() as session:
        return int(session.scalar(select(func.count()).select_from(Task)) or 0)


def assert_refused(r: httpx.Response, where: str, *, html: bool, field: str | None = None) -> None:
    """A 422 that says, in words, which part of the request (path, query, or the field) holds a NUL."""
    assert r.status_code == 422, (where, r.status_code, r.text[:300])
    if html:
        assert r.headers["content-type"].startswith("text/html"), where
        assert NUL_REASON in r.text, where
        if field:
            assert f"{field}: contains a {NUL_REASON}" in r.text, where
    else:
        body = r.json()
        assert body["code"] == "invalid_request" and NUL_REASON in body["detail"], (where, body)
        if field:
            assert body["detail"].startswith(f"{field}: ") and body["errors"][0]["field"] == field, (where, body)


@pytest.fixture
def server(db_url: str, api_server: Any) -> Any:
    make_user("reg", "registrator")
    make_user("admin", "administrator")
    return api_server(PREFECT_API_URL=UNREACHABLE_PREFECT, STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute")


def test_the_named_inputs_answer_422_with_a_reason(server: Any) -> None:
    """The inputs of the issue: sign-in before authentication, published-list and audit filters, task ids in
    paths, the MIS's JSON body and its task id."""
    task = seed_publication(status="FAILED")
    before = tasks_count()
    with Browser(server.base_url) as b:
        for form, field in (
            ({"username": "adm\x00in", "password": PASSWORD}, "username"),
            ({"username": "admin", "password": "pass\x00word"}, "password"),
            ({"username": "admin", "password": PASSWORD, "next": "/dashboard/\x00queue"}, "next"),
        ):
            assert_refused(b.post("/dashboard/login", form), f"sign-in {field}", html=True, field=field)
        assert "sp_session" not in b.http.cookies  # refused, not signed in
        b.login("admin")
        for path in (  # the reason names the query string (its parameters are the route's business)
            "/dashboard/published?pid=100%00001",
            "/dashboard/published?acsn=%00",
            "/dashboard/published?pid=1&acsn=KP%00&sort=pid",
            "/dashboard/audit?actor=adm%00in",
            "/dashboard/audit?action=%00",
            f"/dashboard/audit?task_id={task.task_id[:30]}%00",
            f"/dashboard/tasks/%00{task.task_id}",
            f"/dashboard/tasks/{task.task_id}%00",
            "/dashboard/queue?status=FAILED%00",
        ):
            assert_refused(b.get(path), path, html=True, field="path" if "?" not in path else "query")
        assert_refused(b.get("/dashboard/api/queue?status=%00"), "queue json", html=False, field="query")
        for action in ("retry", "republish", "revoke", "extend"):
            path = f"/dashboard/tasks/{task.task_id}%00/{action}"
            assert_refused(b.post(path, {"save_till": "2099-01-01"}), path, html=True)
        form = {"patient_id": "P\x001", "accession_number": "A1"}
        assert_refused(b.post("/dashboard/publish", form), "publish form", html=True, field="patient_id")
        # Look-alikes that are not a NUL pass: an encoded "%" followed by 00, and a backslash-u in text.
        assert b.get("/dashboard/published?pid=%2500").status_code == 200
        assert b.get(f"/dashboard/tasks/{task.task_id}").status_code == 200

    key = make_api_key("nul-mis")
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=30) as mis:
        for field in ("patient_id", "accession_number", "emk_record_id", "clinic_code", "service_title"):
            assert_refused(mis.post("/publish", json={**MIS_BODY, field: "a\x00b"}), field, html=False, field=field)
        raw = '{"patient_id": "P\\u0000", "accession_number": "A", "clinic_code": "default"}'
        json_text = {"Content-Type": "application/json"}
        assert_refused(mis.post("/publish", content=raw, headers=json_text), "raw", html=False, field="patient_id")
        unknown = mis.post("/publish", json={**MIS_BODY, "x\x00": 1})
        assert_refused(unknown, "a key", html=False, field="(unknown field)")
        assert tasks_count() == before  # nothing recorded
        for path in ("/publish/%00", f"/publish/{task.task_id}%00", f"/publish/%00{task.task_id}"):
            assert_refused(mis.get(path), path, html=False, field="path")
        extend = mis.post(f"/publish/{task.task_id}/extend", json={"save_till_date": "2099-01-01T00:00:00+03:00\x00"})
        assert_refused(extend, "extend", html=False, field="save_till_date")
        text = {**MIS_BODY, "service_title": "C:\\u0000 is not a NUL"}  # a backslash, then the letters u0000
        assert mis.post("/publish", json=text).status_code == 202

    with httpx.Client(base_url=server.base_url, timeout=30) as anyone:
        assert anyone.get("/health").status_code == 200  # still serving
    assert "Unexpected error" not in server.log_text()


def test_every_route_refuses_a_nul_in_its_path_query_and_body(server: Any) -> None:
    values = {
        "task_id": seed_publication(status="FAILED").task_id,
        "user_id": str(make_user("victim")),
        "name": "nul-key",
        "key": "A" * 22,
        "rest": "x/y",
        **EXTRA_VALUES,
    }
    make_api_key("nul-key")
    with Browser(server.base_url) as anonymous, Browser(server.base_url) as admin:
        anonymous.get("/dashboard/login")
        admin.login("admin")
        for (method, template), access in sorted(ACCESS.items()):
            path = _concrete(template, values)
            if access == PUBLIC and template.endswith("/static"):
                path += "/dashboard.css" if template.startswith("/dashboard") else "/link.css"
            html = path.startswith("/dashboard") and not path.startswith(("/dashboard/api/", "/dashboard/static"))
            links = path == "/s" or path.startswith("/s/")
            send = anonymous.get if method == "GET" else anonymous.post

            # the query string, before any authentication
            r = send(f"{path}?q=%00")
            assert_refused(r, f"{method} {path}?q=%00", html=html and not links, field="query")

            # the path: a NUL in each path parameter (or after the path where it has none)
            params = [name for name in re.findall(r"\{(\w+)", template) if name in values]
            for name in params or [""]:
                bad = _concrete(template, {**values, name: quote(values[name] + "\x00", safe="/")}) if name else ""
                bad = bad or path.rstrip("/") + "/%00"
                r = send(bad)
                if links:  # the patient's pages: a malformed key is a miss like any other, the same 404 page
                    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), (bad, r)
                else:
                    assert_refused(r, f"{method} {bad}", html=html, field="path")

            # the body: a form field (the dashboard, signed in with the page's token) or a JSON string (the MIS)
            if method == "POST":
                if template.startswith("/dashboard"):
                    r = admin.post(path, {"username": "x", "patient_id": "P1", "anything": "a\x00b"})
                else:
                    r = httpx.post(server.base_url + path, json={"patient_id": "a\x00b"}, timeout=30)
                assert_refused(r, f"POST {path} body", html=html, field="anything" if html else "patient_id")
    assert "Unexpected error" not in server.log_text()
