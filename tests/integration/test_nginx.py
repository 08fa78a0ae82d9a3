"""The reverse proxy of docker-compose.yml, without Docker: Debian's nginx runs the project's template with a
self-signed certificate in front of a real `studypub api`, a real Prefect server and the S3 server, over TLS
on loopback. `nginx -t` accepts it; the API, the dashboard, a patient's link and its download (streamed from
local storage, with Range) go through it; an S3 download URL signed for the proxy's public address works and
nothing can be written through that door."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.support.api import seed_publication
from tests.support.dashboard import Browser, make_user
from tests.support.nginx import NGINX, NginxServer

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (deployments/setup.sh test)")


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = NginxServer(tmp_path / "nginx", api="127.0.0.1:1", prefect="127.0.0.1:2", storage="127.0.0.1:3")
    result = nginx.check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_everything_goes_through_nginx_with_tls(
    tmp_path: Path, db_url: str, api_server: Any, prefect_api_url: str, s3_server: Any, s3_bucket: str
) -> None:
    make_user("desk", "registrator")
    seeded = seed_publication()
    api = api_server(STUDYPUB_API__TRUSTED_PROXIES="127.0.0.1")
    prefect = urlparse(prefect_api_url)
    s3 = urlparse(s3_server.endpoint_url)
    nginx = NginxServer(
        tmp_path / "nginx",
        api=f"127.0.0.1:{api.port}",
        prefect=f"{prefect.hostname}:{prefect.port}",
        storage=f"{s3.hostname}:{s3.port}",
    ).start()
    try:
        with httpx.Client(verify=str(nginx.cert), timeout=30) as client:
            base = nginx.url("HTTPS_PORT")
            assert client.get(f"{base}/health").json() == {"status": "ok"}
            plain = httpx.get(f"{nginx.url('HTTP_PORT')}/s/{seeded.link_key}", follow_redirects=False)
            assert plain.status_code == 301 and plain.headers["location"].startswith("https://")
            assert "strict-transport-security" in client.get(f"{base}/health").headers

            page = client.get(f"{base}/s/{seeded.link_key}")
            assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
            download = client.get(f"{base}/s/{seeded.link_key}/download")
            assert download.status_code == 200 and download.content == seeded.archive
            part = client.get(f"{base}/s/{seeded.link_key}/download", headers={"Range": "bytes=10-19"})
            assert part.status_code == 206 and part.content == seeded.archive[10:20]

            assert client.get(f"{nginx.url('PREFECT_UI_PORT')}/api/health").status_code == 200

        with Browser(base) as browser:  # the dashboard through the proxy: sign-in, cookies, CSRF
            browser.http = httpx.Client(
                base_url=base, verify=str(nginx.cert), timeout=30, headers={"Accept-Language": "en"}
            )
            browser.login("desk")
            assert browser.get("/dashboard/published").status_code == 200
            cookie = next(c for c in browser.http.cookies.jar if c.name == "sp_session")
            assert cookie.secure  # the API saw https through X-Forwarded-Proto

        # S3 downloads: signed for the proxy's public address, readable there, not writable.
        from studypub.settings import Settings
        from studypub.storage import S3Storage, open_storage

        settings = Settings(
            storage={
                "url": f"s3://{s3_bucket}/published",
                "endpoint_url": s3_server.endpoint_url,
                "public_endpoint_url": nginx.url("STORAGE_PORT"),
                "access_key_id": "testing",
                "secret_access_key": "testing-secret",
            }
        )
        storage = open_storage(settings)
        assert isinstance(storage, S3Storage)
        with storage.writer("archives/through-nginx.zip") as fh:
            fh.write(seeded.archive)
        url = storage.presigned_url("archives/through-nginx.zip", 300, "study.zip")
        assert url.startswith(nginx.url("STORAGE_PORT") + "/")
        with httpx.Client(verify=str(nginx.cert), timeout=30) as client:
            got = client.get(url)
            assert got.status_code == 200 and got.content == seeded.archive
            assert client.put(url, content=b"overwrite").status_code == 403
            assert client.delete(url).status_code == 403
            client.get(f"{base}/dashboard/published", params={"pid": "PID-IN-A-QUERY"})

        # The access log has every request, but no link key, query string or signature.
        logged = nginx.access_log.read_text()
        assert '"GET /s/KEY/download" 206' in logged and '"GET /dashboard/published"' in logged
        for secret in (seeded.link_key, "PID-IN-A-QUERY", "X-Amz-Signature", "pid="):
            assert secret not in logged, secret
    finally:
        nginx.stop()
