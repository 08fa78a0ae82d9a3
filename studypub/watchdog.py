"""The worker's watchdog: every publication in a non-final state is progressing, or says why not, and
resumes by itself when it can.

One pass (every ``runs.watchdog_seconds``, in ``studypub worker``; idempotent and safe in several workers):
- runs that stopped renewing their lease (their worker was killed, the machine restarted) or made no progress
  for ``runs.stall_minutes``: their raw instances are removed, the dead Prefect run is marked Crashed, and the
  publication is queued again with "interrupted; resuming" (a new run resumes after its last finished step);
  after ``runs.max_resumes`` interruptions in a row it fails with a reason instead;
- publications whose next attempt is due (a study not yet in the PACS, a failure by an outage) get a new run;
- raw (identifiable) instances of publications that no live run holds are removed from the work folder.

Starting runs is the dispatcher's job (studypub.dispatch); this module only decides and records.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from studypub.logs import details, get_logger
from studypub.models import Task, TaskStatus, utcnow
from studypub.publications import interrupt, redispatch, requeue
from studypub.settings import Settings
from studypub.spool import work_paths

log = get_logger("watchdog")


@dataclass
class WatchReport:
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    raw_removed: int = 0
    dead_runs: list[str] = field(default_factory=list)  # flow-run ids to mark Crashed in Prefect

    def counts(self) -> dict[str, int]:
        return {
            "resumed": len(self.resumed),
            "failed": len(self.failed),
            "stalled": len(self.stalled),
            "redispatched": len(self.redispatched),
            "retried": len(self.retried),
            "raw_removed": self.raw_removed,
        }


def stop_stalled(session: Session, settings: Settings) -> list[str]:
    """Running publications under a live lease that recorded no progress for ``runs.stall_minutes``: their
    lease is ended here (their run, still renewing, finds it taken and stops), so the same pass resumes them."""
    cutoff = utcnow() - timedelta(minutes=settings.runs.stall_minutes)
    ids = list(session.scalars(select(Task.id).where(Task.status == TaskStatus.RUNNING, Task.progress_at < cutoff)))
    stalled = []
    for task_id in ids:
        result = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == TaskStatus.RUNNING, Task.progress_at < cutoff)
            .values(lease_until=None)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            stalled.append(task_id)
    session.commit()
    return stalled


def dead_runs(session: Session) -> list[str]:
    now = utcnow()
    return list(
        session.scalars(
            select(Task.id).where(
                Task.status == TaskStatus.RUNNING, or_(Task.lease_until.is_(None), Task.lease_until < now)
            )
        )
    )


def due_attempts(session: Session) -> list[tuple[str, str]]:
    """(task id, status) of publications whose next attempt is due and that no run is on its way to."""
    now = utcnow()
    rows = session.execute(
        select(Task.id, Task.status).where(
            Task.next_attempt_at <= now,
            or_(
                Task.status == TaskStatus.FAILED,
                and_(Task.status == TaskStatus.QUEUED, Task.dispatch_pending.is_(False)),
            ),
        )
    ).all()
    return [(r[0], r[1]) for r in rows]


def remove_stray_raw(session: Session, settings: Settings) -> int:
    """Remove the raw instances of publications that no run holds or is about to take over: finished, failed,
    expired, unknown, or waiting for a later attempt. (A dead run's are removed when it is resumed.)"""
    root = settings.work_dir / "tasks"
    if not root.is_dir():
        return 0
    with_raw = [e.name for e in os.scandir(root) if e.is_dir() and os.path.isdir(os.path.join(e.path, "raw"))]
    if not with_raw:
        return 0
    rows = session.execute(
        select(Task.id, Task.status, Task.dispatch_pending, Task.next_attempt_at).where(Task.id.in_(with_raw))
    ).all()
    keep = {
        r[0]
        for r in rows
        if r[1] == TaskStatus.RUNNING
        or (r[1] == TaskStatus.QUEUED and r[2])
        or (r[1] == TaskStatus.QUEUED and not r[3])
    }
    removed = 0
    for task_id in with_raw:
        if task_id not in keep:
            work_paths(settings.work_dir, task_id).remove_identifiable()
            removed += 1
    return removed


def watch(session: Session, settings: Settings) -> WatchReport:
    """One pass of the watchdog (see the module docstring)."""
    report = WatchReport()
    report.stalled = stop_stalled(session, settings)
    for task_id in dead_runs(session):
        paths = work_paths(settings.work_dir, task_id)
        paths.remove_identifiable()  # the dead run's raw instances; a resume retrieves again if it needs them
        outcome = interrupt(session, settings, task_id)
        if outcome is None:
            continue
        status, dead_run = outcome
        (report.resumed if status == TaskStatus.QUEUED else report.failed).append(task_id)
        if dead_run:
            report.dead_runs.append(dead_run)
    for task_id, status in due_attempts(session):
        if status == TaskStatus.FAILED:
            if requeue(session, task_id, actor="system", automatic=True):
                report.retried.append(task_id)
        elif redispatch(session, task_id):
            report.redispatched.append(task_id)
    report.raw_removed = remove_stray_raw(session, settings)
    return report


def mark_crashed(flow_run_ids: list[str], message: str) -> None:
    """Tell Prefect that these runs are dead (they stay Running for ever otherwise). Best effort."""
    if not flow_run_ids:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            try:
                run = client.read_flow_run(UUID(run_id))
                if run.state is None or not run.state.is_final():
                    client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)
            except Exception as exc:  # gone, or Prefect unreachable: nothing else depends on it
                log.warning("Could not mark a dead run Crashed", extra=details(error=type(exc).__name__))


class Watchdog:
    """The watchdog's thread in the worker; ``on_work`` is called when a pass queued runs to start."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, on_work: Callable[[], None]) -> None:
        self._sessions = sessions
        self._settings = settings
        self._on_work = on_work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run_once(self) -> WatchReport:
        with self._sessions() as session:  # its settings (leases, waits) are the instance's, not a clinic's
            report = watch(session, self._settings)
        counts = report.counts()
        if any(counts.values()):
            log.info("Watchdog pass", extra=details(**counts))
        if report.resumed or report.redispatched or report.retried:
            self._on_work()
        mark_crashed(report.dead_runs, "its worker stopped without finishing it (no lease renewal); resumed")
        return report

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception as exc:  # the database or Prefect is down: the next pass tries again
                log.warning("Watchdog pass failed", extra=details(error=type(exc).__name__))
            if self._stop.wait(self._settings.runs.watchdog_seconds):
                return
