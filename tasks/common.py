"""What every step shares: the retry policies and the task context (settings, session, work paths).

Two kinds of retry, each in one place here:
- an outage (the PACS or the storage unreachable) is ridden through inside the step: it says what it waits
  for on the publication, and tries again with backoff for up to ``runs.outage_patience_seconds``;
- anything else transient is retried by Prefect (the tasks' ``retries`` with :func:`retry_if_transient`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from studypub.clinics import ClinicContext, clinic_context
from studypub.db import get_sessionmaker
from studypub.errors import PacsUnavailable, StorageUnavailable, TransientError, is_retryable
from studypub.i18n import N_
from studypub.lifecycle import Waiting
from studypub.logs import details, get_logger
from studypub.models import Task, utcnow
from studypub.publications import get_task, local_time, note_waiting
from studypub.settings import Settings, get_settings
from studypub.spool import WorkPaths, check_abort, work_paths

log = get_logger("tasks")
T = TypeVar("T")


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient trouble, not a final verdict, nor an outage that
    :func:`ride_through` already waited out."""
    exc = state.result(raise_on_failure=False)
    outage = tuple(error for error, _, _ in OUTAGES.values())
    return isinstance(exc, BaseException) and is_retryable(exc) and not isinstance(exc, outage)


# Task results stay out of Prefect's storage: steps hand each other paths and keys through the work folder
# and the app database, and a result pickle could carry identifiers.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@dataclass
class StepContext:
    """What a step works with: its publication's clinic's effective settings (that clinic's PACS, storage
    periods, policies), a session, the task and its work folder. Resolved here, once per step."""

    settings: Settings
    session: Session
    task: Task
    paths: WorkPaths
    clinic: ClinicContext | None = None


@contextmanager
def step_context(task_id: str) -> Iterator[StepContext]:
    base = get_settings()
    session = get_sessionmaker(base)()  # the system's: a step works on whichever clinic's publication it is given
    try:
        task = get_task(session, task_id)
        clinic = clinic_context(session, base, task.clinic_code)  # its PACS, its settings
        yield StepContext(clinic.settings, session, task, work_paths(base.work_dir, task_id), clinic)
    finally:
        session.close()


# What is unreachable: its error, its name in the logs, what the publication says while it waits.
OUTAGES: dict[Waiting, tuple[type[TransientError], str, str]] = {
    Waiting.PACS: (PacsUnavailable, "the PACS", N_("waiting for the PACS, unreachable since %(time)s")),
    Waiting.STORAGE: (StorageUnavailable, "the storage", N_("waiting for the storage, unreachable since %(time)s")),
}
FIRST_DELAY, MAX_DELAY = 2.0, 30.0


def ride_through(ctx: StepContext, kind: Waiting, attempt: Callable[[], T]) -> T:
    """Run ``attempt``; while it fails because ``kind`` (the PACS, the storage) is unreachable, say so on
    the publication ("waiting for the PACS, unreachable since 14:02") and try again with backoff, for up to
    ``runs.outage_patience_seconds``; then raise the outage (the publication fails with the cause and is
    retried automatically later). Stops at once when the publication is aborted."""
    error, name, says = OUTAGES[kind]
    patience = ctx.settings.runs.outage_patience_seconds
    started: float | None = None
    delay = FIRST_DELAY
    while True:
        try:
            result = attempt()
        except error:
            now = time.monotonic()
            if started is None:
                started = now
                since = local_time(ctx.settings, utcnow())
                note_waiting(ctx.session, ctx.task.id, kind, says % {"time": since})
                log.warning(f"Waiting for {name}", extra=details(task_id=ctx.task.id))
            if now - started + delay > patience:
                raise
            deadline = now + delay
            while time.monotonic() < deadline:
                check_abort(ctx.paths)
                time.sleep(0.25)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if started is not None:
            note_waiting(ctx.session, ctx.task.id, None)
            log.info(f"{name.capitalize()} is reachable again", extra=details(task_id=ctx.task.id))
        return result
