"""The SQLite database (it holds patient IDs) and the work folder are for the service's user only (issue 10)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from studypub.db import _engine_for, _private_work_dir, get_engine, make_engine, migrate
from studypub.settings import Settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    _engine_for.cache_clear()
    _private_work_dir.cache_clear()
    try:
        yield request.param
    finally:
        os.umask(old)
        _engine_for.cache_clear()
        _private_work_dir.cache_clear()


def test_new_database_and_its_wal_files_are_0600_and_the_work_folder_0700(isolated_env: Path, umask: int) -> None:
    settings = Settings()
    assert settings.work_dir == isolated_env and not isolated_env.exists()
    migrate(settings)  # what `studypub api` / `studypub worker` do first
    db = isolated_env / "studypub.db"
    with get_engine(settings).connect() as conn:  # WAL mode: -wal and -shm exist while a connection is open
        conn.execute(text("SELECT count(*) FROM tasks")).scalar()
        wal, shm = db.with_name("studypub.db-wal"), db.with_name("studypub.db-shm")
        assert wal.exists() and shm.exists()
        assert {f.name: _mode(f) for f in (db, wal, shm)} == {
            "studypub.db": 0o600,
            "studypub.db-wal": 0o600,
            "studypub.db-shm": 0o600,
        }
    assert _mode(isolated_env) == 0o700
    get_engine(settings).dispose()


def test_files_of_an_older_version_become_private_when_the_service_starts(isolated_env: Path, umask: int) -> None:
    isolated_env.mkdir(mode=0o755)
    os.chmod(isolated_env, 0o755)
    migrate(Settings())
    _engine_for.cache_clear()
    _private_work_dir.cache_clear()
    db = isolated_env / "studypub.db"
    os.chmod(db, 0o644)
    os.chmod(isolated_env, 0o755)  # as created by an older version, or restored from a backup
    with get_engine(Settings()).connect() as conn:
        conn.execute(text("SELECT 1"))
        assert _mode(db) == 0o600 and _mode(db.with_name("studypub.db-wal")) == 0o600
    assert _mode(isolated_env) == 0o700


def test_a_database_elsewhere_is_private_but_its_shared_folder_is_left_alone(tmp_path: Path, umask: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    engine = make_engine(f"sqlite:///{shared / 'other.db'}")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.commit()
        assert _mode(shared / "other.db") == 0o600 and _mode(shared / "other.db-wal") == 0o600
    engine.dispose()
    assert _mode(shared) == 0o755
    fresh = tmp_path / "new" / "folder"
    make_engine(f"sqlite:///{fresh / 'x.db'}").dispose()
    assert _mode(fresh) == 0o700 and _mode(fresh / "x.db") == 0o600


def test_in_memory_sqlite_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:"):
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
    assert list(tmp_path.iterdir()) == []
