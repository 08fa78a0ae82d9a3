"""``/ready`` against the real dependencies, each reached through a TCP proxy that the test cuts and restores:
PostgreSQL, the Prefect API, the S3 server and the PACS (Orthanc, C-ECHO). Each one down is reported as down
(the others stay ok, the answer is 503), and each one back is reported ok again."""

from __future__ import annotations

import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy.engine import make_url

from api.routes import health
from tests.support.net import LOOPBACK, free_port, wait_for
from tests.support.proxy import TcpProxy


def _via(proxies: list[TcpProxy], host: str, port: int) -> TcpProxy:
    proxy = TcpProxy(host, port).start()
    proxies.append(proxy)
    return proxy


@pytest.fixture
def proxies() -> Any:
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        proxy.stop()


def test_ready_reports_each_dependency_down_and_back(
    pg_database: str,
    prefect_api_url: str,
    s3_server: Any,
    s3_bucket: str,
    orthanc: Any,
    api_server: Any,
    proxies: list[TcpProxy],
) -> None:
    pg = make_url(pg_database)
    prefect = urlparse(prefect_api_url)
    s3 = urlparse(s3_server.endpoint_url)
    via = {
        "database": _via(proxies, pg.host or LOOPBACK, pg.port or 5432),
        "prefect": _via(proxies, prefect.hostname or LOOPBACK, prefect.port or 80),
        "storage": _via(proxies, s3.hostname or LOOPBACK, s3.port or 80),
        "pacs": _via(proxies, orthanc.host, orthanc.dicom_port),
    }
    api = api_server(
        STUDYPUB_DATABASE__URL=pg.set(port=via["database"].port).render_as_string(hide_password=False),
        PREFECT_API_URL=f"http://{LOOPBACK}:{via['prefect'].port}{prefect.path}",
        STUDYPUB_STORAGE__URL=f"s3://{s3_bucket}/published",
        STUDYPUB_STORAGE__ENDPOINT_URL=f"http://{LOOPBACK}:{via['storage'].port}",
        STUDYPUB_STORAGE__ACCESS_KEY_ID="testing",
        STUDYPUB_STORAGE__SECRET_ACCESS_KEY="testing-secret",
        STUDYPUB_STORAGE__REGION="us-east-1",
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(via["pacs"].port),
        STUDYPUB_PACS__CALLED_AE=orthanc.aet,
    )

    def ready() -> httpx.Response:
        return httpx.get(f"{api.base_url}/ready", timeout=30)

    def all_ok() -> dict[str, Any] | None:
        answer = ready()
        return answer.json() if answer.status_code == 200 else None

    body = wait_for(all_ok, 60, "every dependency ready")
    assert body["status"] == "ready" and set(body["checks"]) == set(via)
    assert all(c["status"] == "ok" and c["ms"] >= 0 for c in body["checks"].values())
    assert httpx.get(f"{api.base_url}/health").json() == {"status": "ok"}

    for name, proxy in via.items():
        proxy.stop()

        def down(name: str = name) -> dict[str, Any] | None:
            answer = ready()
            checks = answer.json()["checks"]
            return answer.json() if answer.status_code == 503 and checks[name]["status"] == "down" else None

        body = wait_for(down, 60, f"{name} reported down")
        assert body["status"] == "not ready" and body["checks"][name]["reason"]
        assert "testing-secret" not in str(body)
        assert str(proxy.port) not in str(body)  # no internal address in a public answer
        others = {n: c["status"] for n, c in body["checks"].items() if n != name}
        assert set(others.values()) == {"ok"}, (name, body)
        proxy.start()
        wait_for(all_ok, 60, f"{name} back")


def _clinic(code: str, port: int, *, disabled: bool = False) -> None:
    """A clinic whose PACS is on ``port`` of this machine (`studypub clinic add ... --set pacs.port=...`)."""
    from studypub.clinics import add_clinic, get_clinic, update_clinic
    from studypub.db import get_sessionmaker
    from studypub.settings import get_settings

    settings = get_settings()
    values = {"pacs.host": LOOPBACK, "pacs.port": port}
    with get_sessionmaker(settings)() as session:
        if get_clinic(session, code) is None:
            add_clinic(session, settings, code, actor="test", values=values, fields={"disabled": disabled})
        else:
            update_clinic(session, settings, code, actor="test", values=values)


def test_ready_checks_every_clinics_pacs_and_answers_while_one_hangs(
    isolated_env: Any, prefect_api_url: str, orthanc: Any, api_server: Any, proxies: list[TcpProxy]
) -> None:
    """Each enabled clinic's PACS is echoed (clinics sharing one, once): one clinic's PACS down leaves the
    service ready (200, the PACS check ``degraded``, that clinic down by its code), every PACS down is 503; a
    disabled clinic is not checked; no answer names a host or port. A PACS that never answers holds one
    check, not the requests: meanwhile /ready answers from its last result."""
    from tests.support.api import ensure_test_clinics

    pacs = _via(proxies, orthanc.host, orthanc.dicom_port)
    closed, off = free_port(), free_port()  # nothing listens on them
    ensure_test_clinics()
    _clinic("f_closed", closed)
    _clinic("f_off", off, disabled=True)
    api = api_server(
        PREFECT_API_URL=prefect_api_url,
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(pacs.port),
        STUDYPUB_PACS__CALLED_AE=orthanc.aet,
    )
    secret = {LOOPBACK, str(pacs.port), str(closed), str(off), orthanc.aet}

    def answer(status: int, pacs_status: str) -> Any:
        def check() -> dict[str, Any] | None:
            got = httpx.get(f"{api.base_url}/ready", timeout=30)
            body = got.json()
            return body if got.status_code == status and body["checks"]["pacs"]["status"] == pacs_status else None

        return check

    body = wait_for(answer(200, "degraded"), 60, "one clinic's PACS down, the service ready")
    shared = {"default", "f_khimki", "f_other"}  # on the environment's PACS
    clinics = body["checks"]["pacs"]["clinics"]
    assert body["status"] == "ready" and set(clinics) == {*shared, "f_closed"}  # not the disabled clinic
    assert {code for code, c in clinics.items() if c["status"] == "ok"} == shared
    assert clinics["f_closed"]["status"] == "down" and clinics["f_closed"]["reason"]
    assert body["checks"]["pacs"]["reason"] == f"f_closed: {clinics['f_closed']['reason']}"
    assert not any(s in str(body) for s in secret), body

    pacs.stop()
    body = wait_for(answer(503, "down"), 60, "every clinic's PACS down")
    assert body["status"] == "not ready"
    assert {c["status"] for c in body["checks"]["pacs"]["clinics"].values()} == {"down"}
    assert {n: c["status"] for n, c in body["checks"].items() if n != "pacs"} == dict.fromkeys(
        ("database", "prefect", "storage"), "ok"
    )
    assert not any(s in str(body) for s in secret), body
    pacs.start()
    wait_for(answer(200, "degraded"), 60, "the environment's PACS back")

    # A PACS that accepts the connection and never answers: a check waits its timeout (3 s) for it. The
    # request that runs the check waits; those arriving meanwhile get the last answer at once.
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(16)

    def timed() -> tuple[float, float]:
        started = time.perf_counter()
        assert httpx.get(f"{api.base_url}/ready", timeout=30).status_code == 200
        return started, time.perf_counter()

    checking, meanwhile, idle = [], [], []  # idle: the same requests while no check runs (the last answer fresh)
    try:
        _clinic("f_closed", silent.getsockname()[1])

        def silent_checked() -> Any:
            body = answer(200, "degraded")()
            return body if body and body["checks"]["pacs"]["clinics"]["f_closed"]["ms"] >= 2500 else None

        wait_for(silent_checked, 60, "the silent PACS checked (its clinic's settings are re-read within 5 s)")
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(3):
                time.sleep(health.CACHE_SECONDS + 0.5)  # the last answer is stale: the next request checks
                first = pool.submit(timed)
                time.sleep(0.5)
                others = [pool.submit(timed) for _ in range(6)]
                spans = sorted([first.result(), *(f.result() for f in others)], key=lambda s: s[1] - s[0])
                check = spans[-1]  # the one that ran the check (the first, unless the load delayed it)
                assert check[1] - check[0] > 2.5, spans  # it waited for the silent PACS
                assert all(end < check[1] - 1.0 for _start, end in spans[:-1]), spans  # the others did not
                checking.append(check[1] - check[0])
                meanwhile += [end - start for start, end in spans[:-1]]
                idle += [end - start for start, end in (f.result() for f in [pool.submit(timed) for _ in range(6)])]
    finally:
        silent.close()
    print(
        f"/ready during a check of a silent PACS: median {statistics.median(meanwhile) * 1000:.0f} ms "
        f"(max {max(meanwhile) * 1000:.0f} ms, {len(meanwhile)} requests); the request running the check "
        f"{statistics.median(checking):.1f} s; with no check running: median "
        f"{statistics.median(idle) * 1000:.0f} ms"
    )
