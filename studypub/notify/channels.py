"""The real senders of each channel: compose the message for the row's publication, then hand it to the
provider (SMTP, the SMS gateway, the FHIR server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import object_session

from studypub.models import OutboxMessage, Task
from studypub.notify import compose
from studypub.notify import email as smtp
from studypub.notify.providers import Accepted
from studypub.settings import Settings

if TYPE_CHECKING:
    from studypub.notify.outbox import Senders


def facts(settings: Settings, message: OutboxMessage, task: Task) -> compose.Facts:
    from studypub.publications import link_url

    return compose.Facts(
        clinic=settings.notify.clinic_name or task.clinic_code,
        link=link_url(settings, task.link_key),
        kept_until=task.save_till,
        locale=task.notify_language or settings.links.default_language,
        service_title=task.service_title,
        factor=task.second_factor,
        extended=message.event.startswith("extended"),
    )


def send_email(settings: Settings, message: OutboxMessage, task: Task) -> Accepted:
    assert task.patient_email
    f = facts(settings, message, task)
    content = compose.email(settings, f)
    msg = smtp.build(
        settings.notify,
        to=task.patient_email,
        content=content,
        message_id=message.message_id,
        sender_name=settings.notify.email_from_name or f.clinic,
        locale=f.locale,
    )
    return smtp.send(settings.notify, msg)


def webhook_url(settings: Settings, provider: str) -> str | None:
    token = settings.notify.webhook_token
    if token is None:
        return None
    return f"{settings.links.public_base_url.rstrip('/')}/webhooks/sms/{provider}/{token.get_secret_value()}"


def send_sms(settings: Settings, message: OutboxMessage, task: Task) -> Accepted:
    from studypub.factor import issue_pin
    from studypub.notify.sms import gateway

    assert task.patient_phone
    f = facts(settings, message, task)
    if message.kind == "pin":
        # A new PIN for each attempt: only its hash is kept, and one that never arrived is worth nothing.
        session = object_session(task)
        assert session is not None
        phone = task.patient_phone
        text = compose.sms_pin(settings, f, issue_pin(session, settings, task.id))
    else:
        phone = task.patient_phone
        text = compose.sms_link(settings, f)
    sms = gateway(settings.notify)
    return sms.send(phone, text, reference=str(message.id), callback_url=webhook_url(settings, sms.name))


def push_fhir(settings: Settings, message: OutboxMessage, task: Task) -> Accepted:
    from studypub.fhir.push import push

    return push(settings, task)


def default_senders() -> Senders:
    from studypub.notify.outbox import Senders

    return Senders(email=send_email, sms=send_sms, fhir=push_fhir)
