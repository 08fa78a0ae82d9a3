"""Isolation of clinics, in one place: every ORM statement of a session is confined to the session's scope.

A session carries a :class:`Scope` in ``session.info``: the clinics it may see (one clinic's users, an MIS key's
list), every clinic (a superadmin), or the system (the worker, retention, the CLI, the link pages' lookup by
key). The sessions the web routes get (:func:`tenant_sessionmaker`) start with **no scope**, and a session
with no scope runs no statement at all: the FastAPI dependencies that authenticate the caller give it its
scope (``api.deps``). From then on:

- every ORM SELECT, UPDATE and DELETE (and every lazy or eager load of a relationship) gets, for each
  clinic-owned model, the criterion "its clinic is in the scope" (SQLAlchemy's ``do_orm_execute`` event adding
  ``with_loader_criteria``), so a query that forgets ``where(clinic_code == ...)`` still sees only its
  clinic's rows, and an UPDATE or DELETE of another clinic's row changes nothing;
- a flush that would insert, change or delete a clinic-owned row of another clinic raises instead;
- a statement the filter cannot read (textual SQL, a Core statement on a table) is refused in a clinic scope.

Entering the system scope is explicit (:func:`system`), and leaving it empties the session's identity map, so
nothing loaded outside the scope (the caller's key or user row) can be reached through ``session.get`` later.
This works the same on SQLite and PostgreSQL (it is the ORM's statement, not the database, that is filtered).

On PostgreSQL a second wall stands behind the first (migration 0009): row-level security on every clinic's
table, with a policy that lets a row through only when its clinic is in the transaction's ``studypub.clinics``
setting. A session confined to clinics runs each transaction as the role ``studypub_tenant`` with that setting
(:func:`_raise_wall`: ``SET LOCAL``, at the transaction's start and whenever the scope changes), so SQL that
escapes the ORM's filter (``session.connection().execute(text(...))``) still sees and changes only its clinics'
rows; a session with no scope yet sees none. The system and a superadmin run as the database's owner, which
the policies do not restrict (that is the bypass), and so do migrations, backups and restores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, and_, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria
from sqlalchemy.sql.elements import TextClause

from studypub.errors import StudyPubError
from studypub.models import Base, Clinic, OutboxMessage, Task, TaskStep, User, ViewerIndex

KEY = "studypub.scope"
TENANT_ROLE = "studypub_tenant"  # PostgreSQL: the role of a clinic's transactions (row-level security applies)
CLINICS_SETTING = "studypub.clinics"  # ... and the clinics its rows may belong to,
CLINICS_SEPARATOR = "\x1f"  # ... joined by the unit separator (chr(31): clinics.check_code refuses it in a code)
SUPERADMIN_ROLE = "superadmin"  # studypub.users.Role.SUPERADMIN (users imports publications, which imports us)


class TenancyError(StudyPubError):
    """A statement outside the session's scope (a bug, never a user's mistake): nothing is run."""

    http_status = 500
    code = "scope_violation"


@dataclass(frozen=True)
class Scope:
    """``clinics``: the codes visible; None with ``system`` False: every clinic (a superadmin); ``system``:
    the service itself (no filter)."""

    clinics: frozenset[str] | None
    system: bool = False
    label: str = ""

    @property
    def every_clinic(self) -> bool:
        return self.clinics is None

    def allows(self, code: str | None) -> bool:
        return self.clinics is None or (code is not None and code in self.clinics)


SYSTEM = Scope(None, system=True, label="system")
EVERY_CLINIC = Scope(None, label="every clinic")


def clinics_scope(codes: Any) -> Scope:
    return Scope(frozenset(codes), label=",".join(sorted(codes)))


# What belongs to a clinic. Every mapped model with a ``clinic_code`` column is a clinic's, found by reading
# the models (a model added later is filtered without being listed here); the others say how they belong.
SHARED_TABLES = frozenset({"slot_leases"})  # the instance's: retrieval slots per PACS, no clinic data


def _by_clinic_code() -> list[type[Any]]:
    return sorted(
        (m.class_ for m in Base.registry.mappers if "clinic_code" in m.columns),
        key=lambda cls: cls.__name__,
    )


@lru_cache(maxsize=256)
def _owned_criteria(codes: frozenset[str]) -> tuple[Any, ...]:
    """The filter options of a scope (built once per set of clinics and process: they are immutable)."""
    wanted = sorted(codes)
    owned_tasks = select(Task.id).where(Task.clinic_code.in_(wanted))
    special: dict[type[Any], Any] = {
        # A superadmin belongs to the instance, not to the clinic named on its row: no clinic sees or changes it.
        User: and_(User.clinic_code.in_(wanted), User.role != SUPERADMIN_ROLE),
    }
    criteria = [
        with_loader_criteria(
            model,
            special.get(model, model.clinic_code.in_(wanted)),
            include_aliases=True,  # type: ignore[attr-defined]
        )
        for model in _by_clinic_code()
    ]
    return (
        *criteria,
        with_loader_criteria(Clinic, Clinic.code.in_(wanted), include_aliases=True),
        with_loader_criteria(TaskStep, TaskStep.task_id.in_(owned_tasks), include_aliases=True),
        with_loader_criteria(OutboxMessage, OutboxMessage.task_id.in_(owned_tasks), include_aliases=True),
        with_loader_criteria(ViewerIndex, ViewerIndex.task_id.in_(owned_tasks), include_aliases=True),
    )


def _clinic_of(obj: Any, session: Session) -> tuple[bool, str | None]:
    """(is clinic-owned, its clinic) of an ORM object."""
    if isinstance(obj, Clinic):
        return True, obj.code
    if isinstance(obj, User) and obj.role == SUPERADMIN_ROLE:
        return True, None  # the instance's: never inside a clinic's scope
    # A row of a task (its steps, messages, viewer index) is its task's clinic's; a task the scope cannot see is
    # another clinic's.
    if isinstance(obj, (TaskStep, OutboxMessage, ViewerIndex)):
        task = obj.__dict__.get("task")
        if task is None:
            with session.no_autoflush:
                task = session.get(Task, obj.task_id)
        return True, task.clinic_code if task is not None else None
    if "clinic_code" in sa_inspect(type(obj)).columns:
        return True, obj.clinic_code
    return type(obj).__tablename__ not in SHARED_TABLES, None  # unknown kinds of rows: not in a clinic's scope


def scope_of(session: Session) -> Scope | None:
    return session.info.get(KEY)  # type: ignore[no-any-return]


def scope_clinic(session: Session) -> str | None:
    """The one clinic of the session's scope, else None."""
    scope = scope_of(session)
    if scope is not None and scope.clinics is not None and len(scope.clinics) == 1:
        return next(iter(scope.clinics))
    return None


def enter(session: Session, scope: Scope) -> None:
    """Give the session its scope (once the caller is known)."""
    session.info[KEY] = scope
    _rewall(session)


@contextmanager
def system(session: Session) -> Iterator[Session]:
    """Run a block as the system (authenticating the caller, a link page's lookup by its key); afterwards the
    session is back in its scope and holds no object loaded meanwhile."""
    before = session.info.get(KEY)
    session.info[KEY] = SYSTEM
    _rewall(session)
    failed = False
    try:
        yield session
    except BaseException:
        failed = True
        raise
    finally:
        try:
            session.flush()
            session.expunge_all()
            if before is None:
                session.info.pop(KEY, None)
            else:
                session.info[KEY] = before
            _rewall(session)
        except Exception:
            # The transaction cannot take its wall back (its connection broke in the block): end it, so nothing
            # runs on as the owner, and let the block's own error be the one the caller sees.
            if before is None:
                session.info.pop(KEY, None)
            else:
                session.info[KEY] = before
            session.rollback()
            if not failed:
                raise


def _on_execute(state: ORMExecuteState) -> None:
    scope = scope_of(state.session)
    if scope is None:
        raise TenancyError("a statement in a session without a scope (no caller authenticated)")
    if scope.every_clinic:
        return
    assert scope.clinics is not None
    if isinstance(state.statement, TextClause) or not state.is_orm_statement:
        raise TenancyError("textual SQL or a Core statement in a clinic's session (the filter cannot read it)")
    if state.is_insert:
        raise TenancyError("a bulk INSERT in a clinic's session (add objects instead)")
    state.statement = state.statement.options(*_owned_criteria(scope.clinics))


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    scope = scope_of(session)
    if scope is None:
        if session.new or session.dirty or session.deleted:
            raise TenancyError("a change in a session without a scope")
        return
    if scope.every_clinic:
        return
    for obj in (*session.new, *session.dirty, *session.deleted):
        owned, code = _clinic_of(obj, session)
        if owned and not scope.allows(code):
            raise TenancyError(f"a change to a row of another clinic ({type(obj).__name__})")


# The database's wall (PostgreSQL) ------------------------------------------------------------------------------

_walled_databases: set[str] = set()  # databases (by URL) whose clinic tables have row-level security


def _may_take(connection: Connection) -> str:
    """The privilege that lets a user switch to a role: membership up to PostgreSQL 15; from 16 on, a member
    made by CREATE ROLE holds only ADMIN (``createrole_self_grant`` is empty), so SET is what counts."""
    version = connection.dialect.server_version_info or (0,)
    return "SET" if version[0] >= 16 else "MEMBER"


def _has_wall(connection: Connection) -> bool:
    """Whether this PostgreSQL database has the policies (migration 0009) and the user may take the tenant role;
    remembered once true."""
    key = connection.engine.url.render_as_string(hide_password=True)
    if key in _walled_databases:
        return True
    found = connection.exec_driver_sql(
        f"SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{TENANT_ROLE}') "  # noqa: S608 - constants
        f"THEN pg_has_role('{TENANT_ROLE}', '{_may_take(connection)}') AND coalesce((SELECT relrowsecurity "
        "FROM pg_class WHERE oid = to_regclass('tasks')), false) ELSE false END"
    ).scalar()
    if found:
        _walled_databases.add(key)
    return bool(found)


def _raise_wall(session: Session, connection: Connection) -> None:
    """Set the transaction's role and clinics for the session's scope (PostgreSQL with the wall only)."""
    if connection.dialect.name != "postgresql" or not _has_wall(connection):
        return
    scope = scope_of(session)
    if scope is not None and scope.every_clinic:  # the system, a superadmin: the owner, whom no policy limits
        connection.exec_driver_sql("RESET ROLE")
        return
    # no scope yet: no clinic. Joined by the unit separator, which no clinic code may hold (a comma may).
    clinics = CLINICS_SEPARATOR.join(sorted(scope.clinics or ())) if scope is not None else ""
    connection.exec_driver_sql(
        f"SELECT set_config('role', '{TENANT_ROLE}', true), set_config('{CLINICS_SETTING}', %(clinics)s, true)",
        {"clinics": clinics},
    )


def _on_begin(session: Session, _transaction: Any, connection: Connection) -> None:
    scope = scope_of(session)
    if scope is not None and scope.every_clinic:
        return  # a transaction starts as the owner (SET LOCAL ends with the last one): nothing to lower
    _raise_wall(session, connection)


def _rewall(session: Session) -> None:
    """The scope changed inside a transaction: its wall follows."""
    if session.in_transaction() and session.get_bind().dialect.name == "postgresql":
        _raise_wall(session, session.connection())


def ensure_tenant_role(connection: Connection) -> None:
    """The role of clinics' transactions exists, the app's role may take it, and it may use every table (the
    policies decide which rows). Idempotent: run by migration 0009 and at every start (a restore into another
    server brings the policies, not roles or grants). A database user that may not create or take the role gets
    a warning and no second wall (``_has_wall`` is false): the ORM's wall still stands, the service still runs."""
    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7242014)")  # several processes start at once
    privilege = _may_take(connection)
    grant = f"GRANT {TENANT_ROLE} TO ' || quote_ident(current_user)"  # the SQL of a string built in PL/pgSQL
    if privilege == "SET":
        grant += " || ' WITH SET TRUE, INHERIT FALSE'"
    connection.exec_driver_sql(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{TENANT_ROLE}') THEN
                BEGIN
                    CREATE ROLE {TENANT_ROLE} NOLOGIN;
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE WARNING 'studypub: the database user may not create roles: no row-level security';
                    RETURN;
                END;
            END IF;
            IF NOT pg_has_role(current_user, '{TENANT_ROLE}', '{privilege}') THEN
                BEGIN
                    EXECUTE '{grant};
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE WARNING 'studypub: the database user may not take the tenant role: no row-level security';
                    RETURN;
                END;
            END IF;
            GRANT USAGE ON SCHEMA public TO {TENANT_ROLE};
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {TENANT_ROLE};
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {TENANT_ROLE};
        END $$;
        """  # noqa: S608 - constants only
    )


def guard(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Install the scope's filter and checks on every session of ``factory``, and the database's wall."""
    event.listen(factory, "do_orm_execute", _on_execute)
    event.listen(factory, "before_flush", _before_flush)
    event.listen(factory, "after_begin", _on_begin)
    return factory


def tenant_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for the web routes: no scope until the caller is authenticated."""
    return guard(sessionmaker(engine, expire_on_commit=False))


def system_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions of the service itself (worker, retention, CLI, dispatcher): the system scope, stated."""
    return guard(sessionmaker(engine, expire_on_commit=False, info={KEY: SYSTEM}))
