"""Backups: `studypub backup` dumps the app's database (and Prefect's), keeps the newest N; `studypub restore`
loads a dump into a fresh database, and the service started on it serves what was there (a patient's link, a
dashboard user). PostgreSQL with pg_dump/pg_restore, and the embedded SQLite."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL
from tests.support.api import seed_publication
from tests.support.dashboard import Browser, make_user
from tests.support.worker import STUDYPUB


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run([str(STUDYPUB), *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout, out.stderr[-2000:])
    return dict(json.loads(out.stdout))


def fresh_pg_database() -> str:
    name = f"studypub_restore_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop(url: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def test_backup_and_restore_into_a_fresh_database(db_url: str, api_server: Any, tmp_path: Path) -> None:
    seeded = seed_publication()
    make_user("desk", "registrator")
    env = dict(os.environ)
    backups = tmp_path / "backups"
    target = fresh_pg_database() if db_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'restored.db'}"
    try:
        if db_url.startswith("postgresql"):  # Prefect's database is dumped beside the app's when it is named
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url.replace("+psycopg2", "+asyncpg")
        first = cli(env, "backup", "--out", str(backups), "--keep", "2")
        assert all(Path(f).stat().st_size > 0 for f in first["files"])
        names = sorted(Path(f).name.split("-")[0] for f in first["files"])
        assert names == (["prefect", "studypub"] if "PREFECT_API_DATABASE_CONNECTION_URL" in env else ["studypub"])
        for _ in range(2):  # older dumps beyond --keep are removed
            import time

            time.sleep(1.1)
            cli(env, "backup", "--out", str(backups), "--keep", "2")
        app_dumps = sorted(backups.glob("studypub-*"))
        assert len(app_dumps) == 2 and not list(backups.glob("*.partial"))

        restored = cli(dict(env, STUDYPUB_DATABASE__URL=target), "restore", str(app_dumps[-1]))
        assert restored["status"] == "ok"
        api = api_server(STUDYPUB_DATABASE__URL=target)  # the service on the restored database
        page = httpx.get(f"{api.base_url}/s/{seeded.link_key}")
        assert page.status_code == 200
        download = httpx.get(f"{api.base_url}/s/{seeded.link_key}/download")
        assert download.content == seeded.archive
        with Browser(api.base_url) as browser:
            browser.login("desk")
            assert seeded.task_id[:8] in browser.get("/dashboard/queue").text
    finally:
        if target.startswith("postgresql"):
            from studypub.db import _engine_for

            _engine_for.cache_clear()
            drop(target)


def test_restore_refuses_an_empty_target(tmp_path: Path) -> None:
    """An unset shell variable in `--database-url "$X"` must not mean the app's database."""
    dump_file = tmp_path / "prefect-x.dump"
    dump_file.write_bytes(b"not used")
    for args in (["--database-url", ""], ["--prefect"]):
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        out = subprocess.run(
            [str(STUDYPUB), "restore", str(dump_file), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 1 and json.loads(out.stdout)["reason"] == "the target database URL is empty"


def test_a_failed_dump_says_why(tmp_path: Path) -> None:
    env = dict(os.environ, STUDYPUB_DATABASE__URL="postgresql+psycopg2://nobody:x@127.0.0.1:9/none")
    out = subprocess.run(
        [str(STUDYPUB), "backup", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["status"] == "FAILED" and "pg_dump failed" in result["reason"]
    assert not list(tmp_path.iterdir())  # no half-written file


def test_replicas_starting_at_once_migrate_once() -> None:
    """Several processes (API replicas, workers) start together on an empty database: one migrates, the
    others wait for it (a PostgreSQL advisory lock), and all of them start."""
    target = fresh_pg_database()
    try:
        env = dict(os.environ, STUDYPUB_DATABASE__URL=target)
        procs = [
            subprocess.Popen([str(STUDYPUB), "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        results = [(p.wait(120), p.stderr.read().decode() if p.stderr else "") for p in procs]
        assert all(code == 0 for code, _ in results), results
        engine = create_engine(target)
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        engine.dispose()
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        from studypub.db import MIGRATIONS_DIR

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        assert versions == [ScriptDirectory.from_config(cfg).get_current_head()]
    finally:
        from studypub.db import _engine_for

        _engine_for.cache_clear()
        drop(target)
