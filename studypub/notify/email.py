"""Email over SMTP (plain, STARTTLS or TLS from the start; with authentication when configured): one message
with a plain-text and an HTML part, and a Message-ID that stays the same on every attempt of one outbox row
(a receiving server that saw it already can drop the repeat)."""

from __future__ import annotations

import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate

from studypub.notify.compose import Email
from studypub.notify.providers import Accepted, DeliveryError
from studypub.settings import NotifySettings


def build(
    settings: NotifySettings, *, to: str, content: Email, message_id: str, sender_name: str, locale: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((sender_name, settings.email_from)) if sender_name else settings.email_from
    msg["To"] = to
    msg["Subject"] = content.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(content.text)
    msg.add_alternative(content.html, subtype="html")
    msg["Content-Language"] = locale  # after the bodies: setting content clears Content-* headers
    return msg


def domain_of(address: str) -> str:
    try:
        return Address(addr_spec=address).domain or "localhost"
    except (ValueError, IndexError):
        return "localhost"


def _context(settings: NotifySettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.smtp_ca_file or None)


def send(settings: NotifySettings, msg: EmailMessage) -> Accepted:
    """Hand the message to the SMTP server. A 4xx answer, an unreachable server or a problem of the clinic's
    settings (a refused login, no STARTTLS) is transient: the message waits; a 5xx refusal of the message (a bad
    address, a policy) is final."""
    if not settings.smtp_host:
        raise DeliveryError("no SMTP server is configured (STUDYPUB_NOTIFY__SMTP_HOST)", transient=True)
    try:
        if settings.smtp_security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout, context=_context(settings)
            )
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
        with client:
            if settings.smtp_security == "starttls":
                client.starttls(context=_context(settings))
            if settings.smtp_username:
                password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                client.login(settings.smtp_username, password)
            refused = client.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise DeliveryError(
            f"the SMTP server refused the recipient ({codes[0] if codes else '?'})",
            transient=all(400 <= c < 500 for c in codes),
        ) from None
    except smtplib.SMTPAuthenticationError as exc:  # the clinic's settings, not the patient's address: kept
        raise DeliveryError(f"the SMTP server refused the login ({exc.smtp_code})", transient=True) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"the SMTP server answered {exc.smtp_code}", transient=400 <= exc.smtp_code < 500) from None
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError("the SMTP server does not offer STARTTLS or authentication", transient=True) from None
    except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"the SMTP server is unreachable ({type(exc).__name__})", transient=True) from None
    if refused:
        raise DeliveryError("the SMTP server refused the recipient", transient=False)
    return Accepted(provider="smtp", provider_id=str(msg["Message-ID"]))
