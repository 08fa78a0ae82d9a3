"""Shared fixtures: settings isolation, the two database backends, a real Prefect server.

Servers (Orthanc, dcmqrscp, the S3 server) come from tests.support.fixtures.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).parents[1] / "studypub" / "logging.yml"))

pytest_plugins = ["tests.support.fixtures"]


def _pg_admin_url() -> str:
    """STUDYPUB_TEST_PG, else what deployments/setup.sh found works on this machine, else trust auth."""
    if url := os.environ.get("STUDYPUB_TEST_PG"):
        return url
    found = Path(__file__).parents[1] / ".venv" / "test-pg-url"
    if found.is_file() and found.read_text().strip():
        return found.read_text().strip()
    return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


PG_ADMIN_URL = _pg_admin_url()


def _clear_settings_cache() -> None:
    from studypub.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own work dir and no STUDYPUB_* leaking from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("STUDYPUB_"):
            monkeypatch.delenv(key)
    work = tmp_path / "work"
    monkeypatch.setenv("STUDYPUB_WORK_DIR", str(work))
    monkeypatch.setenv("STUDYPUB_SECRET_KEY", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    _clear_settings_cache()
    yield work
    _clear_settings_cache()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session (the server runs on these machines)."""
    from sqlalchemy import create_engine, text

    name = f"studypub_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from studypub.db import _engine_for

    _engine_for.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test on both backends; the schema comes from the Alembic migrations."""
    from tests.support.databases import empty_database

    url = empty_database(request, tmp_path, monkeypatch)
    from tests.support.api import ensure_test_clinics

    ensure_test_clinics()  # migrated, with the clinics the tests publish for
    return url


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect server (Prefect's test harness) for the session; its URL for subprocesses too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url
        yield str(url)
