"""The publication lifecycle in the app's database: record a request (idempotently), claim it for a run,
record step checkpoints and progress, fail it with a readable reason, complete it.

Used by the CLI and the API (which record requests) and by the flow's tasks (which advance them). No Prefect
here: plain functions over a SQLAlchemy session.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studypub.errors import Conflict, Gone, NotFound, PublicationError, StudyPubError, ValidationError
from studypub.i18n import N_
from studypub.lifecycle import NOT_WAITING, Event, Waiting, move, waiting
from studypub.models import (
    ACTIVE_STATUSES,
    STEP_ORDER,
    AuditEvent,
    PublishedStudy,
    Step,
    Task,
    TaskStatus,
    TaskStep,
    utcnow,
)
from studypub.settings import Settings
from studypub.viewer.index import forget_task_indexes

MAX_IDENTIFIER_LENGTH = 64
# What a deleted publication keeps none of: the patient's contact and the hash of the link's second factor.
ERASED_CONTACT: dict[str, Any] = {"patient_email": None, "patient_phone": None, "factor_hash": None}


@dataclass(frozen=True)
class PublicationRequest:
    patient_id: str
    accession_number: str
    clinic_code: str
    source: str  # mis | manual | cli
    save_till: datetime | None = None
    emk_record_id: str | None = None
    service_code: str | None = None
    service_title: str | None = None
    study_date: datetime | None = None
    dispatch: bool = False  # hand the run to Prefect through the dispatcher (API, dashboard)
    # The patient's contact (checked by studypub.contacts) and the link's second factor.
    patient_email: str | None = None
    patient_phone: str | None = None
    notify_language: str | None = None
    second_factor: str | None = None  # none | pin | birth_date; None: the clinic's setting
    patient_birth_date: str | None = None  # YYYY-MM-DD; only its hash is kept


def link_url(settings: Settings, link_key: str) -> str:
    return f"{settings.links.public_base_url.rstrip('/')}/s/{link_key}"


def new_link_key(settings: Settings) -> str:
    return secrets.token_urlsafe(settings.links.key_bytes)


def new_object_key() -> str:
    return f"archives/{secrets.token_hex(16)}.zip"


def identifier_problem(value: str) -> str | None:
    """What is wrong with a PID or accession number (``required``, ``too_long``, ``bad_characters``), or None."""
    value = (value or "").strip()
    if not value:
        return "required"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return "too_long"
    if any(ord(c) < 32 or c in "\\*?" for c in value):
        return "bad_characters"
    return None


def _validate_identifier(name: str, value: str) -> str:
    problem = identifier_problem(value)
    if problem == "required":
        raise ValidationError(N_("%(field)s is required", field=name), field=name)
    if problem == "too_long":
        raise ValidationError(
            N_("%(field)s is longer than %(max)s characters", field=name, max=MAX_IDENTIFIER_LENGTH), field=name
        )
    if problem:
        raise ValidationError(
            N_("%(field)s contains characters that DICOM queries cannot carry", field=name), field=name
        )
    return value.strip()


SAVE_TILL = "save_till_date"  # the field of the MIS's request


def resolve_save_till(settings: Settings, save_till: datetime | None, *, now: datetime | None = None) -> datetime:
    now = now or utcnow()
    if save_till is None:
        return now + timedelta(days=settings.links.default_retention_days)
    if save_till.tzinfo is None:
        raise ValidationError(
            N_("save_till_date needs a UTC offset (ISO 8601, e.g. 2025-03-01T00:00:00+03:00)"), field=SAVE_TILL
        )
    if save_till <= now:
        raise ValidationError(N_("save_till_date is in the past"), field=SAVE_TILL)
    if save_till > now + timedelta(days=settings.links.max_retention_days):
        raise ValidationError(
            N_(
                "save_till_date is beyond the maximum retention of %(days)s days",
                days=settings.links.max_retention_days,
            ),
            field=SAVE_TILL,
        )
    return save_till


def find_active(session: Session, clinic_code: str, patient_id: str, accession_number: str) -> Task | None:
    return session.scalars(
        select(Task).where(
            Task.clinic_code == clinic_code,
            Task.patient_id == patient_id,
            Task.accession_number == accession_number,
            Task.status.in_(ACTIVE_STATUSES),
        )
    ).first()


def request_publication(
    session: Session, settings: Settings, req: PublicationRequest, *, actor: str | None = None
) -> tuple[Task, bool]:
    """Record a request, or return the live publication of the same study. Returns (task, created).

    Concurrent identical requests produce one row: the partial unique index decides the race. The clinic
    must be known (any spelling of its code); ``settings`` are the clinic's.
    """
    from studypub.clinics import require_clinic
    from studypub.contacts import birth_date_text, contact
    from studypub.factor import choose_kind, hash_answer

    clinic = require_clinic(session, req.clinic_code).code
    pid = _validate_identifier("patient_id", req.patient_id)
    acsn = _validate_identifier("accession_number", req.accession_number)
    save_till = resolve_save_till(settings, req.save_till)
    reach = contact(req.patient_email, req.patient_phone, req.notify_language)
    factor = choose_kind(settings, req.second_factor)
    birth_date = birth_date_text(req.patient_birth_date)
    if req.patient_birth_date and birth_date is None:
        raise ValidationError(N_("%(field)s must be a date (YYYY-MM-DD)", field="patient_birth_date"))
    existing = find_active(session, clinic, pid, acsn)
    if existing is not None and not _expire_if_due(session, existing):
        return existing, False
    task = Task(
        id=str(uuid.uuid4()),
        clinic_code=clinic,
        patient_id=pid,
        accession_number=acsn,
        emk_record_id=req.emk_record_id,
        service_code=req.service_code,
        service_title=req.service_title,
        study_date=req.study_date,
        save_till=save_till,
        source=req.source,
        status=TaskStatus.QUEUED,
        step=Step.FIND,
        link_key=new_link_key(settings),
        uid_salt=secrets.token_hex(16),
        object_key=new_object_key(),
        attempts=0,
        dispatch_pending=req.dispatch,
        requeues=0,
        steps=[],  # known empty: reading them (the answer's view) costs no query
        publication=None,
        patient_email=reach.email,
        patient_phone=reach.phone,
        notify_language=reach.language,
        second_factor=factor,
        factor_hash=hash_answer(birth_date) if factor == "birth_date" and birth_date else None,
        factor_failures=0,
    )
    session.add(task)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        existing = find_active(session, clinic, pid, acsn)
        if existing is None:
            raise
        return existing, False
    audit(session, actor=actor or req.source, action="publication.requested", task=task)
    session.commit()
    return task, True


def _expire_if_due(session: Session, task: Task) -> bool:
    """A live publication past its storage period makes room for a new one: it becomes EXPIRED (the
    retention flow deletes its archive). A running one is left alone. True when it was expired here."""
    now = utcnow()
    if task.save_till > now or task.status == TaskStatus.RUNNING:
        return False
    move(
        session,
        task.id,
        Event.EXPIRE,
        where=[Task.save_till <= now],
        values={"dispatch_pending": False, **NOT_WAITING, "next_attempt_at": None},
        action="publication.expired",
    )
    session.commit()
    session.expire(task)
    return True


def stuck_or_failed(now: datetime) -> Any:
    """The publications a Retry may take: failed; running under a lease nobody renews (its run died); queued
    and waiting with no run on the way (a late study, a scheduled automatic retry)."""
    return or_(
        Task.status == TaskStatus.FAILED,
        and_(Task.status == TaskStatus.RUNNING, or_(Task.lease_until.is_(None), Task.lease_until < now)),
        and_(Task.status == TaskStatus.QUEUED, Task.dispatch_pending.is_(False), Task.next_attempt_at.is_not(None)),
    )


def can_retry(row: Any, now: datetime | None = None) -> bool:
    """The same rule as :func:`stuck_or_failed`, for a loaded row (what the dashboard offers a Retry on)."""
    now = now or utcnow()
    if row.status == TaskStatus.FAILED:
        return True
    if row.status == TaskStatus.RUNNING:
        return row.lease_until is None or row.lease_until < now
    return row.status == TaskStatus.QUEUED and not row.dispatch_pending and row.next_attempt_at is not None


def requeue(session: Session, task_id: str, *, actor: str, automatic: bool = False) -> bool:
    """Ask for a new run of a failed, stuck or waiting publication (same task, same link); the dispatcher
    starts it and it resumes after the last finished step. False when another run is on it (or another
    request got there first). A Retry by hand starts the count of automatic resumes and retries afresh."""
    now = utcnow()
    fresh = {} if automatic else {"resumes": 0, "first_failed_at": None}
    done = move(
        session,
        task_id,
        Event.REQUEUE,
        where=[stuck_or_failed(now)],
        values={
            "dispatch_pending": True,
            "requeues": Task.requeues + 1,
            "flow_run_id": None,
            "lease_owner": None,
            "lease_until": None,
            "reason": None,
            "error_code": None,
            "next_attempt_at": None,
            **NOT_WAITING,
            **fresh,
        },
        actor=actor,
        action="publication.requeued",
        details={"automatic": True} if automatic else None,
    )
    session.commit()
    return done


REPLACES = "replaces"  # a task_steps row of a republication: the archive the new one replaces


def republish(session: Session, task_id: str, *, actor: str) -> Task:
    """Build a new archive of a published study under the same link (images reached the PACS after it was
    published). The run starts from the beginning into a new object; the link step removes the old object
    once the new one is in place. The link says "being prepared" meanwhile."""
    task = get_task(session, task_id)
    if task.status != TaskStatus.COMPLETED:
        raise Conflict(N_("only a published study can be published again"))
    old_key = task.object_key
    moved = move(
        session,
        task_id,
        Event.REPUBLISH,
        values={
            "step": Step.FIND,
            "dispatch_pending": True,
            "requeues": Task.requeues + 1,
            "object_key": new_object_key(),
            "flow_run_id": None,
            "reason": None,
            "error_code": None,
            "progress_received": None,
            "progress_expected": None,
            "resumes": 0,
            "first_failed_at": None,
        },
    )
    if not moved:
        session.rollback()
        raise Conflict(N_("the publication changed meanwhile; reload and try again"))
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id))
    session.add(TaskStep(task_id=task_id, step=REPLACES, data={"object_key": old_key}))
    audit(session, actor=actor, action="publication.republished", task=task)
    session.commit()
    session.expire(task)
    return task


def replaced_object(session: Session, task_id: str) -> str | None:
    """The object a republication replaces, while it has not been removed."""
    data = session.scalars(select(TaskStep.data).where(TaskStep.task_id == task_id, TaskStep.step == REPLACES)).first()
    return (data or {}).get("object_key")


def forget_replaced(session: Session, task_id: str) -> None:
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id, TaskStep.step == REPLACES))
    session.commit()


def pending_dispatch(session: Session, limit: int = 100) -> list[tuple[str, int]]:
    """Recorded requests whose run has not been handed to Prefect yet: (task id, requeue count), oldest first."""
    rows = session.execute(
        select(Task.id, Task.requeues)
        .where(Task.dispatch_pending.is_(True), Task.status == TaskStatus.QUEUED)
        .order_by(Task.created_at)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


def mark_dispatched(session: Session, task_id: str, requeues: int, flow_run_id: str) -> None:
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.requeues == requeues, Task.dispatch_pending.is_(True))
        .values(dispatch_pending=False, flow_run_id=flow_run_id)
        .execution_options(synchronize_session=False)
    )
    # A wait for Prefect is over; other waits (an interrupted run being resumed) go on being said.
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.waiting_for == Waiting.PREFECT.value)
        .values(reason=None, **NOT_WAITING)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def queued_runs(session: Session, limit: int = 200) -> list[tuple[str, str]]:
    """Publications handed to Prefect whose run has not claimed them yet: (task id, flow run id)."""
    rows = session.execute(
        select(Task.id, Task.flow_run_id)
        .where(Task.status == TaskStatus.QUEUED, Task.dispatch_pending.is_(False), Task.flow_run_id.is_not(None))
        .order_by(Task.created_at)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


def fail_unstarted(session: Session, task_id: str, flow_run_id: str | None, reason: str) -> bool:
    """A queued publication whose Prefect run ended (or vanished) before it started becomes FAILED with the
    reason, so it is visible and the same request (or a Retry in Prefect) runs it again."""
    done = move(
        session,
        task_id,
        Event.FAIL_UNSTARTED,
        where=[Task.flow_run_id == flow_run_id, Task.dispatch_pending.is_(False)],
        values={
            "reason": N_("%(step)s: %(reason)s", step="start", reason=reason),
            "error_code": "run_not_started",
            "next_attempt_at": None,
            **NOT_WAITING,
        },
        action="publication.failed",
        details={"error_code": "run_not_started"},
    )
    session.commit()
    return done


def _resumed(step: str) -> dict[str, Any]:
    """The values of a publication whose run died (running, or before it started): a new run is asked for,
    counted among the resumes in a row, and the publication says it is resuming."""
    return {
        "dispatch_pending": True,
        "requeues": Task.requeues + 1,
        "resumes": Task.resumes + 1,
        "flow_run_id": None,
        "next_attempt_at": None,
        **waiting(
            Waiting.INTERRUPTED, N_("%(step)s: interrupted (the run stopped without finishing); resuming", step=step)
        ),
    }


def restart_unstarted(session: Session, task_id: str, flow_run_id: str, max_resumes: int) -> bool:
    """A queued publication whose run crashed or failed before it started (its worker died while the run was
    starting) gets a new run, like an interrupted one, counted in the same resumes. False when it has had
    ``max_resumes`` in a row (then :func:`fail_unstarted` says why) or another process got there first."""
    done = move(
        session,
        task_id,
        Event.REDISPATCH,
        where=[Task.flow_run_id == flow_run_id, Task.dispatch_pending.is_(False), Task.resumes < max_resumes],
        values=_resumed("start"),
        action="publication.interrupted",
        details={"unstarted": True},
    )
    session.commit()
    return done


def note_dispatch_problem(session: Session, task_ids: list[str], reason: str) -> None:
    """Say on the waiting requests why their run has not started (Prefect unreachable...)."""
    session.execute(
        update(Task)
        .where(
            Task.id.in_(task_ids),
            Task.dispatch_pending.is_(True),
            Task.status == TaskStatus.QUEUED,
            or_(Task.waiting_for.is_(None), Task.waiting_for == Waiting.PREFECT.value),
        )
        .values(**waiting(Waiting.PREFECT, reason, since=func.coalesce(Task.waiting_since, utcnow())))
        .execution_options(synchronize_session=False)
    )
    session.commit()


def get_task(session: Session, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(N_("no such task"))
    return task


def claim(session: Session, task_id: str, owner: str, *, lease_seconds: float) -> bool:
    """Take the publication for a run: it must be queued, failed, or running under an expired lease (a dead
    run) or under this same owner (a retry of the same flow run). False when another live run holds it."""
    now = utcnow()
    moved = move(
        session,
        task_id,
        Event.CLAIM,
        where=[
            or_(
                Task.status.in_([TaskStatus.QUEUED, TaskStatus.FAILED]),
                or_(Task.lease_until.is_(None), Task.lease_until < now, Task.lease_owner == owner),
            )
        ],
        values={
            "lease_owner": owner,
            "lease_until": now + timedelta(seconds=lease_seconds),
            "attempts": Task.attempts + 1,
            "started_at": now,
            "progress_at": now,
            "finished_at": None,
            "next_attempt_at": None,
            "error_code": None,
            "reason": None,
            **NOT_WAITING,
        },
    )
    session.commit()
    return moved


def renew_lease(session: Session, task_id: str, owner: str, *, lease_seconds: float) -> bool:
    """Extend the run's lease. False when the run no longer holds the publication (the watchdog gave it to
    another run after this one stopped renewing): the caller must stop at once."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_owner == owner, Task.status == TaskStatus.RUNNING)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def release_lease(session: Session, task_id: str, owner: str) -> None:
    """End a run's lease now (its process died): the watchdog resumes the publication at its next pass."""
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_owner == owner, Task.status == TaskStatus.RUNNING)
        .values(lease_until=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def note_waiting(
    session: Session, task_id: str, kind: Waiting | None, reason: str | None = None, *, ended: Waiting | None = None
) -> None:
    """Say what a running publication waits for (the PACS, the storage, a slot), or (``kind`` None) that it no
    longer waits: for anything, or only for ``ended``. The status stays RUNNING: the run is alive and goes on."""
    if kind is None:
        values: dict[str, Any] = {"reason": None, **NOT_WAITING}
        cond = [Task.waiting_for.is_not(None) if ended is None else Task.waiting_for == ended.value]
    else:
        values = waiting(kind, reason or kind.value)
        same = session.scalar(select(Task.waiting_for).where(Task.id == task_id)) == kind.value
        if same:  # the same wait goes on: keep since when
            values.pop("waiting_since")
        cond = []
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.RUNNING, *cond)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def set_flow_run(session: Session, task_id: str, flow_run_id: str | None) -> None:
    session.execute(update(Task).where(Task.id == task_id).values(flow_run_id=flow_run_id))
    session.commit()


def _next_step(done: set[str]) -> str:
    for step in STEP_ORDER:
        if step.value not in done:
            return step.value
    return Step.LINK.value


def _refresh_step(session: Session, task_id: str) -> None:
    done = set(session.scalars(select(TaskStep.step).where(TaskStep.task_id == task_id)))
    now = utcnow()
    session.execute(
        update(Task).where(Task.id == task_id).values(step=_next_step(done), updated_at=now, progress_at=now)
    )


def save_checkpoint(session: Session, task_id: str, step: Step, data: dict[str, Any]) -> None:
    """Record what a finished step produced; ``step`` becomes the first unfinished one."""
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id, TaskStep.step == step.value))
    session.add(TaskStep(task_id=task_id, step=step.value, data=data))
    session.flush()
    _refresh_step(session, task_id)
    session.commit()


def dicom_datetime(settings: Settings, date_text: str | None, time_text: str | None = None) -> datetime | None:
    """A DICOM DA (YYYYMMDD) and TM (HHMMSS.FFFFFF, any prefix of it) as a time in the clinic's zone (the
    PACS writes local times); None when the date is missing or not a date."""
    from zoneinfo import ZoneInfo

    day = (date_text or "").strip()
    if len(day) != 8 or not day.isdigit():
        return None
    clock = "".join(ch for ch in (time_text or "").split(".")[0].strip() if ch.isdigit())[:6]
    clock = (clock + "000000")[:6] if len(clock) in (2, 4, 6) else "000000"
    try:
        naive = datetime.strptime(day + clock, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return naive.replace(tzinfo=ZoneInfo(settings.links.time_zone))


def copy_study_date(
    session: Session, settings: Settings, task_id: str, date_text: str | None, time_text: str | None
) -> None:
    """The PACS's StudyDate (and StudyTime) become the publication's study date when the request gave none
    (the MIS's date, when it sent one, is kept)."""
    when = dicom_datetime(settings, date_text, time_text)
    if when is None:
        return
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.study_date.is_(None))
        .values(study_date=when)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def drop_checkpoints(session: Session, task_id: str, steps: list[Step]) -> None:
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id, TaskStep.step.in_([s.value for s in steps])))
    _refresh_step(session, task_id)
    session.commit()


def set_progress(session: Session, task_id: str, received: int | None, expected: int | None) -> None:
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(progress_received=received, progress_expected=expected, progress_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


# Failures an automatic retry can cure: outages, interruptions, a PACS that sent too little under load.
AUTO_RETRY_CODES = frozenset(
    {
        "pacs_unavailable",
        "storage_unavailable",
        "database_unavailable",
        "unavailable",
        "incomplete_retrieval",
        "crashed",
    }
)


def failure_reason(exc: BaseException) -> tuple[str, str]:
    """(reason in words, code). Unknown errors are named by type only: their text may carry DICOM contents."""
    if isinstance(exc, StudyPubError):
        return exc.reason, exc.code
    if type(exc).__name__ == "TerminationSignal":  # Prefect stops a run it cancelled with this signal
        return N_("the run was cancelled in Prefect"), "cancelled"
    return N_(
        "Unexpected error (%(error)s); operators: see the Prefect run", error=type(exc).__name__
    ), "internal_error"


def local_time(settings: Settings, when: datetime) -> str:
    from zoneinfo import ZoneInfo

    return when.astimezone(ZoneInfo(settings.links.time_zone)).strftime("%H:%M")


def fail(session: Session, settings: Settings, task_id: str, exc: BaseException, *, owner: str | None = None) -> Task:
    """Mark a running publication FAILED with a reason a registrator can read. A failure an automatic retry
    can cure (an outage, an interruption) is retried on the settings' schedule for a while, and says when.
    With ``owner``, only while that run still holds it (a run that lost its lease changes nothing)."""
    task = get_task(session, task_id)
    reason, code = failure_reason(exc)
    step = getattr(exc, "failed_step", None) or task.step or "start"  # the pipeline names the step that raised
    now = utcnow()
    first = task.first_failed_at or now
    values: dict[str, Any] = {
        "step": step,
        "reason": N_("%(step)s: %(reason)s", step=step, reason=reason),
        "error_code": code,
        "finished_at": now,
        "lease_owner": None,
        "lease_until": None,
        "next_attempt_at": None,
        "first_failed_at": first,
        **NOT_WAITING,
    }
    runs = settings.runs
    if code in AUTO_RETRY_CODES and now - first < timedelta(hours=runs.auto_retry_hours):
        at = now + timedelta(minutes=runs.auto_retry_minutes)
        values.update(
            next_attempt_at=at,
            **waiting(
                Waiting.RETRY,
                N_(
                    "%(reason)s; tried again automatically at %(time)s",
                    reason=N_("%(step)s: %(reason)s", step=step, reason=reason),
                    time=local_time(settings, at),
                ),
            ),
        )
    move(
        session,
        task_id,
        Event.FAIL,
        where=[Task.lease_owner == owner] if owner else [],
        values=values,
        action="publication.failed",
        details={"error_code": code},
    )
    session.commit()
    session.expire(task)
    return get_task(session, task_id)


def complete(
    session: Session,
    settings: Settings,
    task_id: str,
    *,
    archive: dict[str, Any],
    profile_version: str,
    owner: str | None = None,
) -> PublishedStudy:
    """The link step: the archive is in storage; record the publication and mark it COMPLETED (only while
    this run holds it, with ``owner``)."""
    task = get_task(session, task_id)
    now = utcnow()
    moved = move(
        session,
        task_id,
        Event.COMPLETE,
        where=[Task.lease_owner == owner] if owner else [],
        values={
            "profile_version": profile_version,
            "step": Step.LINK,
            "reason": None,
            "error_code": None,
            "finished_at": now,
            "lease_owner": None,
            "lease_until": None,
            "next_attempt_at": None,
            "resumes": 0,
            "first_failed_at": None,
            **NOT_WAITING,
        },
        action="publication.completed",
        details={"instances": int(archive["instances"])},
    )
    pub = session.scalars(select(PublishedStudy).where(PublishedStudy.task_id == task_id)).first()
    if not moved:
        session.rollback()
        session.expire(task)
        if pub is not None and get_task(session, task_id).status == TaskStatus.COMPLETED:
            return pub  # done already (a retried link step)
        raise PublicationError(N_("the publication was taken over by another run (this run stopped renewing it)"))
    if pub is None:
        pub = PublishedStudy(task_id=task_id, clinic_code=task.clinic_code, downloads=0)
        session.add(pub)
    pub.storage_url = settings.storage_url_resolved
    pub.object_key = task.object_key or ""
    pub.size_bytes = int(archive["size_bytes"])
    pub.sha256 = archive["sha256"]
    pub.instances = int(archive["instances"])
    pub.withheld = int(archive.get("withheld", 0))
    pub.series = int(archive.get("series", 0))
    pub.modalities = ",".join(archive.get("modalities", []))[:64] or None
    pub.profile_version = profile_version
    pub.upload_date = now
    session.execute(delete(TaskStep).where(TaskStep.task_id == task_id, TaskStep.step == Step.LINK.value))
    session.add(TaskStep(task_id=task_id, step=Step.LINK.value, data={"ready": True}))
    # The patient's messages (and the FHIR push) are queued with the completion itself: never lost. A
    # republication under the same link finds them queued already and sends nothing again.
    from studypub.notify.outbox import PUBLISHED, queue_event
    from studypub.overrides import effective_settings

    queue_event(session, effective_settings(session, settings, task.clinic_code), task, PUBLISHED)
    session.commit()
    session.expire(task)
    return pub


def extend(
    session: Session, settings: Settings, task_id: str, save_till: datetime, *, actor: str, renotify: bool = True
) -> Task:
    """Move the storage period forward (up to the maximum retention). A publication past its date that the
    retention flow has not claimed yet can still be extended; an expired (being deleted) or deleted one cannot."""
    task = get_task(session, task_id)
    if task.status == TaskStatus.DELETED:
        raise Gone(N_("the publication was deleted; publish the study again"))
    if task.status == TaskStatus.EXPIRED:
        raise Gone(N_("the publication has expired and its archive is being deleted; publish the study again"))
    new = resolve_save_till(settings, save_till)
    old = task.save_till
    if new <= old:
        raise ValidationError(
            N_("save_till_date must be later than the current one (%(current)s)", current=old.isoformat()),
            field=SAVE_TILL,
        )
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status.not_in([TaskStatus.EXPIRED, TaskStatus.DELETED]))
        .values(save_till=new, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):  # the retention flow claimed it in between
        session.rollback()
        raise Gone(N_("the publication has expired and its archive was deleted; publish the study again"))
    audit(
        session,
        actor=actor,
        action="publication.extended",
        task=task,
        details={"from": old.isoformat(), "to": new.isoformat()},
    )
    if renotify and settings.notify.renotify_on_extend and task.status == TaskStatus.COMPLETED:
        from studypub.notify.outbox import LINK, queue_event

        session.refresh(task)
        queue_event(session, settings, task, f"extended:{new.date().isoformat()}", only=LINK, actor=actor)
    session.commit()
    session.expire(task)
    return task


def wait_for_study(session: Session, settings: Settings, task_id: str, *, owner: str) -> bool:
    """The study is not (yet) in the PACS: the run ends and the publication waits, queued and holding
    nothing, until the watchdog looks again (``runs.study_recheck_seconds``), for up to
    ``runs.study_wait_hours`` from the first miss; then it fails. True while it waits."""
    from studypub.errors import StudyNotFound

    task = get_task(session, task_id)
    now = utcnow()
    first = task.first_failed_at or now
    deadline = first + timedelta(hours=settings.runs.study_wait_hours)
    if now >= deadline:
        reason = (
            N_("study not found in PACS (looked for since %(time)s)", time=local_time(settings, first))
            if now > first
            else N_("study not found in PACS")
        )
        fail(session, settings, task_id, StudyNotFound(reason), owner=owner)
        return False
    at = min(now + timedelta(seconds=settings.runs.study_recheck_seconds), deadline)
    moved = move(
        session,
        task_id,
        Event.WAIT,
        where=[Task.lease_owner == owner],
        values={
            "lease_owner": None,
            "lease_until": None,
            "dispatch_pending": False,
            "next_attempt_at": at,
            "first_failed_at": first,
            "error_code": None,
            **waiting(
                Waiting.STUDY,
                N_(
                    "waiting for the study to reach the PACS (not there at %(time)s); looked for again at %(next)s",
                    time=local_time(settings, now),
                    next=local_time(settings, at),
                ),
                since=first,
            ),
        },
        action="publication.waiting",
        details={"waiting_for": Waiting.STUDY.value},
    )
    session.commit()
    return moved


def redispatch(session: Session, task_id: str) -> bool:
    """A waiting publication's time has come (a late study to look for again): a new run."""
    now = utcnow()
    moved = move(
        session,
        task_id,
        Event.REDISPATCH,
        where=[Task.dispatch_pending.is_(False), Task.next_attempt_at <= now],
        values={"dispatch_pending": True, "requeues": Task.requeues + 1, "next_attempt_at": None, "flow_run_id": None},
    )
    session.commit()
    return moved


def interrupt(session: Session, settings: Settings, task_id: str) -> tuple[str, str | None] | None:
    """A running publication whose run stopped renewing its lease (its worker was killed, the machine
    restarted, the run hung): queue it again so a new run resumes after its last finished step, or, after
    ``runs.max_resumes`` interruptions in a row, fail it with a reason (something in the study may kill the
    process). Returns (the new status, the dead run's flow-run id) when this call acted, else None."""
    now = utcnow()
    task = session.get(Task, task_id)
    if task is None or task.status != TaskStatus.RUNNING:
        return None
    dead_run, step = task.flow_run_id, task.step or "start"
    expired = [or_(Task.lease_until.is_(None), Task.lease_until < now), Task.resumes == task.resumes]
    if task.resumes >= settings.runs.max_resumes:
        moved = move(
            session,
            task_id,
            Event.FAIL,
            where=expired,
            values={
                "reason": N_(
                    "%(step)s: the run stopped without finishing %(count)s times in a row (the worker was killed or "
                    "crashed each time; something in this study may stop it); retry it after a look",
                    step=step,
                    count=task.resumes + 1,
                ),
                "error_code": "crashed_repeatedly",
                "finished_at": now,
                "lease_owner": None,
                "lease_until": None,
                "next_attempt_at": None,
                **NOT_WAITING,
            },
            action="publication.failed",
            details={"error_code": "crashed_repeatedly", "resumes": task.resumes},
        )
        target = TaskStatus.FAILED
    else:
        moved = move(
            session,
            task_id,
            Event.INTERRUPT,
            where=expired,
            values={**_resumed(step), "lease_owner": None, "lease_until": None},
            action="publication.interrupted",
            details={"resumes": task.resumes + 1},
        )
        target = TaskStatus.QUEUED
    session.commit()
    session.expire(task)
    return (target, dead_run) if moved else None


def claim_for_deletion(session: Session, task_id: str, *, only_if_due: bool) -> bool:
    """Mark a publication EXPIRED (its archive is about to be deleted): no run, extension or new request
    touches it from here on. A running publication is never claimed. True when this call claimed it, or
    when it was already claimed (an interrupted deletion is finished by whoever comes next)."""
    now = utcnow()
    moved = move(
        session,
        task_id,
        Event.EXPIRE,
        where=[Task.save_till <= now] if only_if_due else [],
        values={"dispatch_pending": False, "next_attempt_at": None, **NOT_WAITING},
    )
    session.commit()
    if moved:
        return True
    return session.scalar(select(Task.status).where(Task.id == task_id)) == TaskStatus.EXPIRED


def finish_deletion(session: Session, storage: Any, task_id: str, *, actor: str, action: str) -> bool:
    """Delete the archive of a claimed (EXPIRED) publication and mark it DELETED; its link answers 410.
    Idempotent and safe to run twice at once: deleting a missing object is fine, and only the caller whose
    update moves EXPIRED → DELETED records it. True for that caller."""
    session.expire_all()  # the claim was a bulk UPDATE: read the row as it is now
    task = get_task(session, task_id)
    if task.status != TaskStatus.EXPIRED:
        return False
    for key in {task.object_key, *(p.object_key for p in [task.publication] if p is not None)}:
        if key:
            storage.delete(key)
    now = utcnow()
    # The patient's contact and the link's second factor go with the archive (nothing can be resent now).
    gone = {"deleted_at": now, "dispatch_pending": False, **ERASED_CONTACT}
    if not move(session, task_id, Event.DELETE, values=gone):
        session.rollback()
        return False
    session.execute(
        update(PublishedStudy)
        .where(PublishedStudy.task_id == task_id)
        .values(deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    forget_task_indexes(session, task_id)  # the viewer's positions in the deleted archives
    audit(session, actor=actor, action=action, task=task)
    session.commit()
    return True


def revoke(session: Session, settings: Settings, task_id: str, *, actor: str) -> Task:
    """An administrator withdraws a link: the archive is deleted and the link answers 410."""
    from studypub.storage import open_storage

    task = get_task(session, task_id)
    if task.status == TaskStatus.DELETED:
        return task
    if task.status == TaskStatus.RUNNING:
        raise Conflict(N_("the publication is being prepared; cancel its run in Prefect or wait, then revoke"))
    if not claim_for_deletion(session, task_id, only_if_due=False):
        raise Conflict(N_("the publication is being prepared; cancel its run in Prefect or wait, then revoke"))
    finish_deletion(session, open_storage(settings), task_id, actor=actor, action="publication.revoked")
    session.expire_all()
    return get_task(session, task_id)


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    task: Task | None = None,
    details: dict[str, Any] | None = None,
    clinic_code: str | None = None,
) -> None:
    """An audit event of the task's clinic, else of ``clinic_code``, else of the session's one clinic."""
    from studypub.tenancy import scope_clinic

    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            clinic_code=task.clinic_code if task else (clinic_code or scope_clinic(session)),
            task_id=task.id if task else None,
            details=details or {},
        )
    )


def queue_position(session: Session, task: Task) -> int | None:
    """How many publications are ahead of a queued one that waits for nothing but its turn (a worker runs a
    bounded number at once): queued earlier and not waiting for something else."""
    if task.status != TaskStatus.QUEUED or task.waiting_for is not None:
        return None
    return int(
        session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.status == TaskStatus.QUEUED, Task.waiting_for.is_(None), Task.created_at < task.created_at)
        )
        or 0
    )


def result_view(session: Session, settings: Settings, task: Task, *, with_queue: bool = False) -> dict[str, Any]:
    """What a caller is told about a publication (CLI JSON, API): ids, state, what it waits for, link, sizes.
    No PHI beyond the request's own identifiers, which the caller sent. ``with_queue`` adds the queue
    position of a queued one (one more query: not on the hot path of recording a request)."""
    if "publication" in sa_inspect(task).unloaded:
        pub = session.scalars(select(PublishedStudy).where(PublishedStudy.task_id == task.id)).first()
    else:  # a task recorded in this session: known to have none yet (no query)
        pub = task.publication
    checkpoints = task.checkpoints or {}
    anon = checkpoints.get(Step.ANONYMISE.value, {})
    reason = task.reason
    ahead = queue_position(session, task) if with_queue else None
    if ahead is not None and not reason:
        reason = N_("queued, %(count)s ahead", count=ahead) if ahead else N_("queued, next to start")
    view: dict[str, Any] = {
        "task_id": task.id,
        "status": task.status,
        "step": task.step,
        "waiting_for": task.waiting_for,
        "waiting_since": task.waiting_since.isoformat() if task.waiting_since else None,
        "next_attempt_at": task.next_attempt_at.isoformat() if task.next_attempt_at else None,
        "reason": reason,
        "link": link_url(settings, task.link_key),
        "object_key": task.object_key,
        "size_bytes": pub.size_bytes if pub else None,
        "instances": pub.instances if pub else anon.get("instances"),
        "withheld": pub.withheld if pub else anon.get("withheld"),
        "progress": {"received": task.progress_received, "expected": task.progress_expected},
        "save_till": task.save_till.isoformat(),
        "second_factor": task.second_factor,
        "link_locked": task.factor_locked_at is not None,
    }
    if task.status in (TaskStatus.COMPLETED, TaskStatus.EXPIRED, TaskStatus.DELETED):
        view["reason"] = None
    return view
