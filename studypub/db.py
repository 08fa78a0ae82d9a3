"""Engine, sessions and migrations. SQLite (embedded default, in the work dir) or PostgreSQL.

The SQLite database holds patient IDs, and the work folder raw instances: both are for the service's user
only, whatever the umask. The database file is created 0600 before SQLite opens it (SQLite gives its -wal and
-shm files the database file's mode), and every new connection sets 0600 on the three again (a file restored
or created by an older version); the work folder is made 0700 when the first engine for it is built.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from studypub.logs import details, get_logger
from studypub.settings import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")

log = get_logger("studypub.db")


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) if needed and make it 0700, whatever the umask. A folder it cannot change
    (owned by another user) is logged, not fatal."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except OSError as exc:
            log.warning("Cannot make a folder private", extra=details(path=str(path), error=type(exc).__name__))


def private_sqlite_files(path: Path) -> None:
    """Make the database file and its -wal/-shm/-journal companions that exist 0600."""
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        with contextlib.suppress(FileNotFoundError):
            if (file.stat().st_mode & 0o777) != PRIVATE_FILE_MODE:
                os.chmod(file, PRIVATE_FILE_MODE)


def _sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None in memory (or a ``file:`` URI, left to SQLite)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_private_file(path: Path) -> None:
    """An empty file (SQLite takes it as a new database) created 0600, so that it is never readable by others."""
    if not path.parent.exists():
        private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    private_sqlite_files(path)


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is not None:
            _create_private_file(path)
        engine = create_engine(
            url, echo=echo, hide_parameters=True, connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            if path is not None:  # a file restored, or created by an older version, becomes private too
                private_sqlite_files(path)

        return engine
    return create_engine(
        url, echo=echo, hide_parameters=True, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


@lru_cache
def _engine_for(url: str, pool_size: int, echo: bool) -> Engine:
    return make_engine(url, pool_size=pool_size, echo=echo)


@lru_cache
def _private_work_dir(work_dir: Path) -> None:
    private_dir(work_dir)


def get_engine(settings: Settings | None = None) -> Engine:
    s = settings or get_settings()
    _private_work_dir(s.work_dir)  # once per process and folder: every process that works opens the database
    return _engine_for(s.database_url_resolved, s.database.pool_size, s.database.echo)


def get_sessionmaker(settings: Settings | None = None) -> sessionmaker[Session]:
    """Sessions of the service itself (worker, retention, CLI): the system scope (``studypub.tenancy``). The
    web routes get theirs from ``tenancy.tenant_sessionmaker``, confined to the caller's clinics."""
    return _system_sessions(get_engine(settings))


@lru_cache
def _system_sessions(engine: Engine) -> sessionmaker[Session]:
    from studypub.tenancy import system_sessionmaker

    return system_sessionmaker(engine)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(settings: Settings | None = None) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``). Safe to call at every start."""
    from alembic import command
    from alembic.config import Config

    s = settings or get_settings()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = get_engine(s)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    from studypub.clinics import ensure_default_clinic
    from studypub.tenancy import ensure_tenant_role

    engine = get_engine(s)
    if engine.dialect.name == "postgresql":  # the wall's role and grants (a restore brings neither)
        with engine.begin() as conn:
            ensure_tenant_role(conn)

    with get_sessionmaker(s)() as session:  # an instance that never configured clinics has its default one
        ensure_default_clinic(session, s)
