"""The production settings path, end to end, without Docker: the environment is docker-compose.yml's own (its
`api`, `worker` and `prefect` services, the variables interpolated as from .env, the service host names
pointed at this machine's servers). A Prefect server on PostgreSQL with its API protected, `studypub worker`
and `studypub api` in production mode on PostgreSQL, S3 storage (the S3 server) whose downloads go through the
project's nginx over TLS, and Orthanc as the PACS. The MIS publishes; the patient downloads."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy
from tests.conftest import PG_ADMIN_URL
from tests.support.net import LOOPBACK, free_port, wait_for
from tests.support.nginx import NGINX, NginxServer
from tests.support.worker import STUDYPUB, running_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (deployments/setup.sh test)"),
]
ROOT = Path(__file__).parents[2]
PASSWORD = secrets.token_hex(12)


def interpolate(value: str, variables: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return variables.get(name) or default or ""

    return re.sub(r"\$\{([A-Z0-9_]+)(:?-([^}]*))?\}", one, value)


def compose_env(service: str, variables: dict[str, str], hosts: dict[str, str]) -> dict[str, str]:
    """The service's environment from docker-compose.yml, interpolated, its host names replaced."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]
    env = {}
    for key, value in (spec.get("environment") or {}).items():
        value = interpolate(str(value), variables)
        for compose_host, here in hosts.items():
            value = value.replace(compose_host, here)
        env[key] = value
    return env


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """The compose file's two databases (app and Prefect), owned by its role `studypub`."""
    suffix = secrets.token_hex(4)
    names = (f"studypub_prod_{suffix}", f"prefect_prod_{suffix}")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'studypub'")).scalar():
            conn.execute(text("CREATE ROLE studypub LOGIN"))
        conn.execute(text(f"ALTER ROLE studypub PASSWORD '{PASSWORD}'"))
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}" OWNER studypub'))
    yield names
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_compose_environment_end_to_end(
    databases: tuple[str, str],
    orthanc: OrthancServer,
    studypub_scp_port: int,
    s3_server: Any,
    study_factory: Callable[..., GeneratedStudy],
    tmp_path: Path,
) -> None:
    app_db, prefect_db = databases
    if not s3_server.running():
        s3_server.start()
    s3_bucket = f"prod-{secrets.token_hex(4)}"  # not made by the test: the worker makes it at start
    pg = make_url(PG_ADMIN_URL)
    s3 = urlparse(s3_server.endpoint_url)
    prefect_port = free_port()
    auth = "operator:" + secrets.token_hex(8)
    nginx = NginxServer(
        tmp_path / "nginx", api="127.0.0.1:1", prefect=f"127.0.0.1:{prefect_port}", storage=f"{s3.hostname}:{s3.port}"
    ).start()
    variables = {
        "POSTGRES_PASSWORD": PASSWORD,
        "PREFECT_AUTH_STRING": auth,
        "MINIO_ROOT_USER": "testing",
        "MINIO_ROOT_PASSWORD": "testing-secret",
        "S3_BUCKET": s3_bucket,
        "PUBLIC_HOST": LOOPBACK,
        "STORAGE_PUBLIC_PORT": str(nginx.ports["STORAGE_PORT"]),
        "PREFECT_UI_PUBLIC_PORT": str(nginx.ports["PREFECT_UI_PORT"]),
    }
    hosts = {
        "@postgres:5432/prefect": f"@{pg.host}:{pg.port or 5432}/{prefect_db}",
        "@postgres:5432/studypub": f"@{pg.host}:{pg.port or 5432}/{app_db}",
        "prefect:4200": f"{LOOPBACK}:{prefect_port}",
        "http://minio:9000": s3_server.endpoint_url,
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STUDYPUB_", "PREFECT_"))}
    base["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    base["PREFECT_LOGGING_SETTINGS_PATH"] = str(ROOT / "studypub" / "logging.yml")
    prefect_env = {**base, **compose_env("prefect", variables, hosts), "PREFECT_HOME": str(tmp_path / "prefect")}
    prefect_env.pop("PREFECT_API_URL", None)
    app_env = {**base, **compose_env("api", variables, hosts)}
    app_env.update(
        STUDYPUB_WORK_DIR=str(tmp_path / "work"),
        STUDYPUB_SECRET_KEY=secrets.token_hex(32),
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(orthanc.dicom_port),
        STUDYPUB_PACS__CALLED_AE=orthanc.aet,
        STUDYPUB_PACS__SCP_PORT=str(studypub_scp_port),
        STUDYPUB_PACS__SCP_BIND=LOOPBACK,
        STUDYPUB_RUNS__STUDY_WAIT_HOURS="0",
        STUDYPUB_API__DISPATCH_INTERVAL="1",
        PREFECT_HOME=str(tmp_path / "prefect-client"),
    )
    assert app_env["STUDYPUB_ENV"] == "production" and app_db in app_env["STUDYPUB_DATABASE__URL"]

    prefect = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(prefect_port)],
        env=prefect_env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prefect.log").open("wb"),
        start_new_session=True,
    )
    api_port = free_port()
    api = None
    try:
        health = f"http://{LOOPBACK}:{prefect_port}/api/health"
        basic = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
        wait_for(lambda: _answers(health, basic), 180, "the Prefect server on PostgreSQL")
        assert httpx.get(f"http://{LOOPBACK}:{prefect_port}/api/flows/filter", timeout=10).status_code == 401
        role = create_engine(app_env["STUDYPUB_DATABASE__URL"])  # the compose role and password connect
        with role.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == "studypub"
        role.dispose()

        study = study_factory()
        orthanc.upload(study.paths)
        # The administrator adds the clinic its MIS sends (an unknown clinic_code is a 422), then the MIS's key.
        _run(app_env, "clinic", "add", "f_Khimki", "--name", "ru=Химки", "--phone", "+7 495 000-00-00")
        key = json.loads(_run(app_env, "create-api-key", "--name", "mis"))["api_key"]
        with running_worker(app_env, tmp_path / "worker.log", "worker-production-path.log"):
            api = subprocess.Popen(
                [str(STUDYPUB), "api", "--host", LOOPBACK, "--port", str(api_port)],
                env=dict(app_env, STUDYPUB_API__WORKERS="1"),
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "api.log").open("wb"),
            )
            base_url = f"http://{LOOPBACK}:{api_port}"
            wait_for(lambda: _answers(f"{base_url}/health"), 60, "the API")
            mis = httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=30)
            answer = mis.post(
                "/publish",
                json={
                    "patient_id": study.patient_id,
                    "accession_number": study.accession_number,
                    "clinic_code": "f_Khimki",
                    "service_title": "МРТ суставов",
                },
            )
            assert answer.status_code == 202, answer.text
            link = answer.json()["link"]
            assert link.startswith(f"https://{LOOPBACK}/s/")
            wait_for(
                lambda: s3_bucket in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]],
                90,
                "the worker to make the bucket at start",
            )
            done = wait_for(
                lambda: (s := mis.get(answer.json()["status_url"]).json())["status"] in ("COMPLETED", "FAILED") and s,
                240,
                "the publication",
            )
            assert done["status"] == "COMPLETED", done
            ready = httpx.get(f"{base_url}/ready", timeout=30).json()
            assert ready["checks"]["database"]["status"] == "ok" and ready["checks"]["prefect"]["status"] == "ok"
            assert ready["checks"]["storage"]["status"] == "ok" and ready["checks"]["pacs"]["status"] == "ok"

            key_path = urlparse(link).path
            redirect = httpx.get(f"{base_url}{key_path}/download", follow_redirects=False)
            assert redirect.status_code == 302
            presigned = redirect.headers["location"]
            assert presigned.startswith(nginx.url("STORAGE_PORT") + "/")  # signed for the public address
            archive = httpx.get(presigned, verify=str(nginx.cert), timeout=60)
            assert archive.status_code == 200 and archive.content[:2] == b"PK"
            assert len(archive.content) == done["size_bytes"]
    finally:
        if api is not None:
            api.terminate()
            api.wait(15)
        prefect.terminate()
        try:
            prefect.wait(20)
        except subprocess.TimeoutExpired:
            prefect.kill()
        nginx.stop()
        with contextlib.suppress(Exception):
            s3_server.delete_bucket(s3_bucket)


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _run(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([str(STUDYPUB), *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
