"""Migration 0007 on a database of a single-clinic instance holding several clinic codes, one of them in two
spellings: one clinic per code, the spellings merged with their publications, the same study live under both
spellings left live once, MIS keys and settings carried over; on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from tests.support.databases import empty_database

ROWS = [  # (clinic_code as stored, pid, accession, status)
    ("f_Khimki", "P1", "A1", "COMPLETED"),
    ("F_KHIMKI", "P1", "A1", "QUEUED"),  # the same study under another spelling: merged, not live twice
    ("F_KHIMKI", "P2", "A2", "COMPLETED"),
    (" default", "P3", "A3", "FAILED"),
    ("Other", "P4", "A4", "DELETED"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def old_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return empty_database(request, tmp_path, monkeypatch, "old.db")


def _alembic(target: str) -> None:
    from alembic import command
    from alembic.config import Config

    from studypub.db import MIGRATIONS_DIR, get_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = get_engine()
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, target)


def _fill(url: str) -> dict[str, str]:
    engine = create_engine(url)
    now = datetime.now(UTC)
    stamp: Any = now.replace(tzinfo=None) if url.startswith("sqlite") else now
    ids = {}
    with engine.begin() as conn:
        for i, (code, pid, acsn, status) in enumerate(ROWS):
            task_id = str(uuid.uuid4())
            ids[f"{code}/{pid}/{status}"] = task_id
            conn.execute(
                text(
                    "INSERT INTO tasks (id, clinic_code, patient_id, accession_number, save_till, source, status, "
                    "attempts, link_key, uid_salt, object_key, created_at, updated_at, dispatch_pending, requeues, "
                    "resumes) VALUES (:id, :code, :pid, :acsn, :till, 'mis', :status, 0, :link, 's', :obj, :at, :at, "
                    ":f, 0, 0)"
                ),
                {
                    "id": task_id,
                    "code": code,
                    "pid": pid,
                    "acsn": acsn,
                    "till": stamp + timedelta(days=30),
                    "status": status,
                    "link": f"link{i}",
                    "obj": f"archives/{i}.zip",
                    "at": stamp + timedelta(seconds=i),
                    "f": False,
                },
            )
        conn.execute(
            text(
                "INSERT INTO users (clinic_code, username, password_hash, role, disabled, created_at, "
                "password_changed_at) VALUES ('Default', 'boss', 'x', 'administrator', :f, :at, :at)"
            ),
            {"f": False, "at": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (name, clinic_code, key_hash, key_hint, created_at) "
                "VALUES ('mis-k', 'F_Khimki', 'h1', 'sp_x', :at), ('mis-any', NULL, 'h2', 'sp_y', :at)"
            ),
            {"at": stamp},
        )
        for code, value, at in (("f_Khimki", 10, stamp), ("F_KHIMKI", 12, stamp + timedelta(minutes=1))):
            conn.execute(
                text(
                    "INSERT INTO settings (clinic_code, key, value, updated_at) "
                    "VALUES (:code, 'links.default_retention_days', :value, :at)"
                ),
                {"code": code, "value": str(value), "at": at},
            )
    engine.dispose()
    return ids


def test_codes_in_the_database_become_clinics(old_db: str) -> None:
    from studypub.db import get_sessionmaker, migrate
    from studypub.models import ApiKey, Clinic, Setting, Task, User

    _alembic("0004")
    ids = _fill(old_db)
    migrate()  # what every start does: to the newest schema

    with get_sessionmaker()() as session:
        clinics = {c.code: c for c in session.scalars(select(Clinic))}
        assert set(clinics) == {"f_khimki", "default", "other"}  # " default" and the user's "Default": one
        assert clinics["f_khimki"].names  # named after a spelling it had
        tasks = {t.id: t for t in session.scalars(select(Task))}
        assert {t.clinic_code for t in tasks.values()} == {"f_khimki", "default", "other"}
        kept = tasks[ids["f_Khimki/P1/COMPLETED"]]
        merged = tasks[ids["F_KHIMKI/P1/QUEUED"]]
        assert kept.status == "COMPLETED" and kept.link_key == "link0"  # the published one stays as it was
        assert merged.status == "EXPIRED" and kept.id in (merged.reason or "")
        assert tasks[ids["F_KHIMKI/P2/COMPLETED"]].status == "COMPLETED"  # the other spelling's study, merged
        assert session.scalars(select(User.clinic_code)).one() == "default"
        keys = {k.name: k for k in session.scalars(select(ApiKey))}
        assert keys["mis-k"].clinic_codes == ["f_khimki"] and keys["mis-any"].clinic_codes is None
        saved = session.scalars(select(Setting)).all()
        assert [(s.clinic_code, s.value) for s in saved] == [("f_khimki", 12)]  # the later change kept

    # The instance serves the clinics it knows, any spelling; an unknown code is refused with nothing recorded.
    from studypub.clinics import UnknownClinic
    from studypub.publications import PublicationRequest, request_publication
    from studypub.settings import get_settings

    with get_sessionmaker()() as session:
        task, created = request_publication(
            session, get_settings(), PublicationRequest("P2", "A2", clinic_code="  F_Khimki", source="mis")
        )
        assert not created and task.id == ids["F_KHIMKI/P2/COMPLETED"]  # the same study, the same link
        before = session.query(Task).count()
        with pytest.raises(UnknownClinic, match="unknown clinic"):
            request_publication(session, get_settings(), PublicationRequest("P9", "A9", "nowhere", source="mis"))
        assert session.query(Task).count() == before


def test_a_fresh_instance_has_its_default_clinic(db_url: str) -> None:
    from studypub.clinics import list_clinics
    from studypub.db import get_sessionmaker

    with get_sessionmaker()() as session:
        assert "default" in {c.code for c in list_clinics(session)}
