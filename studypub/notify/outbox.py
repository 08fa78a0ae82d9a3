"""The outbox: one row per message (the link or the PIN, by email or SMS; the study to a FHIR server), for one
event (the publication completed, its storage extended, a resend by staff). Rows are queued in the same
transaction as the event, so an event is never lost; they are sent by the ``notify`` Prefect deployment and
right after a publication completes.

Sending is at most once per row, automatically: a row is claimed (``queued`` → ``sending``, a conditional
update), handed to the provider, and its result recorded. A provider that cannot take it now (an outage, a
temporary refusal) puts it back to ``queued`` with a later ``next_attempt_at`` (backoff), for up to
``notify.give_up_hours``: an outage delays a message, never loses it. A row left ``sending`` (the process
died between handing it over and recording the result) becomes ``unknown`` after
``notify.sending_timeout_seconds`` and is never sent again by itself: staff see it and may resend (a new row,
audited). An email keeps its Message-ID across the attempts of its row.

The recipient is never copied here: it is read from the publication when the row is sent (and erased there
by retention), so neither the outbox nor the logs hold it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from studypub.errors import Conflict, NotFound
from studypub.i18n import N_
from studypub.logs import details, get_logger
from studypub.models import AuditEvent, MessageStatus, OutboxMessage, Task, TaskStatus, utcnow
from studypub.notify.providers import Accepted, DeliveryError
from studypub.settings import Settings

log = get_logger("notify")

EMAIL, SMS, FHIR = "email", "sms", "fhir"
LINK, PIN, STUDY = "link", "pin", "study"
PUBLISHED = "published"
FINAL = frozenset({MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.FAILED, MessageStatus.UNKNOWN})


def planned(settings: Settings, task: Task) -> list[tuple[str, str]]:
    """(channel, kind) of the messages a publication's event sends: the link by each channel given and enabled;
    with a PIN and both channels, the link by email and the PIN by SMS (the other channel)."""
    from studypub.factor import pin_goes_by_sms

    out: list[tuple[str, str]] = []
    if task.patient_email and settings.notify.email_enabled:
        out.append((EMAIL, LINK))
    if task.patient_phone and settings.notify.sms_enabled:
        out.append((SMS, PIN if task.second_factor == "pin" and pin_goes_by_sms(settings, task) else LINK))
    return out


def _message_id(settings: Settings) -> str:
    from studypub.notify.email import domain_of

    return f"<{secrets.token_hex(16)}@{domain_of(settings.notify.email_from)}>"


def _add(session: Session, settings: Settings, task: Task, channel: str, kind: str, event: str, actor: str) -> bool:
    exists = session.scalar(
        select(OutboxMessage.id).where(
            OutboxMessage.task_id == task.id,
            OutboxMessage.channel == channel,
            OutboxMessage.kind == kind,
            OutboxMessage.event == event,
        )
    )
    if exists is not None:
        return False
    now = utcnow()
    session.add(
        OutboxMessage(
            task_id=task.id,
            clinic_code=task.clinic_code,
            channel=channel,
            kind=kind,
            event=event,
            status=MessageStatus.QUEUED,
            attempts=0,
            next_attempt_at=now,
            message_id=_message_id(settings),
            requested_by=actor,
            created_at=now,
            updated_at=now,
        )
    )
    return True


def queue_event(
    session: Session, settings: Settings, task: Task, event: str, *, only: str | None = None, actor: str = "system"
) -> int:
    """Queue the event's messages (not committed: the caller's transaction records the event with them).
    ``only``: the link messages only (a re-notification after an extension). Returns how many were queued."""
    count = 0
    for channel, kind in planned(settings, task):
        if only is not None and kind != only:
            continue
        count += _add(session, settings, task, channel, kind, event, actor)
    if settings.notify.fhir_push_url and event == PUBLISHED:
        count += _add(session, settings, task, FHIR, STUDY, event, actor)
    return count


def resend(session: Session, settings: Settings, message_id: int, *, actor: str) -> OutboxMessage:
    """Staff send a message again (a new row of the same channel and kind, audited)."""
    old = session.get(OutboxMessage, message_id)
    if old is None:
        raise NotFound(N_("no such message"))
    task = session.get(Task, old.task_id)
    if task is None or task.status != TaskStatus.COMPLETED:
        raise Conflict(N_("only a published study's messages can be sent again"))
    if (old.channel == EMAIL and not task.patient_email) or (old.channel == SMS and not task.patient_phone):
        raise Conflict(N_("the patient's contact for this channel is no longer known"))
    event = f"resend:{secrets.token_hex(4)}"
    _add(session, settings, task, old.channel, old.kind, event, actor)
    session.add(
        AuditEvent(
            actor=actor,
            action="message.resent",
            clinic_code=task.clinic_code,
            task_id=task.id,
            details={"channel": old.channel, "kind": old.kind, "of": old.id},
        )
    )
    session.commit()
    row = session.scalars(select(OutboxMessage).where(OutboxMessage.task_id == task.id, OutboxMessage.event == event))
    return row.one()


def messages_of(session: Session, task_id: str) -> list[OutboxMessage]:
    return list(
        session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.task_id == task_id)
            .order_by(OutboxMessage.created_at, OutboxMessage.id)
        )
    )


# Sending --------------------------------------------------------------------------------------------------------


@dataclass
class Senders:
    """How each channel is sent (the real providers by default; tests give their own, still real, servers)."""

    email: Callable[[Settings, OutboxMessage, Task], Accepted]
    sms: Callable[[Settings, OutboxMessage, Task], Accepted]
    fhir: Callable[[Settings, OutboxMessage, Task], Accepted]

    def for_channel(self, channel: str) -> Callable[[Settings, OutboxMessage, Task], Accepted]:
        return {EMAIL: self.email, SMS: self.sms, FHIR: self.fhir}[channel]


@dataclass
class Report:
    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


def mark_unknown(session: Session, settings: Settings, *, now: datetime | None = None) -> list[int]:
    """Rows left ``sending`` longer than the timeout: their result was never recorded. ``unknown``, for staff."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.notify.sending_timeout_seconds)
    ids = list(
        session.scalars(
            select(OutboxMessage.id).where(
                OutboxMessage.status == MessageStatus.SENDING, OutboxMessage.sending_at < cutoff
            )
        )
    )
    done = []
    for message_id in ids:
        result = session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id, OutboxMessage.status == MessageStatus.SENDING)
            .values(
                status=MessageStatus.UNKNOWN,
                reason=N_("the result of sending was never recorded (the sender stopped); not sent again by itself"),
                updated_at=now,
                next_attempt_at=None,
            )
        )
        if getattr(result, "rowcount", 0):
            done.append(message_id)
            log.warning("Message result unknown", extra=details(message=message_id))
    session.commit()
    return done


def claim(session: Session, message_id: int, *, now: datetime | None = None) -> bool:
    now = now or utcnow()
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status == MessageStatus.QUEUED,
            or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
        )
        .values(
            status=MessageStatus.SENDING,
            attempts=OutboxMessage.attempts + 1,
            sending_at=now,
            updated_at=now,
        )
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def _record(session: Session, message_id: int, **values: Any) -> None:
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, OutboxMessage.status == MessageStatus.SENDING)
        .values(updated_at=utcnow(), **values)
    )
    session.commit()


def backoff(settings: Settings, attempts: int) -> float:
    return float(
        min(settings.notify.first_retry_seconds * 2 ** max(0, attempts - 1), settings.notify.max_retry_seconds)
    )


def send_one(session: Session, settings: Settings, message_id: int, senders: Senders) -> str | None:
    """Claim and send one due message; returns its new status (None when it was not this call's to send)."""
    if not claim(session, message_id):
        return None
    session.expire_all()
    message = session.get(OutboxMessage, message_id)
    assert message is not None
    task = session.get(Task, message.task_id)
    problem = _cannot_send(message, task)
    if problem is not None:
        _record(session, message_id, status=MessageStatus.FAILED, reason=problem, next_attempt_at=None)
        return MessageStatus.FAILED
    assert task is not None
    from studypub.overrides import effective_settings

    settings = effective_settings(session, settings, task.clinic_code)  # the clinic's sender and wording
    try:
        accepted = senders.for_channel(message.channel)(settings, message, task)
    except DeliveryError as exc:
        now = utcnow()
        expired = now - message.created_at > timedelta(hours=settings.notify.give_up_hours)
        if exc.transient and not expired:
            at = now + timedelta(seconds=backoff(settings, message.attempts))
            _record(session, message_id, status=MessageStatus.QUEUED, reason=exc.reason, next_attempt_at=at)
            log.warning("Message not sent; tried again later", extra=details(message=message_id, reason=exc.reason))
            return MessageStatus.QUEUED
        reason = (
            exc.reason
            if not exc.transient
            else N_("%(reason)s; gave up after %(hours)s h", reason=exc.reason, hours=settings.notify.give_up_hours)
        )
        _record(session, message_id, status=MessageStatus.FAILED, reason=reason, next_attempt_at=None)
        log.warning("Message failed", extra=details(message=message_id, reason=exc.reason))
        return MessageStatus.FAILED
    now = utcnow()
    status = MessageStatus.DELIVERED if accepted.status == "delivered" else MessageStatus.SENT
    _record(
        session,
        message_id,
        status=status,
        reason=None,
        next_attempt_at=None,
        provider=accepted.provider,
        provider_id=accepted.provider_id,
        sent_at=now,
        delivered_at=now if status == MessageStatus.DELIVERED else None,
    )
    log.info("Message sent", extra=details(message=message_id, channel=message.channel, provider=accepted.provider))
    return status


def _cannot_send(message: OutboxMessage, task: Task | None) -> str | None:
    if task is None or task.status in (TaskStatus.EXPIRED, TaskStatus.DELETED):
        return N_("the publication was deleted")
    if task.save_till <= utcnow():
        return N_("the publication's storage period is over")
    if (message.channel == EMAIL and not task.patient_email) or (message.channel == SMS and not task.patient_phone):
        return N_("the patient's contact for this channel is no longer known")
    return None


def due(session: Session, *, task_id: str | None = None, limit: int = 100) -> list[int]:
    now = utcnow()
    query = select(OutboxMessage.id).where(
        OutboxMessage.status == MessageStatus.QUEUED,
        or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
    )
    if task_id is not None:
        query = query.where(OutboxMessage.task_id == task_id)
    return list(session.scalars(query.order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)))


def deliver_due(
    session: Session, settings: Settings, senders: Senders | None = None, *, task_id: str | None = None
) -> Report:
    """One pass: rows stuck in ``sending`` become ``unknown``; every due row is sent once."""
    from studypub.notify.channels import default_senders

    senders = senders or default_senders()
    report = Report(unknown=mark_unknown(session, settings))
    for message_id in due(session, task_id=task_id):
        status = send_one(session, settings, message_id, senders)
        if status in (MessageStatus.SENT, MessageStatus.DELIVERED):
            report.sent.append(message_id)
        elif status == MessageStatus.QUEUED:
            report.retrying.append(message_id)
        elif status == MessageStatus.FAILED:
            report.failed.append(message_id)
    return report


# Delivery reports -----------------------------------------------------------------------------------------------


def record_report(session: Session, provider: str, provider_id: str, status: str, reason: str | None) -> bool:
    """A gateway's delivery report: sent (or unknown: it did go) → delivered or failed. True when it applied."""
    if status not in ("delivered", "failed") or not provider_id:
        return False
    now = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status == "delivered":
        values["delivered_at"] = now
    if reason:
        values["reason"] = reason[:500]
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.provider == provider,
            OutboxMessage.provider_id == provider_id,
            OutboxMessage.status.in_([MessageStatus.SENT, MessageStatus.UNKNOWN]),
        )
        .values(**values)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))
