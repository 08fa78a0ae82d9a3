"""Backups of the app's database (and Prefect's): a custom-format ``pg_dump`` per database, kept N deep, and a
restore into a database that the service then reads after bringing the schema up to date. SQLite (the
embedded default) is copied with SQLite's online backup. No passwords on command lines (``PGPASSWORD``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from studypub.errors import ConfigurationError, StudyPubError

SUFFIX = {"postgresql": ".dump", "sqlite": ".sqlite3"}


class BackupFailed(StudyPubError):
    http_status = 500


def _pg_args(url: URL) -> tuple[list[str], dict[str, str]]:
    args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return args, env


def _run(argv: list[str], env: dict[str, str]) -> None:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=6 * 3600)
    except FileNotFoundError:
        raise ConfigurationError(f"{argv[0]} is not installed (Debian: postgresql-client)") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupFailed(f"{Path(argv[0]).name} failed: {last}")


def dump(database_url: str, out: Path) -> Path:
    """One database into ``out`` (a file). PostgreSQL: pg_dump -Fc; SQLite: an online copy."""
    url = make_url(database_url)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        if url.get_backend_name() == "sqlite":
            with sqlite3.connect(url.database or "") as source, sqlite3.connect(partial) as target:
                source.backup(target)
        elif url.get_backend_name() == "postgresql":
            args, env = _pg_args(url)
            _run(["pg_dump", "-Fc", "--no-owner", "-f", str(partial), *args, "-d", url.database or "postgres"], env)
        else:
            raise ConfigurationError(f"cannot back up a {url.get_backend_name()} database")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)  # a backup file is complete or absent
    return out


def backup(databases: dict[str, str], out_dir: Path, *, keep: int, now: datetime | None = None) -> list[Path]:
    """Dump each named database to ``out_dir/<name>-<UTC time><suffix>``; keep the newest ``keep`` per name."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    written = []
    for name, database_url in databases.items():
        suffix = SUFFIX.get(make_url(database_url).get_backend_name(), ".dump")
        written.append(dump(database_url, out_dir / f"{name}-{stamp}{suffix}"))
        old = sorted(out_dir.glob(f"{name}-*{suffix}"))[:-keep] if keep > 0 else []
        for path in old:
            path.unlink()
    return written


def restore(dump_file: Path, database_url: str) -> None:
    """Load ``dump_file`` into ``database_url`` (replacing what is there). The caller migrates afterwards."""
    if not dump_file.is_file():
        raise ConfigurationError(f"no such backup file: {dump_file}")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(dump_file) as source, sqlite3.connect(url.database or "") as target:
            source.backup(target)
        return
    args, env = _pg_args(url)
    _run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",  # grants name roles another server may not have; migrate() grants again
            "--exit-on-error",
            *args,
            "-d",
            url.database or "postgres",
            str(dump_file),
        ],
        env,
    )
