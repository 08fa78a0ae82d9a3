"""``/ready`` against the real dependencies, each reached through a TCP proxy that the test cuts and restores:
PostgreSQL, the Prefect API, the S3 server and the PACS (Orthanc, C-ECHO). Each one down is reported as down
(the others stay ok, the answer is 503), and each one back is reported ok again."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.net import LOOPBACK, wait_for
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
