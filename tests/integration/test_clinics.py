"""Two clinics in one instance, over real HTTP against ``studypub api``, on SQLite and PostgreSQL.

- The route matrix: every route of the app (read from the app, classified in test_dashboard.ACCESS), each role
  of clinic A (registrator, administrator, its MIS key) against every object of clinic B: 404 or 403, and
  clinic B's rows unchanged afterwards; a superadmin sees both clinics.
- Context resolved once: a storage period saved in a clinic's dashboard applies to that clinic's MIS requests
  (and not to the other's); an unknown clinic code is a 422 with nothing recorded; the same study under two
  spellings of the code is one publication.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest

from studypub.models import utcnow
from tests.integration.test_dashboard import ACCESS, ADMIN, EXTEND, EXTRA_VALUES, MIS, PUBLIC, SUPER, USER, app_routes
from tests.support.api import make_api_key, seed_publication
from tests.support.dashboard import Browser, make_user

A, B = "f_khimki", "f_other"


def _db() -> Any:
    from studypub.db import get_sessionmaker

    return get_sessionmaker()()


def clinic_rows(code: str) -> dict[str, list[Any]]:
    """Every row clinic ``code`` owns, as plain values (what "changes nothing" compares)."""
    from sqlalchemy import inspect, select

    from studypub.models import ApiKey, AuditEvent, Clinic, ManualRequest, PublishedStudy, Setting, Task, User

    def dump(rows: Any) -> list[Any]:
        def columns(row: Any) -> tuple[Any, ...]:
            return tuple((c.key, repr(getattr(row, c.key))) for c in inspect(row).mapper.column_attrs)

        return sorted((columns(r) for r in rows), key=repr)

    with _db() as session:
        return {
            model.__name__: dump(
                session.scalars(select(model).where((model.code if model is Clinic else model.clinic_code) == code))
            )
            for model in (Task, PublishedStudy, ManualRequest, User, ApiKey, Setting, AuditEvent, Clinic)
        }


@pytest.fixture
def two_clinics(db_url: str, api_server: Any) -> Any:
    """Clinic A (f_Khimki) and B (f_Other): a registrator, an administrator and an MIS key each, a failed
    and a published publication each; a superadmin ``root``."""
    objects: dict[str, dict[str, str]] = {}
    for code in (A, B):
        c = code[-1]  # "i" / "r"
        failed = seed_publication(status="FAILED", clinic_code=code, patient_id=f"PID-{code}", accession=f"F-{c}")
        done = seed_publication(clinic_code=code, patient_id=f"PDONE-{code}", accession=f"D-{c}")
        objects[code] = {
            "task_id": failed.task_id,
            "done_id": done.task_id,
            "user_id": str(make_user(f"victim-{code}", "registrator", clinic_code=code)),
            "name": f"key-{code}",
            "code": code,
            "reg": f"reg-{code}",
            "admin": f"admin-{code}",
        }
        make_user(f"reg-{code}", "registrator", clinic_code=code)
        make_user(f"admin-{code}", "administrator", clinic_code=code)
        objects[code]["key"] = make_api_key(f"key-{code}", clinic_code=code)
    make_user("root", "superadmin")
    api = api_server(
        PREFECT_API_URL="http://127.0.0.1:9/api",
        STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute",
        STUDYPUB_PACS__PORT="9",
        STUDYPUB_PACS__ACSE_TIMEOUT="2",
    )
    return api, objects


def _form(path: str, n: int, other: dict[str, str]) -> dict[str, str]:
    """Forms filled as clinic A's user would, some naming clinic B's objects where a form can."""
    if path.endswith("/extend"):
        return {"save_till": (date.today() + timedelta(days=20)).isoformat()}
    if path == "/dashboard/publish":
        return {"patient_id": f"PM{n}", "accession_number": f"AM{n}"}
    if path == "/dashboard/users":  # a user for clinic B, a superadmin: neither may an administrator make
        return {"username": f"made{n}", "password": "made password 1", "role": "superadmin", "clinic_code": B}
    if path.endswith("/password"):
        return {"password": f"reset password {n}"}
    if path.endswith("/role"):
        return {"role": "administrator"}
    if path == "/dashboard/api-keys":
        return {"name": f"key{n}", "clinic_code": B}
    if path == "/dashboard/settings":
        return {"links.default_retention_days": "3"}
    return {}


def _concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


def test_route_matrix_one_clinic_against_the_other(two_clinics: Any) -> None:
    api, objects = two_clinics
    assert app_routes() == ACCESS.keys()  # every route of the app is in the matrix
    theirs, mine = objects[B], objects[A]
    before = clinic_rows(B)
    secrets_of_b = [f"PID-{B}", f"PDONE-{B}", theirs["task_id"], theirs["done_id"], f"victim-{B}", f"key-{B}"]
    n = 0
    for (method, template), access in sorted(ACCESS.items()):
        if access == PUBLIC:
            continue  # not a clinic's: the link pages answer by their unguessable key only
        path = _concrete(template, {**EXTRA_VALUES, **theirs})
        if access == MIS:  # A's key on B's tasks, and publishing for B
            body: dict[str, Any] = {"save_till_date": (utcnow() + timedelta(days=9)).isoformat()}
            if template == "/publish":
                body = {"patient_id": "PX", "accession_number": "AX", "clinic_code": "F_Other"}
            answer = httpx.request(method, api.base_url + path, json=body, headers={"X-API-Key": mine["key"]})
            assert answer.status_code in (403, 404), (method, path, answer.status_code, answer.text)
            continue
        for role in ("reg", "admin"):
            n += 1
            with Browser(api.base_url) as b:
                b.login(mine[role])
                answer = b.get(path) if method == "GET" else b.post(path, _form(template, n, theirs))
            where = (role, method, path, answer.status_code)
            assert answer.status_code < 500, where
            if "{" in template:  # an object of clinic B, named in the path
                assert answer.status_code in (403, 404), where
            elif answer.status_code == 200:  # A's own lists and forms: nothing of B in them
                for secret in secrets_of_b:
                    assert secret not in answer.text, (*where, secret)
            if access == SUPER or (access in (ADMIN, EXTEND) and role == "reg"):
                assert answer.status_code == 403, where
            assert access in (USER, EXTEND, ADMIN, SUPER)
    assert clinic_rows(B) == before  # nothing of clinic B changed

    # The superadmin sees both clinics, and B's objects by their ids.
    with Browser(api.base_url) as b:
        b.login("root")
        queue = b.get("/dashboard/api/queue").json()["rows"]
        assert {theirs["task_id"], mine["task_id"]} <= {r["task_id"] for r in queue}
        assert b.get(f"/dashboard/tasks/{theirs['task_id']}").status_code == 200
        users = b.get("/dashboard/users").text
        assert f"victim-{A}" in users and f"victim-{B}" in users
        keys = b.get("/dashboard/api-keys").text
        assert f"key-{A}" in keys and f"key-{B}" in keys
        published = b.get("/dashboard/published").text
        assert f"PDONE-{A}" in published and f"PDONE-{B}" in published


def test_a_clinics_dashboard_settings_apply_to_its_mis_requests(two_clinics: Any) -> None:
    api, objects = two_clinics
    with Browser(api.base_url) as b:
        b.login(objects[B]["admin"])
        assert b.post("/dashboard/settings", {"links.default_retention_days": "7"}).status_code == 200
    for code, days in ((B, 7), (A, 30)):
        answer = httpx.post(
            f"{api.base_url}/publish",
            headers={"X-API-Key": objects[code]["key"]},
            json={"patient_id": f"PS-{code}", "accession_number": "AS", "clinic_code": code.upper()},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        save_till = datetime.fromisoformat(answer.json()["save_till"])
        assert abs(save_till - (utcnow() + timedelta(days=days))) < timedelta(minutes=5), (code, save_till)


def test_unknown_clinics_and_spellings(two_clinics: Any) -> None:
    api, _objects = two_clinics
    key = make_api_key("every-clinic")  # bound to no clinic: every clinic of the instance
    post = {"patient_id": "PSP", "accession_number": "ASP"}
    before = clinic_rows("nowhere")
    unknown = httpx.post(
        f"{api.base_url}/publish", headers={"X-API-Key": key}, json={**post, "clinic_code": "nowhere"}, timeout=30
    )
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_clinic"
    assert "unknown clinic" in unknown.json()["detail"]
    assert clinic_rows("nowhere") == before
    first = httpx.post(
        f"{api.base_url}/publish", headers={"X-API-Key": key}, json={**post, "clinic_code": "F_Khimki"}, timeout=30
    )
    second = httpx.post(
        f"{api.base_url}/publish", headers={"X-API-Key": key}, json={**post, "clinic_code": " f_khimki"}, timeout=30
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["task_id"] == second.json()["task_id"] and first.json()["link"] == second.json()["link"]


def test_the_superadmin_manages_clinics_from_the_dashboard(two_clinics: Any) -> None:
    api, _objects = two_clinics
    form = {"code": " Branch-3", "name": "Branch three", "phone": "+7 495 123", "pacs.host": "10.1.1.1"}
    with Browser(api.base_url) as b:
        b.login("root")
        assert b.post("/dashboard/clinics", {**form, "pacs.port": "0"}).status_code == 422  # nothing added
        assert b.post("/dashboard/clinics", form).headers["location"] == "/dashboard/clinics?done=added"
        page = b.get("/dashboard/clinics")
        assert 'data-clinic="branch-3"' in page.text and "10.1.1.1" in page.text
        changed = b.post("/dashboard/clinics/branch-3", {**form, "pacs.host": "10.1.1.2"})  # the form, changed
        assert changed.status_code == 303
        assert "10.1.1.2" in b.get("/dashboard/clinics").text
        assert b.post("/dashboard/clinics", form).status_code == 409  # one spelling per clinic
        made = b.post(
            "/dashboard/users",
            {"username": "desk-b3", "password": "a good password", "role": "registrator", "clinic_code": "BRANCH-3"},
        )
        assert made.status_code == 303
    with _db() as session:
        from sqlalchemy import select

        from studypub.models import User

        assert session.scalars(select(User.clinic_code).where(User.username == "desk-b3")).one() == "branch-3"
    key = make_api_key("branch-3-key", clinic_code="branch-3")
    answer = httpx.post(
        f"{api.base_url}/publish",
        headers={"X-API-Key": key},
        json={"patient_id": "PB3", "accession_number": "AB3", "clinic_code": "BRANCH-3"},
        timeout=30,
    )
    assert answer.status_code == 202
    path = "/s/" + answer.json()["link"].rsplit("/s/", 1)[1]
    page = httpx.get(api.base_url + path, headers={"Accept-Language": "en"}, timeout=30)  # the patient's page
    clinic = page.text[page.text.index('data-test="clinic"') :]
    assert page.status_code == 200 and "Branch three" in clinic and 'href="tel:+7495123"' in clinic, clinic


def test_a_clinics_administrator_works_on_its_own_publications(two_clinics: Any) -> None:
    """What the scoped session lets through: every action on the clinic's own publications and users."""
    api, objects = two_clinics
    mine = objects[A]
    with Browser(api.base_url) as b:
        b.login(mine["admin"])
        later = (date.today() + timedelta(days=40)).isoformat()
        assert b.post(f"/dashboard/tasks/{mine['done_id']}/extend", {"save_till": later}).status_code == 303
        assert b.post(f"/dashboard/tasks/{mine['done_id']}/republish").status_code == 303
        assert b.post(f"/dashboard/tasks/{mine['task_id']}/retry").status_code == 303
        assert (
            b.post(f"/dashboard/users/{mine['user_id']}/password", {"password": "another password"}).status_code == 303
        )
        assert b.post(f"/dashboard/api-keys/key-{A}/revoke").status_code == 303
        assert b.post("/dashboard/settings", {"links.default_retention_days": "11"}).status_code == 200
        assert b.get(f"/dashboard/audit?task_id={mine['done_id']}").status_code == 200


def _queue_pids(html: str) -> set[str]:
    return set(re.findall(r'class="id">((?:PID|PDONE)-[\w-]+)<', html))


def test_the_superadmin_sees_each_rows_clinic_and_filters_by_it(two_clinics: Any) -> None:
    """The queue, its polled rows and the published list name each row's clinic for a superadmin and show one
    clinic on request; a clinic's users see no clinic column and no filter (their session shows their own)."""
    api, _objects = two_clinics
    everything = {f"PID-{A}", f"PDONE-{A}", f"PID-{B}", f"PDONE-{B}"}
    with Browser(api.base_url) as b:
        b.login("root")
        queue = b.get("/dashboard/queue").text
        assert '<th data-col="clinic">' in queue and '<select name="clinic" data-autosubmit>' in queue
        assert set(re.findall(r'data-clinic="([\w-]+)"', queue)) == {A, B}
        assert everything <= _queue_pids(queue)
        one = b.get("/dashboard/queue", params={"clinic": " F_Other", "status": "FAILED"}).text  # any spelling
        assert _queue_pids(one) == {f"PID-{B}"} and set(re.findall(r'data-clinic="([\w-]+)"', one)) == {B}
        assert f'data-poll="/dashboard/api/queue?status=FAILED&amp;clinic={B}"' in one  # the page polls the same
        assert re.search(rf'<option value="{B}" selected>', one)
        polled = b.get("/dashboard/api/queue", params={"clinic": B}).json()
        assert {r["clinic"] for r in polled["rows"]} == {B}
        assert _queue_pids(polled["html"]) == {f"PID-{B}", f"PDONE-{B}"}
        assert 'data-col="clinic"' in polled["html"]
        unknown = b.get("/dashboard/queue", params={"clinic": "nowhere"}).text  # not a clinic: no filter
        assert everything <= _queue_pids(unknown)
        published = b.get("/dashboard/published", params={"clinic": A}).text
        assert '<th data-col="clinic">' in published and set(re.findall(r'data-clinic="([\w-]+)"', published)) == {A}
        assert f"PDONE-{A}" in published and f"PDONE-{B}" not in published
        assert "1 active" in published  # the clinic counts as a filter
        assert f"clinic={A}" in published  # kept by the sort links and pages
    for user in (f"reg-{A}", f"admin-{A}"):
        with Browser(api.base_url) as b:
            b.login(user)
            for path in ("/dashboard/queue", "/dashboard/published"):
                page = b.get(path, params={"clinic": B, "status": "all"} if "published" in path else {"clinic": B})
                assert page.status_code == 200
                assert 'data-col="clinic"' not in page.text and 'name="clinic"' not in page.text
                assert f"PDONE-{A}" in page.text and f"-{B}" not in page.text  # the parameter is no way in
            polled = b.get("/dashboard/api/queue", params={"clinic": B}).json()
            assert {r["clinic"] for r in polled["rows"]} == {A} and 'data-col="clinic"' not in polled["html"]


def test_the_clinics_screen_shows_choices_in_words(two_clinics: Any) -> None:
    """A clinic's settings with choices (burned-in images, dates, retrieval, yes/no) are lists of named choices,
    as on the Settings screen, in the page's language; the saved choice is selected, the default is named."""
    api, _objects = two_clinics
    with Browser(api.base_url) as b:
        b.login("root")
        form = {"name": "Other", "deid.burned_in_policy": "include", "pacs.retrieve_method": "get"}
        assert b.post(f"/dashboard/clinics/{B}", form).status_code == 303
        for lang, default, chosen in (
            ("en", "default: leave them out of the archive", "include them"),
            ("ru", "по умолчанию", None),
            ("de", None, None),
            ("es", None, None),
            ("fr", None, None),
        ):
            page = b.get("/dashboard/clinics", params={"lang": lang}).text
            row = page[page.index(f'data-clinic="{B}"') :]
            policy = re.search(r'<select name="deid.burned_in_policy">(.*?)</select>', row, re.S)
            assert policy, lang
            options = re.findall(r'<option value="(\w*)"( selected)?>([^<]*)</option>', policy.group(1))
            assert [v for v, _s, _t in options] == ["", "withhold", "include", "fail"]
            assert [v for v, s, _t in options if s] == ["include"]
            texts = [text for _v, _s, text in options]
            assert not {"withhold", "include", "fail"} & set(texts)  # words, not codes
            if default:
                assert texts[0].startswith(default), texts
            if chosen:
                assert texts[2] == chosen
            method = re.search(r'<select name="pacs.retrieve_method">(.*?)</select>', row, re.S)
            assert method and re.search(r'<option value="get" selected>C-GET', method.group(1)), lang
            assert re.search(r'<select name="notify.renotify_on_extend">', row)  # yes/no as a choice too
            assert 'placeholder="withhold"' not in page and 'placeholder="move"' not in page
