"""Isolation of clinics in the session (studypub.tenancy), on SQLite and PostgreSQL: a query that forgets the
clinic still sees only its clinic's rows; updates, deletes and flushes cannot touch another clinic's rows; a
session with no scope runs nothing; the system scope sees everything; leaving it forgets what it loaded."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update

from studypub.models import ApiKey, AuditEvent, ManualRequest, PublishedStudy, Setting, Task, TaskStep, User
from studypub.tenancy import EVERY_CLINIC, TenancyError, clinics_scope, enter, system, tenant_sessionmaker
from tests.support.api import seed_publication
from tests.support.dashboard import make_user


def _two_clinics() -> dict[str, Any]:
    from studypub.apikeys import create_key
    from studypub.db import get_sessionmaker
    from studypub.overrides import save_overrides
    from studypub.settings import get_settings

    a = seed_publication(clinic_code="f_Khimki")
    b = seed_publication(clinic_code="f_Other")
    make_user("reg-a", "registrator", clinic_code="f_Khimki")
    make_user("reg-b", "registrator", clinic_code="F_OTHER ")  # any spelling of the code
    make_user("root", "superadmin")
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        create_key(session, "key-a", clinic_code="f_khimki", actor="test")
        create_key(session, "key-b", clinic_code="f_other", actor="test")
        session.add(ManualRequest(task_id=b.task_id, clinic_code="f_other"))
        session.commit()
        save_overrides(session, settings, {"links.default_retention_days": "7"}, actor="t", clinic_code="f_other")
    return {"a": a, "b": b}


def _session(scope: Any = None) -> Any:
    from studypub.db import get_engine

    session = tenant_sessionmaker(get_engine())()
    if scope is not None:
        enter(session, scope)
    return session


def test_a_clinics_session_sees_and_changes_only_its_own_rows(db_url: str) -> None:
    seeded = _two_clinics()
    a, b = seeded["a"], seeded["b"]
    with _session(clinics_scope({"f_khimki"})) as session:
        # Queries that forget the clinic: every model a clinic owns.
        assert {t.id for t in session.scalars(select(Task))} == {a.task_id}
        assert session.get(Task, b.task_id) is None
        assert session.scalar(select(func.count()).select_from(PublishedStudy)) == 1
        assert set(session.scalars(select(PublishedStudy.task_id))) == {a.task_id}
        assert set(session.scalars(select(User.username))) == {"reg-a"}  # not reg-b, not the superadmin
        assert set(session.scalars(select(ApiKey.name))) == {"key-a"}
        assert list(session.scalars(select(Setting))) == []
        assert list(session.scalars(select(ManualRequest))) == []
        assert {e.task_id for e in session.scalars(select(AuditEvent)) if e.task_id} == {a.task_id}
        assert set(session.scalars(select(TaskStep.task_id))) <= {a.task_id}
        # A join from an owned row to another owned table is filtered on both sides.
        joined = session.execute(select(Task.id, PublishedStudy.id).join(PublishedStudy)).all()
        assert [row[0] for row in joined] == [a.task_id]
        # Bulk updates and deletes of another clinic's rows change nothing.
        session.execute(update(Task).where(Task.id == b.task_id).values(service_title="changed"))
        session.execute(delete(ManualRequest))
        session.commit()
        # Subqueries are filtered too (the published list counts through one).
        subquery = select(PublishedStudy.id).join(Task, Task.id == PublishedStudy.task_id).subquery()
        assert session.scalar(select(func.count()).select_from(subquery)) == 1
        # A statement the ORM does not see through (textual SQL, a Core table) cannot be filtered: refused.
        with pytest.raises(TenancyError):
            session.execute(Task.__table__.select())
        session.rollback()
        # A textual statement cannot be filtered: refused.
        with pytest.raises(TenancyError):
            session.execute(text("SELECT id FROM tasks"))
        session.rollback()
        # Writing another clinic's row is refused at the flush, whatever the route forgot.
        session.add(User(username="intruder", password_hash="x", role="registrator", clinic_code="f_other"))
        with pytest.raises(TenancyError):
            session.flush()
        session.rollback()
        session.add(TaskStep(task_id=b.task_id, step="replaces", data={}))  # a step of B's task
        with pytest.raises(TenancyError):
            session.flush()
        session.rollback()
        session.add(TaskStep(task_id=a.task_id, step="replaces", data={}))  # of its own: fine
        session.flush()
        session.rollback()
        mine = session.get(Task, a.task_id)
        mine.clinic_code = "f_other"  # moving a row out of the clinic is a change to another clinic's row
        with pytest.raises(TenancyError):
            session.flush()
        session.rollback()
    with _session(EVERY_CLINIC) as session:  # a superadmin sees both clinics, and nothing changed
        assert {t.id for t in session.scalars(select(Task))} == {a.task_id, b.task_id}
        assert session.get(Task, b.task_id).service_title != "changed"
        assert session.scalar(select(func.count()).select_from(ManualRequest)) == 1
        assert "root" in set(session.scalars(select(User.username)))


def test_a_session_without_a_scope_runs_nothing_and_the_system_scope_is_explicit(db_url: str) -> None:
    seeded = _two_clinics()
    with _session() as session:
        with pytest.raises(TenancyError):
            session.scalars(select(Task)).all()
        with pytest.raises(TenancyError):
            session.get(Task, seeded["a"].task_id)
        with pytest.raises(TenancyError):
            session.execute(select(func.count()).select_from(Setting))
        with system(session):
            key = session.scalars(select(ApiKey).where(ApiKey.name == "key-b")).one()
            assert session.get(Task, seeded["b"].task_id) is not None
        # Leaving the system scope leaves nothing loaded in it reachable, and no scope again.
        assert key not in session
        with pytest.raises(TenancyError):
            session.get(Task, seeded["b"].task_id)
        enter(session, clinics_scope({"f_khimki"}))
        assert session.get(Task, seeded["b"].task_id) is None  # not served from the identity map either


def test_two_scopes_in_turn_never_share_a_cached_statement(db_url: str) -> None:
    """The same statement, compiled once and cached by SQLAlchemy, filtered by each session's own clinics."""
    seeded = _two_clinics()
    for _ in range(3):
        for code, key in (("f_khimki", "a"), ("f_other", "b")):
            with _session(clinics_scope({code})) as session:
                assert [t.id for t in session.scalars(select(Task).order_by(Task.id))] == [seeded[key].task_id]
                task = session.scalars(select(Task)).one()
                assert {s.task_id for s in task.steps} <= {seeded[key].task_id}  # a relationship load too


def test_every_table_is_a_clinics_or_says_why_not() -> None:
    """Clinic-owned models are found by their ``clinic_code`` column: a new one is filtered without being
    listed; a table without one is a clinic's through another (task steps, clinics) or is named shared."""
    from studypub.models import Base
    from studypub.tenancy import SHARED_TABLES, _by_clinic_code

    owned = {cls.__tablename__ for cls in _by_clinic_code()}
    assert {"tasks", "published_studies", "manual_requests", "users", "api_keys", "settings", "audit_events"} <= owned
    for name, table in Base.metadata.tables.items():
        assert (
            "clinic_code" in table.c or name in {"clinics", "task_steps", "outbox", "viewer_indexes"} | SHARED_TABLES
        ), name


def test_postgresql_row_level_security_is_a_second_wall(db_url: str) -> None:
    """SQL that escapes the ORM's filter (through the session's own connection) still sees and changes only the
    session's clinic's rows on PostgreSQL (migration 0009); the system scope sees every clinic's."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row-level security is PostgreSQL's (SQLite has the ORM's wall only)")
    seeded = _two_clinics()
    a, b = seeded["a"], seeded["b"]
    raw = "SELECT id FROM tasks"
    with _session(clinics_scope({"f_khimki"})) as session:
        connection = session.connection()  # the filter never sees what runs here
        assert set(connection.execute(text(raw)).scalars()) == {a.task_id}
        for table in ("published_studies", "manual_requests", "audit_events", "api_keys", "settings", "outbox"):
            assert "f_other" not in set(connection.execute(text(f"SELECT clinic_code FROM {table}")).scalars())
        assert set(connection.execute(text("SELECT username FROM users")).scalars()) == {"reg-a"}
        assert set(connection.execute(text("SELECT code FROM clinics")).scalars()) == {"f_khimki"}
        assert set(connection.execute(text("SELECT DISTINCT task_id FROM task_steps")).scalars()) <= {a.task_id}
        changed = connection.execute(text("UPDATE tasks SET service_title = 'x' WHERE id = :id"), {"id": b.task_id})
        assert changed.rowcount == 0
        with pytest.raises(Exception, match="row-level security"):  # a row for another clinic is not written
            connection.execute(text("UPDATE tasks SET clinic_code = 'f_other' WHERE id = :id"), {"id": a.task_id})
        session.rollback()
        with system(session):  # the system's block in the same session: every clinic
            assert set(session.connection().execute(text(raw)).scalars()) >= {a.task_id, b.task_id}
        assert set(session.connection().execute(text(raw)).scalars()) == {a.task_id}  # back behind the wall
    with _session() as session:  # no caller known yet: nothing at all
        assert list(session.connection().execute(text(raw)).scalars()) == []
    with _session(EVERY_CLINIC) as session:  # a superadmin
        assert set(session.connection().execute(text(raw)).scalars()) >= {a.task_id, b.task_id}
    with _session(clinics_scope({"f_khimki,f_other"})) as session:  # a code may hold a comma: it is one clinic
        assert list(session.connection().execute(text(raw)).scalars()) == []
