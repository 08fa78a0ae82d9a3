"""The lifecycle table, transition by transition, and the publication functions that move along it, on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from studypub.db import get_sessionmaker
from studypub.errors import PacsUnavailable, StudyNotFound
from studypub.lifecycle import ALLOWED, TRANSITIONS, Event, Waiting, move
from studypub.models import AuditEvent, Task, TaskStatus
from studypub.publications import (
    PublicationRequest,
    claim,
    fail,
    get_task,
    interrupt,
    redispatch,
    request_publication,
    requeue,
    result_view,
    wait_for_study,
)
from studypub.settings import get_settings

STATUSES = list(TaskStatus)


def _new(session, pid: str = "P1") -> Task:  # type: ignore[no-untyped-def]
    req = PublicationRequest(patient_id=pid, accession_number=f"A-{pid}", clinic_code="default", source="cli")
    task, _ = request_publication(session, get_settings(), req)
    return task


def _force(session, task_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    session.execute(update(Task).where(Task.id == task_id).values(**values))
    session.commit()
    session.expire_all()


def test_the_table_is_the_documented_lifecycle() -> None:
    assert {
        ("QUEUED", "RUNNING"),
        ("FAILED", "RUNNING"),
        ("RUNNING", "RUNNING"),
        ("RUNNING", "COMPLETED"),
        ("RUNNING", "FAILED"),
        ("QUEUED", "FAILED"),
        ("RUNNING", "QUEUED"),
        ("QUEUED", "QUEUED"),
        ("FAILED", "QUEUED"),
        ("COMPLETED", "QUEUED"),
        ("QUEUED", "EXPIRED"),
        ("COMPLETED", "EXPIRED"),
        ("FAILED", "EXPIRED"),
        ("EXPIRED", "DELETED"),
    } == ALLOWED
    assert not any(src == "DELETED" for src, _ in ALLOWED)  # final


def test_every_event_moves_exactly_its_sources(db_url: str) -> None:
    with get_sessionmaker()() as session:
        task = _new(session)
        for event, transition in TRANSITIONS.items():
            for status in STATUSES:
                _force(session, task.id, status=status)
                moved = move(session, task.id, event)
                session.commit()
                session.expire_all()
                after = get_task(session, task.id).status
                assert moved == (status in transition.sources), (event, status)
                assert after == (transition.target if moved else status), (event, status)


def test_extra_conditions_and_audit(db_url: str) -> None:
    with get_sessionmaker()() as session:
        task = _new(session)
        assert not move(session, task.id, Event.CLAIM, where=[Task.lease_owner == "nobody"])
        assert move(session, task.id, Event.CLAIM, values={"lease_owner": "run"}, action="x.claimed", actor="me")
        session.commit()
        events = session.query(AuditEvent).filter_by(task_id=task.id, action="x.claimed").all()
        assert [e.actor for e in events] == ["me"]
        assert get_task(session, task.id).lease_owner == "run"


def test_an_outage_failure_is_retried_automatically_and_says_when(db_url: str) -> None:
    s = get_settings()
    with get_sessionmaker()() as session:
        task = _new(session)
        assert claim(session, task.id, "run", lease_seconds=60)
        failed = fail(session, s, task.id, PacsUnavailable("The PACS at h:1 (X) is unreachable"), owner="run")
        assert failed.status == TaskStatus.FAILED
        assert failed.waiting_for == Waiting.RETRY and failed.next_attempt_at is not None
        assert "tried again automatically at" in (failed.reason or "")
        minutes = (failed.next_attempt_at - datetime.now(UTC)).total_seconds() / 60
        assert s.runs.auto_retry_minutes - 1 < minutes <= s.runs.auto_retry_minutes
        # ...until auto_retry_hours after the first failure: then it stays failed for a person.
        _force(session, task.id, first_failed_at=datetime.now(UTC) - timedelta(hours=s.runs.auto_retry_hours + 1))
        assert claim(session, task.id, "run", lease_seconds=60)
        failed = fail(session, s, task.id, PacsUnavailable("unreachable"), owner="run")
        assert failed.next_attempt_at is None and failed.waiting_for is None


def test_a_run_that_lost_its_lease_cannot_fail_or_complete_it(db_url: str) -> None:
    s = get_settings()
    with get_sessionmaker()() as session:
        task = _new(session)
        assert claim(session, task.id, "old", lease_seconds=60)
        _force(session, task.id, lease_until=datetime.now(UTC) - timedelta(seconds=1))
        assert claim(session, task.id, "new", lease_seconds=60)
        assert fail(session, s, task.id, RuntimeError("x"), owner="old").status == TaskStatus.RUNNING


def test_interrupted_runs_resume_then_fail_after_max_resumes(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_RUNS__MAX_RESUMES", "2")
    get_settings.cache_clear()
    s = get_settings()
    with get_sessionmaker()() as session:
        task = _new(session)
        for attempt in (1, 2):
            assert claim(session, task.id, f"run{attempt}", lease_seconds=60)
            assert interrupt(session, s, task.id) is None  # its lease is live: not dead
            _force(session, task.id, lease_until=datetime.now(UTC) - timedelta(seconds=1), flow_run_id=f"fr{attempt}")
            assert interrupt(session, s, task.id) == (TaskStatus.QUEUED, f"fr{attempt}")
            t = get_task(session, task.id)
            assert (t.status, t.waiting_for, t.dispatch_pending, t.resumes) == ("QUEUED", "interrupted", True, attempt)
            assert "resuming" in (t.reason or "")
            assert interrupt(session, s, task.id) is None  # once
        assert claim(session, task.id, "run3", lease_seconds=60)
        _force(session, task.id, lease_until=datetime.now(UTC) - timedelta(seconds=1))
        assert interrupt(session, s, task.id) is not None
        t = get_task(session, task.id)
        assert t.status == TaskStatus.FAILED and t.error_code == "crashed_repeatedly"
        assert "3 times in a row" in (t.reason or "")
        # A person's Retry starts afresh.
        assert requeue(session, task.id, actor="admin")
        assert get_task(session, task.id).resumes == 0


def test_a_late_study_waits_holding_nothing_then_fails(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_RUNS__STUDY_RECHECK_SECONDS", "60")
    get_settings.cache_clear()
    s = get_settings()
    with get_sessionmaker()() as session:
        task = _new(session)
        assert claim(session, task.id, "run", lease_seconds=60)
        assert wait_for_study(session, s, task.id, owner="run")
        t = get_task(session, task.id)
        assert (t.status, t.waiting_for, t.lease_owner, t.dispatch_pending) == ("QUEUED", "study", None, False)
        assert "waiting for the study to reach the PACS" in (t.reason or "")
        view = result_view(session, s, t)
        assert view["waiting_for"] == "study" and view["next_attempt_at"]
        assert not redispatch(session, task.id)  # not due yet
        _force(session, task.id, next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        assert redispatch(session, task.id)
        t = get_task(session, task.id)
        assert (t.status, t.dispatch_pending, t.next_attempt_at) == ("QUEUED", True, None)
        # The second miss, past study_wait_hours since the first: fails for good.
        assert claim(session, task.id, "run2", lease_seconds=60)
        first = datetime.now(UTC) - timedelta(hours=s.runs.study_wait_hours, seconds=1)
        _force(session, task.id, first_failed_at=first)
        assert not wait_for_study(session, s, task.id, owner="run2")
        t = get_task(session, task.id)
        assert t.status == TaskStatus.FAILED and t.error_code == StudyNotFound.code
        assert (t.reason or "").startswith("find: study not found in PACS (looked for since")


def test_retry_takes_a_stuck_run_but_never_a_live_one(db_url: str) -> None:
    with get_sessionmaker()() as session:
        task = _new(session)
        assert claim(session, task.id, "run", lease_seconds=60)
        assert not requeue(session, task.id, actor="admin")  # alive: not stuck
        _force(session, task.id, lease_until=datetime.now(UTC) - timedelta(seconds=1))
        assert requeue(session, task.id, actor="admin")  # its run died: Retry works at once
        t = get_task(session, task.id)
        assert (t.status, t.dispatch_pending, t.lease_owner) == ("QUEUED", True, None)
        assert not requeue(session, task.id, actor="admin")  # queued with its run on the way: nothing to do


def test_queue_position_in_words(db_url: str) -> None:
    s = get_settings()
    with get_sessionmaker()() as session:
        tasks = [_new(session, f"P{i}") for i in range(3)]
        for i, task in enumerate(tasks):
            _force(session, task.id, created_at=datetime.now(UTC) + timedelta(seconds=i))
        views = [result_view(session, s, get_task(session, t.id), with_queue=True) for t in tasks]
        assert [v["reason"] for v in views] == ["queued, next to start", "queued, 1 ahead", "queued, 2 ahead"]
        assert result_view(session, s, get_task(session, tasks[2].id))["reason"] is None  # not asked: no query
