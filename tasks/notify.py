"""Sending the outbox from Prefect: right after a publication completes (its own messages, a first attempt at
once), and in the ``notify`` deployment's passes (every due message, retries with backoff, results never
recorded turned "unknown"). The task's only parameter is the task id (or none): no contact ever reaches
Prefect, and a failure here never fails the publication."""

from __future__ import annotations

from prefect import task

from studypub.db import get_sessionmaker
from studypub.logs import details, get_logger
from studypub.notify.outbox import deliver_due
from studypub.settings import get_settings
from tasks.common import TASK_DEFAULTS

log = get_logger("tasks.notify")


@task(name="notify", retries=0, **TASK_DEFAULTS)
def notify(task_id: str | None = None) -> dict[str, int]:
    """Send the due messages (of one publication, or all). Returns counts only."""
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        counts = deliver_due(session, settings, task_id=task_id).counts()
    if any(counts.values()):
        log.info("Messages", extra=details(task_id=task_id, **counts))
    return counts
