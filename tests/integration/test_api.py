"""The MIS API over real HTTP against ``studypub api`` (its own process): authentication, validation,
idempotency under a race, status, extension and revocation, and what happens while Prefect is unreachable.
Both databases where it matters."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from studypub.models import utcnow
from tests.support.api import make_api_key, past, seed_publication
from tests.support.net import wait_for
from tests.support.proxy import TcpProxy
from tests.support.worker import STUDYPUB

BODY: dict[str, Any] = {
    "patient_id": "1000001158664",
    "accession_number": "KP125706548L",
    "emk_record_id": "123456",
    "clinic_code": "f_Khimki",
    "service_code": "A01.201.405.002",
    "service_title": "МРТ суставов",
    "study_date": "2025-02-01T16:18:02+03:00",
}
UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"


def iso(days: float) -> str:
    return (utcnow() + timedelta(days=days)).isoformat()


def cli(*args: str) -> dict[str, Any]:
    out = subprocess.run([str(STUDYPUB), *args], capture_output=True, text=True, timeout=120)
    return dict(json.loads(out.stdout), exit_code=out.returncode)


def db_task(task_id: str) -> Any:
    from studypub.db import get_sessionmaker
    from studypub.publications import get_task

    with get_sessionmaker()() as session:
        return get_task(session, task_id)


@pytest.fixture
def mis(db_url: str, api_server: Any) -> Iterator[httpx.Client]:
    """An MIS client with a valid key, against an API whose Prefect is unreachable (runs wait)."""
    key = make_api_key()
    api = api_server(PREFECT_API_URL=UNREACHABLE_PREFECT)
    with api.client(headers={"X-API-Key": key}) as client:
        yield client


# --- authentication ----------------------------------------------------------------------------------------


def test_keys_are_required_and_checked(db_url: str, api_server: Any) -> None:
    good = make_api_key("mis")
    khimki = make_api_key("khimki-only", clinic_code="f_Khimki")
    other = seed_publication(clinic_code="f_Other")
    api = api_server(PREFECT_API_URL=UNREACHABLE_PREFECT)
    with api.client() as c:
        for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "sp_" + "x" * 43}, {"X-API-Key": good[:-1]}):
            r = c.post("/publish", json=BODY, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["code"] == "unauthorized" and r.json()["detail"]
        assert c.get(f"/publish/{other.task_id}").status_code == 401

        r = c.post("/publish", json=dict(BODY, clinic_code="f_Other"), headers={"X-API-Key": khimki})
        assert r.status_code == 403 and "clinic" in r.json()["detail"]
        assert c.get(f"/publish/{other.task_id}", headers={"X-API-Key": khimki}).status_code == 404
        extend = {"save_till_date": iso(20)}
        r = c.post(f"/publish/{other.task_id}/extend", json=extend, headers={"X-API-Key": khimki})
        assert r.status_code == 404
        assert c.get(f"/publish/{other.task_id}", headers={"X-API-Key": good}).status_code == 200

        # Revoked through the administrator's command: refused from then on.
        assert c.post("/publish", json=BODY, headers={"X-API-Key": good}).status_code == 202
        assert cli("revoke-api-key", "--name", "mis")["status"] == "ok"
        # Other processes remember a key for a few seconds (apikeys.CACHE_SECONDS): refused within that time.
        wait_for(lambda: c.post("/publish", json=BODY, headers={"X-API-Key": good}).status_code == 401, 10, "401")
    listed = cli("list-api-keys")["keys"]
    assert {k["name"] for k in listed} == {"mis", "khimki-only"}
    assert all(good not in json.dumps(k) and khimki not in json.dumps(k) for k in listed)


def test_create_api_key_command_prints_a_working_key_once(db_url: str, api_server: Any) -> None:
    created = cli("create-api-key", "--name", "MIS Khimki", "--clinic", "f_Khimki")
    assert created["exit_code"] == 0 and created["api_key"].startswith("sp_") and len(created["api_key"]) >= 40
    again = cli("create-api-key", "--name", "MIS Khimki")
    assert again["exit_code"] == 1 and "already exists" in again["reason"]
    api = api_server(PREFECT_API_URL=UNREACHABLE_PREFECT)
    with api.client(headers={"X-API-Key": created["api_key"]}) as c:
        assert c.post("/publish", json=BODY).status_code == 202
    from sqlalchemy import select

    from studypub.db import get_sessionmaker
    from studypub.models import ApiKey

    with get_sessionmaker()() as session:
        stored = session.scalars(select(ApiKey)).one()
        assert created["api_key"] not in (stored.key_hash, stored.key_hint) and len(stored.key_hash) == 64


# --- validation --------------------------------------------------------------------------------------------

BAD_PAYLOADS: list[tuple[str, Any, str]] = [
    ("missing patient_id", {k: v for k, v in BODY.items() if k != "patient_id"}, "patient_id"),
    ("missing accession", {k: v for k, v in BODY.items() if k != "accession_number"}, "accession_number"),
    ("missing clinic", {k: v for k, v in BODY.items() if k != "clinic_code"}, "clinic_code"),
    ("number as patient_id", dict(BODY, patient_id=1000001158664), "patient_id"),
    ("null accession", dict(BODY, accession_number=None), "accession_number"),
    ("empty accession", dict(BODY, accession_number="  "), "accession_number"),
    ("wildcard accession", dict(BODY, accession_number="KP*"), "accession_number"),
    ("backslash in patient_id", dict(BODY, patient_id="1\\2"), "patient_id"),
    ("control character", dict(BODY, patient_id="10\n01"), "patient_id"),
    ("huge patient_id", dict(BODY, patient_id="1" * 65), "patient_id"),
    ("huge title", dict(BODY, service_title="М" * 513), "service_title"),
    ("list as title", dict(BODY, service_title=["МРТ"]), "service_title"),
    ("unknown field", dict(BODY, patient_name="Ivanov^Ivan"), "patient_name"),
    ("NUL in title", dict(BODY, service_title="МРТ\x00суставов"), "service_title"),
    ("control character in clinic", dict(BODY, clinic_code="f_\x01Khimki"), "clinic_code"),
    ("NUL in EMK id", dict(BODY, emk_record_id="12\x0034"), "emk_record_id"),
    ("year 9999", dict(BODY, study_date="9999-12-31T23:00:00-05:00"), "study_date"),
    ("year 1", dict(BODY, study_date="0001-01-01T00:30:00+05:00"), "study_date"),
    ("numeric string date", dict(BODY, save_till_date="1800000000"), "save_till_date"),
    ("number too big", dict(BODY, study_date=10**40), "study_date"),
    ("date without offset", dict(BODY, study_date="2025-02-01T16:18:02"), "study_date"),
    ("date only", dict(BODY, save_till_date="2025-03-01"), "save_till_date"),
    ("not a date", dict(BODY, study_date="yesterday"), "study_date"),
    ("unix time", dict(BODY, study_date=1738415882), "study_date"),
    ("impossible date", dict(BODY, study_date="2025-02-30T10:00:00+03:00"), "study_date"),
    ("save_till in the past", dict(BODY, save_till_date="2020-03-01T00:00:00+03:00"), "past"),
    ("save_till beyond max", dict(BODY, save_till_date="2099-03-01T00:00:00+03:00"), "maximum retention"),
    ("array body", [BODY], "body"),
    ("string body", "publish please", "body"),
]


RAW_PHRASING = ("Input should", "Value error", "validation error", "Field required", "String should")


def test_4xx_messages_say_what_is_expected(mis: httpx.Client) -> None:
    """The messages of issue 12: the content type, an empty body, a value of the wrong kind, save_till_date."""
    body = json.dumps(BODY).encode()
    # A valid JSON object is read as JSON whatever the Content-Type says (curl -d sends a form's type).
    assert mis.post("/publish", content=body, headers={"Content-Type": ""}).status_code == 202
    r = mis.post(
        "/publish",
        content=json.dumps(dict(BODY, accession_number="CT-FORM")).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 202, r.text
    r = mis.post("/publish", content=b"patient_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"], r.text
    # An empty body names the fields it needs.
    r = mis.post("/publish", content=b"", headers={"Content-Type": "application/json"})
    answer = r.json()
    assert r.status_code == 422 and "patient_id, accession_number, clinic_code" in answer["detail"], answer
    assert [e["field"] for e in answer["errors"]] == ["patient_id", "accession_number", "clinic_code"]
    # A value of the wrong kind: the field and what is expected.
    r = mis.post("/publish", json=dict(BODY, patient_id=1000001158664))
    assert r.json()["detail"] == "patient_id: must be a text string (in double quotes)", r.text
    r = mis.post("/publish", json=dict(BODY, accession_number="K" * 65))
    assert r.json()["detail"] == "accession_number: must be at most 64 characters long", r.text
    assert not any(raw in r.text for raw in RAW_PHRASING)
    # save_till_date's answers carry the errors array the README shows.
    r = mis.post("/publish", json=dict(BODY, accession_number="PAST", save_till_date=iso(-1)))
    assert r.status_code == 422 and r.json() == {
        "code": "invalid_request",
        "detail": "save_till_date is in the past",
        "errors": [{"field": "save_till_date", "message": "save_till_date is in the past"}],
    }
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"`{json.dumps(r.json(), ensure_ascii=False)}`" in readme  # the answer the README shows
    task = mis.post("/publish", json=dict(BODY, accession_number="EXT")).json()
    r = mis.post(f"/publish/{task['task_id']}/extend", json={"save_till_date": iso(1)})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "save_till_date", r.text
    r = mis.post(f"/publish/{task['task_id']}/extend", content=b"")
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "save_till_date", "message": "is required"}]


def test_bad_payloads_get_422_with_a_reason(mis: httpx.Client) -> None:
    for name, payload, mention in BAD_PAYLOADS:
        r = mis.post("/publish", json=payload)
        assert r.status_code == 422, (name, r.status_code, r.text)
        body = r.json()
        assert body["code"] == "invalid_request" and mention in r.text, (name, body)
        assert "Ivanov" not in r.text  # values are not echoed back
        # The field is named, in the detail and in "errors", in plain words (never pydantic's own phrasing).
        assert body["errors"] and body["errors"][0]["field"] in body["detail"], (name, body)
        assert not any(raw in r.text for raw in RAW_PHRASING), (name, body)
    # Not JSON at all, wrong content type, too large: still 4xx with a reason, never 500.
    r = mis.post("/publish", content=b'{"patient_id": "1",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == "the body is not valid JSON"
    r = mis.post("/publish", content="patient_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500 and r.json()["detail"]
    r = mis.post("/publish", content=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]
    r = mis.post("/publish", json=dict(BODY, service_title="x" * 200_000))
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"
    # A key that is not a field name is not echoed back either (it may carry anything).
    r = mis.post("/publish", json=dict(BODY, **{"PATIENT 1000001158664 Ivanov": 1}))
    assert r.status_code == 422 and "Ivanov" not in r.text and "(unknown field)" in r.text
    r = mis.post("/publish", content=b'{"patient_id": NaN}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert mis.get("/publish/../../etc/passwd").status_code == 404
    for bad_id, mention in (("x" * 5000, "task id"), ("a%00b", "NUL character"), ("not-a-task", "task id")):
        r = mis.get(f"/publish/{bad_id}")
        assert r.status_code == 422 and mention in r.json()["detail"], (bad_id, r.text)
        assert mis.post(f"/publish/{bad_id}/extend", json={"save_till_date": iso(5)}).status_code == 422
    # Nothing was recorded by any of them.
    from sqlalchemy import func, select

    from studypub.db import get_sessionmaker
    from studypub.models import Task

    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0


def test_russian_title_and_default_retention(mis: httpx.Client) -> None:
    r = mis.post("/publish", json=BODY)
    assert r.status_code == 202
    body = r.json()
    task = db_task(body["task_id"])
    assert task.service_title == "МРТ суставов" and task.emk_record_id == "123456"
    kept = task.save_till - utcnow()
    assert timedelta(days=29, hours=23) < kept <= timedelta(days=30)
    r = mis.post("/publish", json=dict(BODY, accession_number="OTHER1", save_till_date=iso(10)))
    assert abs((db_task(r.json()["task_id"]).save_till - utcnow()) - timedelta(days=10)) < timedelta(minutes=1)


# --- the answers -------------------------------------------------------------------------------------------


def test_answers_follow_the_publication_state(mis: httpx.Client) -> None:
    # New: 202 with the task, its status URL and the link, issued now.
    r = mis.post("/publish", json=BODY)
    assert r.status_code == 202
    first = r.json()
    assert first["status"] == "QUEUED" and first["link"].endswith("/s/" + db_task(first["task_id"]).link_key)
    assert BODY["patient_id"] not in first["link"] and BODY["accession_number"] not in first["link"]
    assert urlparse(first["status_url"]).path == f"/publish/{first['task_id']}"
    # Queued: 202, same task and link. While Prefect is unreachable the reason says so.
    again = mis.post("/publish", json=BODY).json()
    assert (again["task_id"], again["link"]) == (first["task_id"], first["link"])
    status = wait_for(
        lambda: (s := mis.get(first["status_url"]).json())["waiting_for"] == "prefect" and s, 60, "the dispatch reason"
    )
    assert "Prefect is unreachable" in status["reason"] and status["progress"] == {"received": None, "expected": None}
    assert status["waiting_since"] is not None

    # Published and not expired: 200 with the existing link and its size.
    done = seed_publication(patient_id="P1", accession="A1")
    r = mis.post("/publish", json=dict(BODY, patient_id="P1", accession_number="A1"))
    assert r.status_code == 200 and r.json()["task_id"] == done.task_id and r.json()["status"] == "COMPLETED"
    assert r.json()["size_bytes"] == len(done.archive) and r.json()["instances"] == 3

    # Failed: the same request queues it again (same task and link); the reason is gone until it fails again.
    failed = seed_publication("FAILED", patient_id="P2", accession="A2")
    shown = mis.get(f"/publish/{failed.task_id}").json()
    assert shown["status"] == "FAILED" and "accession" in shown["reason"] and shown["step"] == "find"
    r = mis.post("/publish", json=dict(BODY, patient_id="P2", accession_number="A2"))
    assert r.status_code == 202 and r.json()["task_id"] == failed.task_id and r.json()["status"] == "QUEUED"
    task = db_task(failed.task_id)
    assert task.requeues == 1 and task.dispatch_pending and task.link_key == failed.link_key

    # Past its storage period but not deleted yet: a new publication (new link); the old one is expired.
    old = seed_publication(patient_id="P3", accession="A3", save_till=past(1))
    r = mis.post("/publish", json=dict(BODY, patient_id="P3", accession_number="A3"))
    assert r.status_code == 202 and r.json()["task_id"] != old.task_id
    assert db_task(old.task_id).status == "EXPIRED"

    assert mis.get(f"/publish/{uuid.uuid4()}").status_code == 404


def test_extension_and_revocation(mis: httpx.Client) -> None:
    from studypub.settings import get_settings
    from studypub.storage import open_storage

    pub = seed_publication(save_till=utcnow() + timedelta(days=3))
    url = f"/publish/{pub.task_id}/extend"
    r = mis.post(url, json={"save_till_date": iso(400)})
    assert r.status_code == 422 and "maximum retention" in r.json()["detail"]
    r = mis.post(url, json={"save_till_date": iso(1)})
    assert r.status_code == 422 and "later than the current" in r.json()["detail"]
    assert mis.post(url, json={"save_till_date": "2025-06-01"}).status_code == 422
    assert mis.post(url, json={}).status_code == 422
    r = mis.post(url, json={"save_till_date": iso(60)})
    assert r.status_code == 200 and abs(db_task(pub.task_id).save_till - (utcnow() + timedelta(days=60))).days == 0

    # Expired but not yet deleted: it can still be extended.
    late = seed_publication(save_till=past(2))
    r = mis.post(f"/publish/{late.task_id}/extend", json={"save_till_date": iso(7)})
    assert r.status_code == 200 and db_task(late.task_id).status == "COMPLETED"

    # Revoked by an administrator: the archive is deleted, the link is gone, extension is refused.
    storage = open_storage(get_settings())
    assert storage.exists(pub.object_key)
    out = cli("revoke", pub.task_id)
    assert out["exit_code"] == 0 and out["status"] == "DELETED"
    assert not storage.exists(pub.object_key)
    r = mis.post(url, json={"save_till_date": iso(90)})
    assert r.status_code == 410 and "deleted" in r.json()["detail"]
    assert mis.get(f"/publish/{pub.task_id}").json()["status"] == "DELETED"
    assert cli("revoke", pub.task_id)["status"] == "DELETED"  # idempotent
    assert cli("revoke", "no-such-task")["exit_code"] == 1
    assert mis.post(f"/publish/{uuid.uuid4()}/extend", json={"save_till_date": iso(9)}).status_code == 404


# --- idempotency under a race, and Prefect ------------------------------------------------------------------


@pytest.fixture(scope="session")
def publish_deployment(prefect_api_url: str) -> str:
    """The `publish` deployment registered in the test Prefect server, with nobody serving it: runs the
    dispatcher creates stay scheduled (the tests delete them)."""
    from flows.publish import publish_study

    return str(publish_study.to_deployment(name="publish").apply())  # type: ignore[union-attr]


def flow_runs_of(task_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return [r for r in runs if (r.parameters or {}).get("task_id") == task_id]


def delete_runs(runs: list[Any]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in runs:
            client.delete_flow_run(run.id)


def test_a_hundred_identical_requests_make_one_task_and_one_run(
    db_url: str, api_server: Any, prefect_api_url: str, publish_deployment: str
) -> None:
    key = make_api_key()
    # A small connection pool against FastAPI's 40 worker threads: requests must queue for connections, never
    # deadlock (a dependency holding a connection while its route waits for a thread) or answer 500.
    api = api_server(
        PREFECT_API_URL=prefect_api_url,
        STUDYPUB_API__DISPATCH_INTERVAL="0.5",
        STUDYPUB_DATABASE__POOL_SIZE="2",
        STUDYPUB_API__WORKERS="2",  # two processes race too (and their two dispatchers)
    )
    body = dict(BODY, accession_number=f"RACE{int(time.time() * 1000) % 10**8}")

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=api.base_url, timeout=60, headers={"X-API-Key": key}) as c:
            return c.post("/publish", json=body)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(post, range(100)))
    assert time.monotonic() - started < 20  # a pool/thread deadlock stalls for the pool's 30 s timeout
    assert all(r.status_code in (200, 202) for r in responses), {r.status_code for r in responses}
    answers = {(r.json()["task_id"], r.json()["link"]) for r in responses}
    assert len(answers) == 1
    task_id = answers.pop()[0]
    from sqlalchemy import func, select

    from studypub.db import get_sessionmaker
    from studypub.models import Task

    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
    flow_run_id = wait_for(lambda: db_task(task_id).flow_run_id, 60, "the dispatcher to start the run")
    time.sleep(2)  # more sweeps, and any straggling dispatch, would show as a second run
    runs = flow_runs_of(task_id)
    try:
        assert [str(r.id) for r in runs] == [flow_run_id]
        assert runs[0].parameters == {"task_id": task_id}  # nothing but the task id goes to Prefect
        assert runs[0].idempotency_key == f"studypub-publish:{task_id}:0"
    finally:
        delete_runs(runs)


def test_requests_wait_while_prefect_is_unreachable_and_start_when_it_is_back(
    db_url: str, api_server: Any, prefect_api_url: str, publish_deployment: str
) -> None:
    """The choice: record, answer 202 with the link, and start the run when Prefect is back (nothing lost)."""
    upstream = urlparse(prefect_api_url)
    proxy = TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 80)
    key = make_api_key()
    api = api_server(
        PREFECT_API_URL=f"http://127.0.0.1:{proxy.port}/api",
        STUDYPUB_API__DISPATCH_INTERVAL="0.5",
        PREFECT_CLIENT_MAX_RETRIES="0",
    )
    try:
        with api.client(headers={"X-API-Key": key}) as c:
            r = c.post("/publish", json=dict(BODY, accession_number="DOWN1"))
            assert r.status_code == 202 and r.json()["link"]
            task_id = r.json()["task_id"]
            waiting = wait_for(
                lambda: (s := c.get(f"/publish/{task_id}").json())["waiting_for"] == "prefect" and s, 60, "reason"
            )
            assert waiting["status"] == "QUEUED" and "Prefect is unreachable" in waiting["reason"]
            assert db_task(task_id).flow_run_id is None
            proxy.start()
            flow_run_id = wait_for(lambda: db_task(task_id).flow_run_id, 60, "the run once Prefect is back")
            shown = c.get(f"/publish/{task_id}").json()
            # Handed to Prefect: no longer waiting for it, only for its turn (or already running).
            assert shown["waiting_for"] is None and "Prefect" not in (shown["reason"] or "")
        runs = flow_runs_of(task_id)
        assert [str(r.id) for r in runs] == [flow_run_id]
        delete_runs(runs)
    finally:
        proxy.stop()
    assert "Prefect is unreachable" in api.log_text() and "Prefect reachable again" in api.log_text()


def test_openapi_documents_the_spec_example_and_every_answer(mis: httpx.Client) -> None:
    schema = mis.get("/openapi.json").json()
    post = schema["paths"]["/publish"]["post"]
    example = post["requestBody"]["content"]["application/json"]["example"]
    assert set(example) == set(BODY) | {"save_till_date"} and example["accession_number"] == "KP125706548L"
    assert {"200", "202", "401", "403", "413", "422", "503"} <= set(post["responses"])
    assert "/publish/{task_id}" in schema["paths"] and "/publish/{task_id}/extend" in schema["paths"]
    assert not any(p.startswith("/s/") for p in schema["paths"])  # the patient's pages are not API
    assert mis.get("/docs").status_code == 200
    # The documented examples work as they are, whatever the day (their storage dates are ahead of today).
    r = mis.post("/publish", json=example)
    assert r.status_code == 202, r.text
    assert set(schema["components"]["schemas"]["PublishRequest"]["examples"][0]) == set(example)
    extension = schema["components"]["schemas"]["ExtendRequest"]["examples"][0]
    r = mis.post(f"/publish/{r.json()['task_id']}/extend", json=extension)
    assert r.status_code == 200, r.text


def test_a_run_cancelled_before_it_started_fails_the_publication_visibly(
    db_url: str, api_server: Any, prefect_api_url: str, publish_deployment: str
) -> None:
    """An operator cancels (or deletes) a run that nobody has started yet: the publication does not wait for
    ever; it shows FAILED with the reason, and the MIS's next request starts a new run (same task and link)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    key = make_api_key()
    api = api_server(PREFECT_API_URL=prefect_api_url, STUDYPUB_API__DISPATCH_INTERVAL="0.5")
    body = dict(BODY, accession_number="CANCEL1")
    with api.client(headers={"X-API-Key": key}) as c, get_client(sync_client=True) as prefect:
        first = c.post("/publish", json=body).json()
        run_id = wait_for(lambda: db_task(first["task_id"]).flow_run_id, 60, "the run")
        prefect.set_flow_run_state(run_id, Cancelled(), force=True)
        failed = wait_for(lambda: (s := c.get(first["status_url"]).json())["status"] == "FAILED" and s, 60, "FAILED")
        assert "ended (Cancelled) before it started" in failed["reason"]

        again = c.post("/publish", json=body)
        assert again.status_code == 202 and again.json()["task_id"] == first["task_id"]
        assert again.json()["link"] == first["link"]
        second = wait_for(lambda: (r := db_task(first["task_id"]).flow_run_id) != run_id and r, 60, "a new run")
        prefect.delete_flow_run(second)
        gone = wait_for(lambda: (s := c.get(first["status_url"]).json())["status"] == "FAILED" and s, 60, "FAILED")
        assert "deleted before it started" in gone["reason"]
    delete_runs(flow_runs_of(first["task_id"]))


def test_answers_under_the_link_path_carry_the_link_headers(mis: httpx.Client) -> None:
    for method in ("PUT", "POST", "DELETE", "OPTIONS"):
        r = mis.request(method, "/s/somekey")
        assert r.status_code == 405
        assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-store"
        assert "noindex" in r.headers["X-Robots-Tag"]


def test_a_burst_of_different_studies_is_answered_without_errors(db_url: str, api_server: Any) -> None:
    """200 MIS requests (100 at a time) for different studies, against a small connection pool: every one recorded
    and answered 202 within seconds (no request may hold a connection while it waits for a worker thread)."""
    key = make_api_key()
    api = api_server(PREFECT_API_URL=UNREACHABLE_PREFECT, STUDYPUB_DATABASE__POOL_SIZE="2", STUDYPUB_API__WORKERS="2")

    def post(i: int) -> httpx.Response:
        with httpx.Client(base_url=api.base_url, timeout=60, headers={"X-API-Key": key}) as c:
            return c.post("/publish", json=dict(BODY, patient_id=f"P{i}", accession_number=f"BURST{i}"))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(post, range(200)))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [202] * 200
    assert elapsed < 25, f"{elapsed:.1f} s: requests waited for the pool's timeout"
    assert len({r.json()["link"] for r in responses}) == 200


def test_a_run_that_crashed_before_it_started_is_started_again(
    db_url: str, api_server: Any, prefect_api_url: str, publish_deployment: str
) -> None:
    """The worker died while a run was starting (Prefect marks it Crashed before our code ran): nobody has to act;
    a new run is started (same task and link), the publication says it is resuming meanwhile, and after
    ``runs.max_resumes`` such deaths in a row it fails with the reason."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    key = make_api_key()
    api = api_server(
        PREFECT_API_URL=prefect_api_url, STUDYPUB_API__DISPATCH_INTERVAL="0.5", STUDYPUB_RUNS__MAX_RESUMES="1"
    )
    body = dict(BODY, accession_number="CRASH1")
    with api.client(headers={"X-API-Key": key}) as c, get_client(sync_client=True) as prefect:
        first = c.post("/publish", json=body).json()
        run_id = wait_for(lambda: db_task(first["task_id"]).flow_run_id, 60, "the run")
        prefect.set_flow_run_state(run_id, Crashed(), force=True)
        second = wait_for(lambda: (r := db_task(first["task_id"]).flow_run_id) not in (None, run_id) and r, 60, "rerun")
        task = db_task(first["task_id"])
        assert task.status == "QUEUED" and task.resumes == 1
        prefect.set_flow_run_state(second, Crashed(), force=True)  # a second death in a row: the limit (1)
        failed = wait_for(lambda: (s := c.get(first["status_url"]).json())["status"] == "FAILED" and s, 60, "FAILED")
        assert "ended (Crashed) before it started" in failed["reason"]
    delete_runs(flow_runs_of(first["task_id"]))
