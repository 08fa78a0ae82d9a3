"""Retention's plain functions (studypub.retention) on SQLite and PostgreSQL with local storage: deleting
expired archives, leaving live ones alone, concurrency, storage failures, work folders, Prefect's result
files, and the erasure of identifiers. The flow itself, S3 and Prefect are in tests/integration."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from studypub import retention as r
from studypub.db import get_sessionmaker
from studypub.errors import Gone
from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus, TaskStep, utcnow
from studypub.publications import audit, claim_for_deletion, extend, get_task
from studypub.settings import get_settings
from studypub.storage import LocalStorage, open_storage
from tests.support.api import Seeded, past, seed_publication


class CountingStorage:
    """The real storage, counting deletes per key; ``fail_keys`` make delete raise (storage trouble)."""

    def __init__(self, inner: Any, fail_keys: set[str] | None = None, delay: float = 0) -> None:
        self.inner = inner
        self.fail_keys = fail_keys or set()
        self.delay = delay
        self.deletes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def delete(self, key: str) -> None:
        if key in self.fail_keys:
            raise ConnectionError("storage unreachable")
        with self._lock:
            self.deletes[key] += 1
        time.sleep(self.delay)  # widen the window in which two runs could collide
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return bool(self.inner.exists(key))


def _storage() -> LocalStorage:
    storage = open_storage(get_settings())
    assert isinstance(storage, LocalStorage)
    return storage


def _task(task_id: str) -> Task:
    with get_sessionmaker()() as session:
        return get_task(session, task_id)


def _publication(task_id: str) -> PublishedStudy | None:
    with get_sessionmaker()() as session:
        return session.scalars(select(PublishedStudy).where(PublishedStudy.task_id == task_id)).first()


def _audit_actions(task_id: str) -> list[str]:
    with get_sessionmaker()() as session:
        return list(session.scalars(select(AuditEvent.action).where(AuditEvent.task_id == task_id)))


def _delete_expired(storage: Any, owner: str | None = None) -> r.DeletionOutcome:
    with get_sessionmaker()() as session:
        return r.delete_expired(session, storage, owner=owner)


def test_expired_archives_are_deleted_and_live_ones_kept(db_url: str) -> None:
    storage = _storage()
    expired = seed_publication(save_till=past(1))
    failed_expired = seed_publication(TaskStatus.FAILED, save_till=past(2))
    queued_expired = seed_publication(TaskStatus.QUEUED, save_till=past(2))
    live = seed_publication()
    running = seed_publication(TaskStatus.RUNNING, save_till=past(3))
    leftover = seed_publication()  # revoked, but its storage delete never happened
    with get_sessionmaker()() as session:
        assert claim_for_deletion(session, leftover.task_id, only_if_due=False)

    outcome = _delete_expired(storage)

    assert sorted(outcome.deleted) == sorted(s.task_id for s in (expired, failed_expired, queued_expired, leftover))
    assert outcome.failed == []
    for seeded in (expired, leftover):
        task = _task(seeded.task_id)
        assert task.status == TaskStatus.DELETED and task.deleted_at is not None
        assert task.lease_owner is None and task.lease_until is None
        pub = _publication(seeded.task_id)
        assert pub is not None and pub.deleted_at is not None
        assert not storage.exists(seeded.object_key)
        assert _audit_actions(seeded.task_id).count(r.DELETED_ACTION) == 1
    for seeded in (failed_expired, queued_expired):
        assert _task(seeded.task_id).status == TaskStatus.DELETED
        assert _publication(seeded.task_id) is None
    assert _task(live.task_id).status == TaskStatus.COMPLETED and storage.exists(live.object_key)
    assert _task(running.task_id).status == TaskStatus.RUNNING

    again = _delete_expired(storage)
    assert again.deleted == [] and again.failed == []


def test_two_runs_at_once_delete_and_count_each_publication_once(db_url: str) -> None:
    inner = _storage()
    seeded = [seed_publication(save_till=past(1)) for _ in range(6)]
    storage = CountingStorage(inner, delay=0.05)
    start = threading.Barrier(2)

    def run(i: int) -> r.DeletionOutcome:
        start.wait()
        return _delete_expired(storage, owner=f"run-{i}")

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(run, range(2)))

    deleted = [t for o in outcomes for t in o.deleted]
    assert sorted(deleted) == sorted(s.task_id for s in seeded)  # each once, by one run
    assert all(o.failed == [] for o in outcomes)
    assert storage.deletes == Counter({s.object_key: 1 for s in seeded})  # no archive deleted twice
    for s in seeded:
        assert _task(s.task_id).status == TaskStatus.DELETED
        assert _audit_actions(s.task_id).count(r.DELETED_ACTION) == 1


def test_a_publication_extended_before_the_claim_survives(db_url: str) -> None:
    storage = _storage()
    seeded = seed_publication(save_till=past(1))
    with get_sessionmaker()() as session:
        extend(session, get_settings(), seeded.task_id, utcnow() + timedelta(days=10), actor="test")

    assert _delete_expired(storage).deleted == []
    assert _task(seeded.task_id).status == TaskStatus.COMPLETED
    assert storage.exists(seeded.object_key)


def test_extension_racing_the_retention_never_leaves_a_live_link_without_its_archive(db_url: str) -> None:
    """Extensions and deletions at the same moment: each publication is either extended and kept, or deleted
    (and its extension refused with 410), never extended and deleted."""
    storage = _storage()
    seeded = [seed_publication(save_till=past(1)) for _ in range(8)]
    start = threading.Barrier(2)
    refused: set[str] = set()

    def extend_all() -> None:
        start.wait()
        for s in seeded:
            with get_sessionmaker()() as session:
                try:
                    extend(session, get_settings(), s.task_id, utcnow() + timedelta(days=10), actor="test")
                except Gone:
                    refused.add(s.task_id)

    def retention() -> r.DeletionOutcome:
        start.wait()
        return _delete_expired(storage)

    with ThreadPoolExecutor(2) as pool:
        extended = pool.submit(extend_all)
        outcome = pool.submit(retention).result()
        extended.result()

    for s in seeded:
        task = _task(s.task_id)
        if s.task_id in outcome.deleted:
            assert task.status == TaskStatus.DELETED and s.task_id in refused
            assert not storage.exists(s.object_key)
        else:
            assert task.status == TaskStatus.COMPLETED and s.task_id not in refused
            assert task.save_till > utcnow() and storage.exists(s.object_key)


def test_a_deletion_failure_does_not_stop_the_others_and_is_finished_next_time(db_url: str) -> None:
    inner = _storage()
    broken = seed_publication(save_till=past(2))
    fine = seed_publication(save_till=past(1))
    storage = CountingStorage(inner, fail_keys={broken.object_key})

    outcome = _delete_expired(storage)

    assert outcome.failed == [broken.task_id] and outcome.deleted == [fine.task_id]
    task = _task(broken.task_id)
    assert task.status == TaskStatus.EXPIRED and task.lease_owner is None  # the next run may take it at once
    assert inner.exists(broken.object_key)

    again = _delete_expired(inner)
    assert again.deleted == [broken.task_id] and again.failed == []
    assert _task(broken.task_id).status == TaskStatus.DELETED and not inner.exists(broken.object_key)


def test_a_lease_left_by_a_crashed_run_is_taken_over_once_it_expires(db_url: str) -> None:
    storage = _storage()
    seeded = seed_publication(save_till=past(1))
    with get_sessionmaker()() as session:
        assert claim_for_deletion(session, seeded.task_id, only_if_due=True)
        session.execute(
            update(Task)
            .where(Task.id == seeded.task_id)
            .values(lease_owner="crashed", lease_until=utcnow() + timedelta(minutes=5))
        )
        session.commit()
    outcome = _delete_expired(storage)
    assert outcome.deleted == [] and outcome.busy == [seeded.task_id]  # another run seems to be at it

    with get_sessionmaker()() as session:
        session.execute(update(Task).where(Task.id == seeded.task_id).values(lease_until=past(0.01)))
        session.commit()
    assert _delete_expired(storage).deleted == [seeded.task_id]


# Work folders -----------------------------------------------------------------------------------------


def _age(path: Path, hours: float) -> None:
    """Make everything under ``path`` look last touched ``hours`` ago."""
    stamp = time.time() - hours * 3600
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in (*filenames, *dirnames):
            os.utime(os.path.join(dirpath, name), (stamp, stamp), follow_symlinks=False)
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def _work_folder(work_dir: Path, name: str, hours: float) -> Path:
    folder = work_dir / "tasks" / name
    (folder / "clean").mkdir(parents=True)
    (folder / "clean" / "x.dcm").write_bytes(b"anonymised")
    (folder / "archive.zip").write_bytes(b"zip")
    _age(folder, hours)
    return folder


def test_old_work_folders_go_new_and_running_ones_stay(db_url: str, isolated_env: Path) -> None:
    work = isolated_env
    done_old = seed_publication()
    done_new = seed_publication()
    running_old = seed_publication(TaskStatus.RUNNING)
    failed_old = seed_publication(TaskStatus.FAILED)
    folders = {
        "done_old": _work_folder(work, done_old.task_id, 25),
        "done_new": _work_folder(work, done_new.task_id, 23),
        "running_old": _work_folder(work, running_old.task_id, 100),
        "failed_old": _work_folder(work, failed_old.task_id, 48),
        "orphan_old": _work_folder(work, "0b5c0e52-6a3e-4c6f-9d55-3b7b8a1f0c11", 30),
        "orphan_new": _work_folder(work, "2f7e6f3a-1a0b-4c8e-8f4c-6b0a7c9d2e33", 1),
        "leftover": _work_folder(work, f"{r.REMOVING_PREFIX}gone.1234", 0),  # an interrupted removal
    }
    touched = _work_folder(work, seed_publication().task_id, 30)
    (touched / "clean" / "new.dcm").write_bytes(b"just now")  # deep inside: the folder is in use

    with get_sessionmaker()() as session:
        outcome = r.clean_work_folders(session, work, max_age=timedelta(hours=24))

    assert sorted(outcome.removed) == sorted(
        [done_old.task_id, failed_old.task_id, "0b5c0e52-6a3e-4c6f-9d55-3b7b8a1f0c11"]
    )
    assert outcome.orphans == 1 and outcome.kept_running == 1
    for name in ("done_old", "failed_old", "orphan_old", "leftover"):
        assert not folders[name].exists(), name
    for name in ("done_new", "running_old", "orphan_new"):
        assert folders[name].exists(), name
    assert touched.exists()
    assert (work / "tasks").is_dir() and sorted(p.name for p in (work / "tasks").iterdir()) == sorted(
        [done_new.task_id, running_old.task_id, "2f7e6f3a-1a0b-4c8e-8f4c-6b0a7c9d2e33", touched.name]
    )


def test_work_folders_removed_by_two_runs_at_once_are_counted_once(db_url: str, isolated_env: Path) -> None:
    names = [seed_publication().task_id for _ in range(20)]
    for name in names:
        _work_folder(isolated_env, name, 30)
    start = threading.Barrier(2)

    def run(_: int) -> r.FolderOutcome:
        start.wait()
        with get_sessionmaker()() as session:
            return r.clean_work_folders(session, isolated_env, max_age=timedelta(hours=24))

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(run, range(2)))
    removed = [n for o in outcomes for n in o.removed]
    assert sorted(removed) == sorted(names)
    assert list((isolated_env / "tasks").iterdir()) == []


def test_no_work_dir_yet_is_nothing_to_do(db_url: str, tmp_path: Path) -> None:
    with get_sessionmaker()() as session:
        assert r.clean_work_folders(session, tmp_path / "none", max_age=timedelta(hours=1)).removed == []


# Prefect's result files -------------------------------------------------------------------------------


def _file(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"pickle")
    stamp = time.time() - days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_old_prefect_result_files_are_removed(tmp_path: Path, isolated_env: Path) -> None:
    root = tmp_path / "prefect-storage"
    old = [_file(root / "a1b2c3", 8), _file(root / "nested" / "d4e5f6", 30)]
    new = [_file(root / "0a0b0c", 6), _file(root / "kept" / "0d0e0f", 0)]

    assert r.clean_result_files(root, max_age=timedelta(days=7), work_dir=isolated_env) == 2

    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    assert not (root / "nested").exists() and root.is_dir()  # emptied folders go, the root stays
    assert r.clean_result_files(root, max_age=timedelta(days=7), work_dir=isolated_env) == 0
    assert r.clean_result_files(tmp_path / "missing", max_age=timedelta(days=7), work_dir=isolated_env) == 0


@pytest.mark.parametrize("where", ["home", "work_parent", "root"])
def test_a_misconfigured_result_path_is_not_emptied(where: str, tmp_path: Path, isolated_env: Path) -> None:
    roots: dict[str, Callable[[], Path]] = {
        "home": Path.home,
        "work_parent": lambda: isolated_env.parent,
        "root": lambda: Path("/"),
    }
    isolated_env.mkdir(parents=True, exist_ok=True)
    victim = _file(isolated_env / "studypub.db-like", 100)
    assert r.clean_result_files(roots[where](), max_age=timedelta(days=0), work_dir=isolated_env) == 0
    assert victim.exists()


def test_results_path_is_prefects_setting(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        assert r.prefect_results_path() == tmp_path / "results"


# Identifiers ------------------------------------------------------------------------------------------


def _deleted(days_ago: float, status: str = TaskStatus.COMPLETED) -> Seeded:
    """A publication deleted ``days_ago`` days ago, with an audit event that (wrongly) carries its PID."""
    seeded = seed_publication(status, save_till=past(days_ago + 1))
    with get_sessionmaker()() as session:
        task = get_task(session, seeded.task_id)
        audit(
            session,
            actor="system",
            action="link.viewed",
            task=task,
            details={"pid": task.patient_id, "note": f"acsn {task.accession_number}", "client": "mobile"},
        )
        session.commit()
    assert _delete_expired(_storage()).deleted == [seeded.task_id]
    with get_sessionmaker()() as session:
        session.execute(update(Task).where(Task.id == seeded.task_id).values(deleted_at=past(days_ago)))
        session.commit()
    return seeded


def test_identifiers_of_long_deleted_publications_are_erased(db_url: str) -> None:
    old = _deleted(31)
    old_never_published = _deleted(40, TaskStatus.FAILED)  # EXPIRED then DELETED, no PublishedStudy
    recent = _deleted(29)
    live = seed_publication()
    with get_sessionmaker()() as session:
        before = get_task(session, old.task_id)
        pid, acsn = before.patient_id, before.accession_number
        assert pid and acsn
        session.add(TaskStep(task_id=old.task_id, step="find", data={"study_instance_uid": "1.2.3.4"}))
        session.commit()

    with get_sessionmaker()() as session:
        erased = r.erase_identifiers(session, after=timedelta(days=30))

    assert sorted(erased) == sorted([old.task_id, old_never_published.task_id])
    for seeded in (old, old_never_published):
        task = _task(seeded.task_id)
        assert (task.patient_id, task.accession_number, task.emk_record_id) == (None, None, None)
        assert task.identifiers_erased_at is not None and task.status == TaskStatus.DELETED
        assert task.link_key == seeded.link_key  # the row stays: the link keeps answering 410
    with get_sessionmaker()() as session:
        assert session.scalars(select(TaskStep).where(TaskStep.task_id == old.task_id)).all() == []
        events = session.scalars(select(AuditEvent).where(AuditEvent.task_id == old.task_id)).all()
    actions = [e.action for e in events]
    assert {"publication.requested", "link.viewed", r.DELETED_ACTION, r.ERASED_ACTION} <= set(actions)
    assert actions.count(r.ERASED_ACTION) == 1
    viewed = next(e for e in events if e.action == "link.viewed")
    assert viewed.details == {"pid": r.ERASED, "note": r.ERASED, "client": "mobile"}  # the event, not the identity
    assert all(pid not in str(e.details) and acsn not in str(e.details) for e in events)

    for seeded in (recent, live):
        task = _task(seeded.task_id)
        assert task.patient_id and task.accession_number and task.identifiers_erased_at is None

    with get_sessionmaker()() as session:
        assert r.erase_identifiers(session, after=timedelta(days=30)) == []


def test_two_erasures_at_once_erase_and_record_each_once(db_url: str) -> None:
    seeded = [_deleted(31) for _ in range(5)]
    start = threading.Barrier(2)

    def run(_: int) -> list[str]:
        start.wait()
        with get_sessionmaker()() as session:
            return r.erase_identifiers(session, after=timedelta(days=30))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(2)))
    assert sorted(t for res in results for t in res) == sorted(s.task_id for s in seeded)
    for s in seeded:
        assert _audit_actions(s.task_id).count(r.ERASED_ACTION) == 1
