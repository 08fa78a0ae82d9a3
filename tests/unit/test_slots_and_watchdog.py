"""Retrieval slots leased in the app's database, and the worker's watchdog pass, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from studypub.db import get_sessionmaker
from studypub.models import SlotLease, Task, TaskStatus
from studypub.publications import PublicationRequest, claim, get_task, request_publication
from studypub.settings import get_settings
from studypub.slots import held_slot, in_use, release, try_acquire
from studypub.spool import work_paths
from studypub.watchdog import watch


def test_a_pool_admits_size_holders_and_a_dead_holders_slot_frees_itself(db_url: str) -> None:
    sessions = get_sessionmaker()
    with sessions() as session:
        assert try_acquire(session, "pacs:x", 2, "a", ttl=60) == 0
        assert try_acquire(session, "pacs:x", 2, "b", ttl=60) == 1
        assert try_acquire(session, "pacs:x", 2, "c", ttl=60) is None
        assert try_acquire(session, "pacs:y", 2, "c", ttl=60) == 0  # another PACS: its own slots
        assert try_acquire(session, "pacs:x", 2, "a", ttl=60) == 0  # the holder again: the same slot
        assert in_use(session, "pacs:x", 2) == 2
        # "b" died (a killed run, a Prefect restart): nobody renews its lease, and it runs out.
        session.execute(
            update(SlotLease)
            .where(SlotLease.holder == "b")
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
        assert in_use(session, "pacs:x", 2) == 1
        assert try_acquire(session, "pacs:x", 2, "c", ttl=60) == 1
        release(session, "pacs:x", 0, "a")
        assert try_acquire(session, "pacs:x", 2, "d", ttl=60) == 0


def test_held_slot_waits_says_so_renews_and_releases(db_url: str) -> None:
    sessions = get_sessionmaker()
    waits: list[int] = []
    with sessions() as session:
        assert try_acquire(session, "pacs:z", 1, "other", ttl=60) == 0

    def free_later() -> None:
        time.sleep(1.5)
        with sessions() as session:
            release(session, "pacs:z", 0, "other")

    threading.Thread(target=free_later).start()
    started = time.monotonic()
    with held_slot(sessions, "pacs:z", 1, "me", ttl=0.8, on_wait=waits.append) as slot:
        assert slot == 0 and waits == [1] and time.monotonic() - started >= 1.4
        time.sleep(1.2)  # longer than the lease: the holder renews it
        with sessions() as session:
            assert try_acquire(session, "pacs:z", 1, "intruder", ttl=60) is None
    with sessions() as session:
        assert in_use(session, "pacs:z", 1) == 0


def _publication(session, pid: str) -> Task:  # type: ignore[no-untyped-def]
    req = PublicationRequest(patient_id=pid, accession_number=f"A{pid}", clinic_code="default", source="mis")
    return request_publication(session, get_settings(), req)[0]


def _raw(task_id: str) -> None:
    paths = work_paths(get_settings().work_dir, task_id).create()
    (paths.raw / "x.dcm").write_bytes(b"identifiable")


def test_watchdog_resumes_dead_runs_and_cleans_their_raw_files(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        dead, alive, failed, due = (_publication(session, p) for p in ("D", "L", "F", "W"))
        for task in (dead, alive, failed):
            assert claim(session, task.id, f"run-{task.id}", lease_seconds=60)
            _raw(task.id)
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(Task).where(Task.id == dead.id).values(lease_until=past, flow_run_id="fr-dead"))
        session.execute(update(Task).where(Task.id == failed.id).values(status=TaskStatus.FAILED, lease_owner=None))
        session.execute(update(Task).where(Task.id == due.id).values(next_attempt_at=past, waiting_for="study"))
        session.commit()

        report = watch(session, s)

        assert report.resumed == [dead.id] and report.dead_runs == ["fr-dead"]
        assert report.redispatched == [due.id]
        session.expire_all()
        assert get_task(session, dead.id).waiting_for == "interrupted"
        assert get_task(session, due.id).dispatch_pending
        assert get_task(session, alive.id).status == TaskStatus.RUNNING  # a live run is left alone
        work = s.work_dir
        assert not work_paths(work, dead.id).raw.exists()
        assert not work_paths(work, failed.id).raw.exists()
        assert (work_paths(work, alive.id).raw / "x.dcm").exists()
        assert watch(session, s).counts() == dict.fromkeys(report.counts(), 0)  # idempotent


def test_watchdog_stops_a_stalled_run_and_resumes_it(db_url: str) -> None:
    s = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        task = _publication(session, "S")
        assert claim(session, task.id, "run", lease_seconds=600)
        long_ago = datetime.now(UTC) - timedelta(minutes=s.runs.stall_minutes + 1)
        session.execute(update(Task).where(Task.id == task.id).values(progress_at=long_ago))
        session.commit()
        report = watch(session, s)
        assert report.stalled == [task.id] and report.resumed == [task.id]
