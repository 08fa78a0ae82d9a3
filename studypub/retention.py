"""Retention: what the ``retention`` flow does, as plain functions over a session, the storage and the file
system (no Prefect here).

- Publications whose storage period has passed are claimed (EXPIRED: from then on no run, extension or new
  request touches them), their archives deleted and they are marked DELETED (the link answers 410).
  Publications left EXPIRED (an interrupted run, a revocation or a run whose storage delete failed, a new
  request that made room) are finished the same way. A failure to delete one publication is counted and the
  others go on; it stays EXPIRED for the next run.
- Work folders (``<work_dir>/tasks/<task id>``) untouched for longer than the setting are removed, unless
  their publication is running; folders of no known publication too.
- Prefect's persisted results (files under ``PREFECT_LOCAL_STORAGE_PATH``) older than the setting are removed.
- After a further period, the PID, accession number and EMK id of deleted publications are erased, with the
  steps' records (the PACS's study UID) and any identifier in their audit events. The events stay.
- Storage is kept clean of what no publication needs: multipart uploads left pending by a killed process
  (their parts are kept, and billed, until aborted) and objects no publication references (a replaced archive
  whose removal was interrupted). Only what is older than a grace period goes, so an upload in progress or
  just finished is never touched, and never an object a publication row names.

Everything is idempotent and safe to run twice at once, and each item is counted by exactly one run: an
archive is deleted by the run holding a short deletion lease on its row and recorded by the one whose
EXPIRED → DELETED update succeeds; a folder is counted by the run whose atomic rename took it; a file by the
run whose unlink removed it; identifiers by the run whose update erased them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from studypub import publications
from studypub.errors import StudyPubError
from studypub.logs import details, get_logger
from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus, TaskStep, utcnow
from studypub.publications import ERASED_CONTACT, audit, claim_for_deletion, finish_deletion

log = get_logger("retention")

DELETION_LEASE_SECONDS = 600
ACTOR = "system"
DELETED_ACTION = "publication.deleted"
ERASED_ACTION = "publication.identifiers_erased"
ERASED = "[erased]"
IDENTIFIER_KEYS = frozenset({"pid", "acsn", "patient_id", "accession_number", "emk_record_id"})
REMOVING_PREFIX = ".removing-"  # a work folder taken for removal (renamed first, so one run owns it)
_IN_CHUNK = 500  # ids per IN (...) query


class RetentionIncomplete(StudyPubError):
    """Some of the run's work failed (a storage outage, a broken step); the rest was done. ``report`` holds
    the counts; what failed is retried by the next run."""

    code = "retention_incomplete"

    def __init__(self, reason: str, report: dict[str, Any]) -> None:
        super().__init__(reason)
        self.report = report


# Archives ---------------------------------------------------------------------------------------------


@dataclass
class DeletionOutcome:
    deleted: list[str] = field(default_factory=list)  # task ids this run deleted and recorded
    failed: list[str] = field(default_factory=list)  # task ids whose archive could not be deleted (stay EXPIRED)
    busy: list[str] = field(default_factory=list)  # task ids another run was deleting


def deletion_candidates(session: Session, *, now: datetime | None = None) -> list[str]:
    """Publications to delete: past their storage period and not running, or already claimed (EXPIRED)."""
    now = now or utcnow()
    due = and_(
        Task.status.in_([TaskStatus.QUEUED, TaskStatus.COMPLETED, TaskStatus.FAILED]),
        Task.save_till <= now,
    )
    ids = session.scalars(
        select(Task.id).where(or_(due, Task.status == TaskStatus.EXPIRED)).order_by(Task.save_till, Task.id)
    ).all()
    session.commit()
    return list(ids)


def _take_deletion_lease(session: Session, task_id: str, owner: str) -> bool:
    """Only one run at a time deletes a given archive: the one whose update set the lease. A lease left by a
    crashed run expires."""
    now = utcnow()
    result = session.execute(
        update(Task)
        .where(
            Task.id == task_id,
            Task.status == TaskStatus.EXPIRED,
            or_(Task.lease_until.is_(None), Task.lease_until < now, Task.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=DELETION_LEASE_SECONDS))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def _release_deletion_lease(session: Session, task_id: str, owner: str) -> None:
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def delete_publication(session: Session, storage: Any, task_id: str, *, owner: str) -> str:
    """Claim one publication if it is due (or take an EXPIRED one), delete its archive, mark it DELETED.

    Returns ``"deleted"`` (this call recorded the deletion), ``"skipped"`` (not due any more: extended,
    running, already deleted), ``"busy"`` (another run is deleting it). Storage errors propagate; the
    publication then stays EXPIRED.
    """
    if not claim_for_deletion(session, task_id, only_if_due=True):
        return "skipped"
    if not _take_deletion_lease(session, task_id, owner):
        status = session.scalar(select(Task.status).where(Task.id == task_id))
        session.commit()
        return "busy" if status == TaskStatus.EXPIRED else "skipped"
    try:
        done = finish_deletion(session, storage, task_id, actor=ACTOR, action=DELETED_ACTION)
    finally:
        session.rollback()  # a failed flush or delete leaves nothing half-done in this session
        _release_deletion_lease(session, task_id, owner)
    return "deleted" if done else "skipped"


def delete_expired(
    session: Session, storage: Any, *, owner: str | None = None, now: datetime | None = None
) -> DeletionOutcome:
    """Delete every due or EXPIRED publication's archive. One failure does not stop the others."""
    owner = owner or f"retention-{uuid.uuid4()}"
    outcome = DeletionOutcome()
    for task_id in deletion_candidates(session, now=now):
        try:
            result = delete_publication(session, storage, task_id, owner=owner)
        except Exception as exc:
            session.rollback()
            outcome.failed.append(task_id)
            log.warning(
                "Archive could not be deleted; the publication stays EXPIRED for the next run",
                extra=details(task_id=task_id, error=type(exc).__name__),
            )
            continue
        if result == "deleted":
            outcome.deleted.append(task_id)
            log.info("Archive deleted", extra=details(task_id=task_id, status=TaskStatus.DELETED))
        elif result == "busy":
            outcome.busy.append(task_id)
    return outcome


# Work folders -----------------------------------------------------------------------------------------


def _touched_since(path: Path, cutoff: float) -> bool:
    """Whether anything in the tree at ``path`` (itself included, links not followed) changed after
    ``cutoff`` (epoch seconds). Stops at the first such entry."""
    try:
        if path.lstat().st_mtime > cutoff:
            return True
    except FileNotFoundError:
        return False
    if path.is_symlink() or not path.is_dir():
        return False
    for dirpath, dirnames, filenames in os.walk(path, onerror=lambda _e: None):
        for name in (*dirnames, *filenames):
            try:
                if os.lstat(os.path.join(dirpath, name)).st_mtime > cutoff:
                    return True
            except FileNotFoundError:
                continue
    return False


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _statuses(session: Session, ids: Iterable[str]) -> dict[str, str]:
    ids = list(ids)
    found: dict[str, str] = {}
    for i in range(0, len(ids), _IN_CHUNK):
        rows = session.execute(select(Task.id, Task.status).where(Task.id.in_(ids[i : i + _IN_CHUNK]))).all()
        found.update({r[0]: r[1] for r in rows})
    session.commit()
    return found


@dataclass
class FolderOutcome:
    removed: list[str] = field(default_factory=list)  # task ids of removed folders
    orphans: int = 0  # removed entries of no known publication (counted in ``removed`` too)
    kept_running: int = 0


def clean_work_folders(
    session: Session, work_dir: Path, *, max_age: timedelta, now: float | None = None
) -> FolderOutcome:
    """Remove publications' work folders nothing touched for ``max_age``, unless the publication is running.
    Entries of no known publication (orphans) follow the same age rule."""
    root = work_dir / "tasks"
    outcome = FolderOutcome()
    if not root.is_dir():
        return outcome
    cutoff = (now if now is not None else time.time()) - max_age.total_seconds()
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:  # what an interrupted removal left behind
        if entry.name.startswith(REMOVING_PREFIX):
            _remove_tree(Path(entry.path))
    entries = [e for e in entries if not e.name.startswith(REMOVING_PREFIX)]
    statuses = _statuses(session, (e.name for e in entries))
    for entry in entries:
        status = statuses.get(entry.name)
        if status == TaskStatus.RUNNING:
            outcome.kept_running += 1
            continue
        path = Path(entry.path)
        if _touched_since(path, cutoff):
            continue
        # A run may have claimed the publication since the statuses were read: ask again just before.
        if _statuses(session, [entry.name]).get(entry.name) == TaskStatus.RUNNING:
            outcome.kept_running += 1
            continue
        taken = root / f"{REMOVING_PREFIX}{entry.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, taken)  # atomic: of two runs, one takes the folder (and counts it)
        except FileNotFoundError:
            continue
        _remove_tree(taken)
        outcome.removed.append(entry.name)
        if status is None:
            outcome.orphans += 1
    return outcome


# Prefect's persisted results --------------------------------------------------------------------------


def prefect_results_path() -> Path:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return Path(PREFECT_LOCAL_STORAGE_PATH.value()).expanduser()


def _unsafe_results_root(root: Path, work_dir: Path) -> str | None:
    """A misconfigured PREFECT_LOCAL_STORAGE_PATH must not make retention empty a home or the work dir."""
    resolved = root.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        return "it is a file-system root or the home folder"
    work = work_dir.resolve()
    if resolved == work or resolved in work.parents:
        return "it holds the service's work folder"
    return None


def clean_result_files(root: Path, *, max_age: timedelta, work_dir: Path, now: float | None = None) -> int:
    """Remove files under ``root`` (Prefect's result storage) older than ``max_age``, then empty folders.
    Returns how many files this call removed."""
    if not root.is_dir():
        return 0
    reason = _unsafe_results_root(root, work_dir)
    if reason:
        log.warning(f"Prefect's result storage is not cleaned: {reason}", extra=details(path=str(root)))
        return 0
    cutoff = (now if now is not None else time.time()) - max_age.total_seconds()
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, onerror=lambda _e: None):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if os.lstat(path).st_mtime > cutoff:
                    continue
                os.unlink(path)
            except FileNotFoundError:  # another run removed it
                continue
            removed += 1
        for name in dirnames:
            with contextlib.suppress(OSError):  # only empty folders go
                os.rmdir(os.path.join(dirpath, name))
    return removed


# Identifiers ------------------------------------------------------------------------------------------


def _scrub(value: Any, secrets: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: (ERASED if k in IDENTIFIER_KEYS else _scrub(v, secrets)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return ERASED
    return value


def erasure_candidates(session: Session, *, before: datetime) -> list[str]:
    """Deleted publications whose identifiers are still there although they were deleted before ``before``."""
    ids = session.scalars(
        select(Task.id)
        .where(
            Task.status == TaskStatus.DELETED,
            Task.identifiers_erased_at.is_(None),
            func.coalesce(Task.deleted_at, Task.updated_at) <= before,
        )
        .order_by(Task.id)
    ).all()
    session.commit()
    return list(ids)


def erase_task_identifiers(session: Session, task_id: str) -> bool:
    """Erase one deleted publication's identifiers. True for the call that erased them."""
    task = session.get(Task, task_id)
    if task is None or task.status != TaskStatus.DELETED or task.identifiers_erased_at is not None:
        session.rollback()
        return False
    secrets = {v for v in (task.patient_id, task.accession_number, task.emk_record_id) if v}
    now = utcnow()
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.DELETED, Task.identifiers_erased_at.is_(None))
        .values(
            patient_id=None,
            accession_number=None,
            emk_record_id=None,
            identifiers_erased_at=now,
            updated_at=now,
            **ERASED_CONTACT,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):  # another run erased them first
        session.rollback()
        return False
    # The steps' records hold the PACS's study UID, which leads back to the patient; a deleted
    # publication needs none of them.
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id).execution_options(synchronize_session=False))
    for event in session.scalars(select(AuditEvent).where(AuditEvent.task_id == task_id)):
        scrubbed = _scrub(event.details or {}, secrets)
        if scrubbed != event.details:
            event.details = scrubbed
    session.expire(task)
    audit(session, actor=ACTOR, action=ERASED_ACTION, task=task)
    session.commit()
    return True


def erase_identifiers(session: Session, *, after: timedelta, now: datetime | None = None) -> list[str]:
    """Erase the identifiers of publications deleted more than ``after`` ago. Returns the task ids erased."""
    before = (now or utcnow()) - after
    erased: list[str] = []
    for task_id in erasure_candidates(session, before=before):
        if erase_task_identifiers(session, task_id):
            erased.append(task_id)
            log.info("Identifiers erased", extra=details(task_id=task_id))
    return erased


# Storage hygiene --------------------------------------------------------------------------------------

ARCHIVES_PREFIX = "archives/"  # under the storage prefix: where publications' objects go (new_object_key)
# Pending uploads and unreferenced objects younger than this are left alone: an upload in progress, or one
# that finished a moment ago. Longer than any upload takes (a 20 GB archive at 10 Mbit/s: about 4.5 h).
STORAGE_GRACE = timedelta(hours=6)


@dataclass
class StorageOutcome:
    uploads_aborted: int = 0  # pending uploads this run aborted
    orphans_deleted: int = 0  # unreferenced objects this run deleted
    kept_running: int = 0  # old pending uploads of a running publication (a slow upload), left alone


def _running_keys(session: Session) -> set[str]:
    keys = session.scalars(
        select(Task.object_key).where(Task.status == TaskStatus.RUNNING, Task.object_key.is_not(None))
    ).all()
    session.commit()
    return {k for k in keys if k}


def referenced_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` that a publication names: its object (``tasks.object_key``, whatever its status),
    its published archive, or the archive a republication replaces."""
    wanted = set(keys)
    found: set[str] = set()
    ordered = sorted(wanted)
    for i in range(0, len(ordered), _IN_CHUNK):
        chunk = ordered[i : i + _IN_CHUNK]
        found.update(k for k in session.scalars(select(Task.object_key).where(Task.object_key.in_(chunk))) if k)
        found.update(session.scalars(select(PublishedStudy.object_key).where(PublishedStudy.object_key.in_(chunk))))
    if wanted - found:  # few rows: republications under way
        for data in session.scalars(select(TaskStep.data).where(TaskStep.step == publications.REPLACES)):
            key = (data or {}).get("object_key")
            if key in wanted:
                found.add(key)
    session.commit()
    return found


def clean_storage(
    session: Session, storage: Any, *, max_age: timedelta = STORAGE_GRACE, now: datetime | None = None
) -> StorageOutcome:
    """Abort pending uploads older than ``max_age`` under ``archives/`` (unless their publication is running:
    a slow upload), then delete the objects there older than ``max_age`` that no publication references.

    Safe to run twice at once and next to uploads: only what the listing showed old is touched, a pending
    upload by its upload id (an attempt started since has another), and each object is checked against the
    database once more just before it is deleted (keys are random and fixed before an upload starts, so an
    object in storage is referenced before it exists). An upload is counted by the run that aborted it; on S3
    an object deleted by two overlapping runs may be counted by both (S3 does not say whether it was there).
    Storage errors propagate (``StorageUnavailable``; ``ConfigurationError`` when the access key may not list
    or abort uploads); what is left is done by the next run."""
    cutoff = (now or utcnow()) - max_age
    outcome = StorageOutcome()

    old_uploads = [u for u in storage.pending_uploads(ARCHIVES_PREFIX) if u.started <= cutoff]
    running = _running_keys(session) if old_uploads else set()
    for upload in old_uploads:
        if upload.key in running:
            outcome.kept_running += 1
        elif storage.abort_upload(upload):
            outcome.uploads_aborted += 1

    old_objects = [o for o in storage.stored_objects(ARCHIVES_PREFIX) if o.modified <= cutoff]
    referenced = referenced_keys(session, (o.key for o in old_objects))
    for obj in old_objects:
        if obj.key in referenced or referenced_keys(session, [obj.key]):
            continue
        if storage.delete(obj.key):
            outcome.orphans_deleted += 1

    if outcome.uploads_aborted or outcome.orphans_deleted or outcome.kept_running:
        log.info(
            "Storage cleaned",
            extra=details(
                uploads_aborted=outcome.uploads_aborted,
                orphans_deleted=outcome.orphans_deleted,
                kept_running=outcome.kept_running,
            ),
        )
    return outcome
