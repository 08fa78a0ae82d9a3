"""The publication's lifecycle: one table of the status changes that may happen, and the one function every
status change goes through.

The statuses are the MIS contract (QUEUED, RUNNING, COMPLETED, FAILED, EXPIRED, DELETED) and do not change.
What a publication that is not progressing waits for is said beside them: ``waiting_for`` (a code from
:class:`Waiting`), ``waiting_since`` and ``reason`` in words. Each change is a conditional UPDATE (the row
must still be in one of the event's source statuses, plus the caller's own conditions), so two processes
racing for the same publication never both win; the caller learns whether it did.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from studypub.models import AuditEvent, Task, TaskStatus, utcnow

Q, R, C, F, X, D = (
    TaskStatus.QUEUED,
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.EXPIRED,
    TaskStatus.DELETED,
)


class Waiting(enum.StrEnum):
    """What a publication waits for (``tasks.waiting_for``)."""

    INTERRUPTED = "interrupted"  # its run died (worker killed, machine restarted): being resumed
    PACS = "pacs"  # the PACS is unreachable: the step retries with backoff
    STORAGE = "storage"  # the storage is unreachable: the upload retries with backoff
    STUDY = "study"  # the study is not (yet) in the PACS: looked for again later
    SLOT = "slot"  # every retrieval slot of its PACS is taken
    RETRY = "retry"  # failed by an outage or interruption: retried automatically later
    PREFECT = "prefect"  # its run cannot be started: Prefect is unreachable


class Event(enum.StrEnum):
    CLAIM = "claim"  # a run takes the publication
    COMPLETE = "complete"  # the link is ready
    FAIL = "fail"  # the run failed (or keeps being interrupted)
    FAIL_UNSTARTED = "fail_unstarted"  # its run ended or vanished before it started
    INTERRUPT = "interrupt"  # its run died: queued again, resumed by a new run
    WAIT = "wait"  # the run ends and the publication waits (a study not yet in the PACS)
    REDISPATCH = "redispatch"  # a waiting publication's time has come: a new run
    REQUEUE = "requeue"  # a failed or stuck publication is run again (by hand or automatically)
    REPUBLISH = "republish"  # a new archive of a published study, under the same link
    EXPIRE = "expire"  # past its storage period, or revoked: its archive is about to be deleted
    DELETE = "delete"  # the archive is gone; the link answers 410


@dataclass(frozen=True)
class Transition:
    sources: frozenset[str]
    target: str


TRANSITIONS: Mapping[Event, Transition] = {
    Event.CLAIM: Transition(frozenset({Q, F, R}), R),  # RUNNING only under an expired lease or the same owner
    Event.COMPLETE: Transition(frozenset({R}), C),
    Event.FAIL: Transition(frozenset({R}), F),
    Event.FAIL_UNSTARTED: Transition(frozenset({Q}), F),
    Event.INTERRUPT: Transition(frozenset({R}), Q),
    Event.WAIT: Transition(frozenset({R}), Q),
    Event.REDISPATCH: Transition(frozenset({Q}), Q),
    Event.REQUEUE: Transition(frozenset({F, R, Q}), Q),  # RUNNING / QUEUED only when stuck or waiting
    Event.REPUBLISH: Transition(frozenset({C}), Q),
    Event.EXPIRE: Transition(frozenset({Q, C, F}), X),
    Event.DELETE: Transition(frozenset({X}), D),
}

# The allowed status changes, as the table above makes them (what the dashboard and the docs describe).
ALLOWED: frozenset[tuple[str, str]] = frozenset((s, t.target) for t in TRANSITIONS.values() for s in t.sources)
FINAL = frozenset({D})


def can(event: Event, status: str) -> bool:
    return status in TRANSITIONS[event].sources


def move(
    session: Session,
    task_id: str,
    event: Event,
    *,
    where: Iterable[ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
    actor: str = "system",
    action: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> bool:
    """Apply ``event`` to the publication if it is in one of the event's source statuses and ``where`` holds.
    Sets the target status, ``updated_at`` and ``values``; records ``action`` in the audit trail when given.
    Does not commit. True when this call made the change."""
    transition = TRANSITIONS[event]
    now = utcnow()
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status.in_(transition.sources), *where)
        .values(status=transition.target, updated_at=now, **dict(values or {}))
        .execution_options(synchronize_session=False)
    )
    moved = bool(getattr(result, "rowcount", 0))
    loaded = session.identity_map.get(identity_key(Task, task_id))
    if moved and loaded is not None:
        session.expire(loaded)  # the row changed under the loaded object: read it again when next used
    if moved and action:
        clinic = session.scalar(select(Task.clinic_code).where(Task.id == task_id))
        session.add(
            AuditEvent(actor=actor, action=action, clinic_code=clinic, task_id=task_id, details=dict(details or {}))
        )
    return moved


def waiting(kind: Waiting, reason: str, *, since: Any = None) -> dict[str, Any]:
    """The columns that say a publication waits: what for, since when (kept while the same wait goes on)."""
    return {"waiting_for": kind.value, "waiting_since": utcnow() if since is None else since, "reason": reason}


NOT_WAITING: Mapping[str, Any] = {"waiting_for": None, "waiting_since": None}
