"""Recording requests, claiming runs, checkpoints and failures, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from studypub.db import get_sessionmaker
from studypub.errors import StudyNotFound, ValidationError
from studypub.models import Step, Task, TaskStatus
from studypub.publications import (
    PublicationRequest,
    claim,
    complete,
    fail,
    get_task,
    request_publication,
    save_checkpoint,
)
from studypub.settings import get_settings


def _req(pid: str = "1000001158664", acsn: str = "KP125706548L", **kw) -> PublicationRequest:  # type: ignore[no-untyped-def]
    return PublicationRequest(patient_id=pid, accession_number=acsn, clinic_code="default", source="cli", **kw)


def test_same_request_returns_same_task_and_link(db_url: str) -> None:
    s = get_settings()
    with get_sessionmaker()() as session:
        first, created = request_publication(session, s, _req())
        again, created_again = request_publication(session, s, _req())
    assert created and not created_again
    assert (again.id, again.link_key, again.object_key) == (first.id, first.link_key, first.object_key)
    assert len(first.link_key) >= 22  # 16 random bytes, URL-safe base64
    assert "1000001158664" not in first.object_key and "KP125706548L" not in first.object_key


def test_concurrent_identical_requests_make_one_task(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()

    def submit(_: int) -> str:
        with sessions() as session:
            task, _created = request_publication(session, s, _req("P-RACE", "A-RACE"))
            return task.id

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(submit, range(48)))
    assert len(ids) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1


def test_expired_publication_makes_room_for_a_new_one(db_url: str) -> None:
    s = get_settings()
    with get_sessionmaker()() as session:
        first, _ = request_publication(session, s, _req())
        first.status = TaskStatus.EXPIRED
        session.commit()
        second, created = request_publication(session, s, _req())
    assert created and second.id != first.id and second.link_key != first.link_key


@pytest.mark.parametrize(
    ("pid", "acsn", "message"),
    [("", "A", "patient_id is required"), ("P", "A*", "characters"), ("P" * 65, "A", "longer than 64")],
)
def test_bad_identifiers_are_refused(db_url: str, pid: str, acsn: str, message: str) -> None:
    with get_sessionmaker()() as session, pytest.raises(ValidationError, match=message):
        request_publication(session, get_settings(), _req(pid, acsn))


def test_save_till_bounds(db_url: str) -> None:
    s = get_settings()
    now = datetime.now(UTC)
    with get_sessionmaker()() as session:
        with pytest.raises(ValidationError, match="in the past"):
            request_publication(session, s, _req(save_till=now - timedelta(days=1)))
        with pytest.raises(ValidationError, match="maximum retention"):
            request_publication(session, s, _req(save_till=now + timedelta(days=s.links.max_retention_days + 1)))
        task, _ = request_publication(session, s, _req())
    assert abs((task.save_till - now).days - s.links.default_retention_days) <= 1


def test_claim_is_exclusive_until_the_lease_expires(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        task, _ = request_publication(session, s, _req())
        assert claim(session, task.id, "run-a", lease_seconds=60)
        assert not claim(session, task.id, "run-b", lease_seconds=60)
        assert claim(session, task.id, "run-a", lease_seconds=60)  # the same run retried
        get_task(session, task.id).lease_until = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
        assert claim(session, task.id, "run-b", lease_seconds=60)  # a crashed run's lease expired


def test_checkpoints_advance_the_step_and_failure_keeps_a_readable_reason(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        task, _ = request_publication(session, s, _req())
        claim(session, task.id, "run", lease_seconds=60)
        save_checkpoint(session, task.id, Step.FIND, {"instances": 3})
        assert get_task(session, task.id).step == Step.RETRIEVE
        failed = fail(session, s, task.id, StudyNotFound("study not found in PACS"))
        assert failed.status == TaskStatus.FAILED
        assert failed.reason == "retrieve: study not found in PACS"
        assert failed.next_attempt_at is None and failed.waiting_for is None  # a verdict: no automatic retry
        # Unknown errors are named by type only: their text could carry DICOM contents.
        claim(session, task.id, "run", lease_seconds=60)
        failed = fail(session, s, task.id, RuntimeError("PatientName=DOE^JOHN"))
        assert "DOE" not in (failed.reason or "") and "RuntimeError" in (failed.reason or "")


def test_complete_records_the_publication_once(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()
    archive = {
        "size_bytes": 10,
        "sha256": "0" * 64,
        "instances": 2,
        "withheld": 1,
        "series": 1,
        "modalities": ["CT"],
    }
    with sessions() as session:
        task, _ = request_publication(session, s, _req())
        claim(session, task.id, "run", lease_seconds=60)
        complete(session, s, task.id, archive=archive, profile_version="v", owner="run")
        pub = complete(session, s, task.id, archive=archive, profile_version="v", owner="run")  # a retried step
        assert get_task(session, task.id).status == TaskStatus.COMPLETED
        assert pub.object_key == task.object_key and pub.instances == 2


def test_a_dispatch_problem_is_said_on_the_waiting_request_and_keeps_its_start_time(db_url: str) -> None:
    """The dispatcher against a Prefect that refuses connections: the request waits, saying why, since when."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from studypub.dispatch import Dispatcher

    s = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        task, _ = request_publication(session, s, _req(dispatch=True))
    # Prefect's own settings (the environment is read once per process; a test harness may have set its URL).
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        dispatcher = Dispatcher(sessions, interval=1)
        dispatcher.sweep()
        with sessions() as session:
            first = get_task(session, task.id)
            assert first.status == TaskStatus.QUEUED and first.waiting_for == "prefect"
            assert first.reason and "Prefect is unreachable" in first.reason
            since = first.waiting_since
        assert since is not None
        dispatcher.sweep()
        with sessions() as session:
            assert get_task(session, task.id).waiting_since == since  # the same wait goes on
        dispatcher.stop()


def test_the_pacs_study_date_fills_in_a_missing_one_only(db_url: str) -> None:
    from zoneinfo import ZoneInfo

    from studypub.publications import copy_study_date, dicom_datetime

    s = get_settings()
    moscow = ZoneInfo("Europe/Moscow")
    assert dicom_datetime(s, "20250201", "161802.123") == datetime(2025, 2, 1, 16, 18, 2, tzinfo=moscow)
    assert dicom_datetime(s, "20250201", "16") == datetime(2025, 2, 1, 16, 0, tzinfo=moscow)
    assert dicom_datetime(s, "20250201", None) == datetime(2025, 2, 1, tzinfo=moscow)
    assert dicom_datetime(s, "2025", "1200") is None and dicom_datetime(s, "20251301", None) is None
    mis_date = datetime(2024, 12, 31, 9, 0, tzinfo=UTC)
    with get_sessionmaker()() as session:
        manual, _ = request_publication(session, s, _req("P-NO-DATE", "A-NO-DATE"))  # the dashboard's form
        from_mis, _ = request_publication(session, s, _req("P-DATE", "A-DATE", study_date=mis_date))
        copy_study_date(session, s, manual.id, "20250201", "161802")
        copy_study_date(session, s, from_mis.id, "20250201", "161802")
        copy_study_date(session, s, manual.id, "", None)  # an answer without a date changes nothing
        session.expire_all()
        assert get_task(session, manual.id).study_date == datetime(2025, 2, 1, 13, 18, 2, tzinfo=UTC)
        assert get_task(session, from_mis.id).study_date == mis_date
