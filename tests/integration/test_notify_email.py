"""The link by email, against a real SMTP server started by the test (aiosmtpd): the patient's language, the
link, the storage date and the headers; nothing about the study unless allowed; a server down then up
delivers once; a sender killed between handing a message over and recording it leaves it "unknown", never
sent again by itself, and a resend by staff works."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from studypub.db import get_sessionmaker
from studypub.models import AuditEvent, MessageStatus, OutboxMessage, utcnow
from studypub.notify.outbox import deliver_due, mark_unknown, messages_of, resend
from studypub.publications import extend, link_url
from studypub.settings import Settings, get_settings
from tests.support.api import seed_publication
from tests.support.net import free_port
from tests.support.smtp import SmtpServer

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _schema() -> None:
    from studypub.db import migrate

    migrate(get_settings())


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    server = SmtpServer().start()
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_PORT", str(server.port))
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_SECURITY", "none")
    monkeypatch.setenv("STUDYPUB_NOTIFY__EMAIL_FROM", "studies@clinic.example")
    monkeypatch.setenv("STUDYPUB_NOTIFY__CLINIC_NAME", "Клиника Химки")
    get_settings.cache_clear()
    yield server
    server.stop()


def _settings() -> Settings:
    return get_settings()


def _messages(task_id: str) -> list[OutboxMessage]:
    with get_sessionmaker(_settings())() as session:
        rows = messages_of(session, task_id)
        for row in rows:
            session.expunge(row)
        return rows


def _deliver(**kwargs: object) -> dict[str, int]:
    with get_sessionmaker(_settings())() as session:
        return deliver_due(session, _settings(), **kwargs).counts()  # type: ignore[arg-type]


def test_the_link_arrives_in_the_patients_language_with_the_right_headers(smtp: SmtpServer) -> None:
    seeded = seed_publication(patient_email="Anna.Petrova@Example.ORG", notify_language="de")
    [row] = _messages(seeded.task_id)
    assert (row.channel, row.kind, row.status) == ("email", "link", MessageStatus.QUEUED)

    assert _deliver()["sent"] == 1
    [(rcpt, msg)] = smtp.messages()
    assert rcpt == ["Anna.Petrova@example.org"]  # the domain normalised, the local part as given
    assert msg["Message-ID"] == row.message_id and row.message_id.endswith("@clinic.example>")
    assert msg["From"].addresses[0].addr_spec == "studies@clinic.example"
    assert msg["From"].addresses[0].display_name == "Клиника Химки"
    assert msg["Subject"] == "Ihre Bildgebungsuntersuchung von Клиника Химки"
    assert msg["Content-Language"] == "de"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    link = link_url(_settings(), seeded.link_key)
    for body in (text, html):
        assert link in body
        assert "Klinik" not in body or "Клиника Химки" in body
        assert "bis" in body  # "Der Link funktioniert bis <date>"
        assert "МРТ" not in body  # the service title is not said unless the clinic allows it
    assert "Guten Tag," in text and "hat eine Kopie Ihrer Bildgebungsuntersuchung" in text
    [row] = _messages(seeded.task_id)
    assert row.status == MessageStatus.SENT and row.attempts == 1 and row.sent_at is not None

    assert _deliver()["sent"] == 0  # at most once
    assert len(smtp.messages()) == 1


def test_service_title_only_when_allowed_and_russian_by_default(
    smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDYPUB_NOTIFY__INCLUDE_SERVICE_TITLE", "true")
    get_settings.cache_clear()
    seed_publication(patient_email="p@example.org")
    _deliver()
    [(_, msg)] = smtp.messages()
    text = msg.get_body(("plain",)).get_content()
    assert "МРТ суставов" in text and "Здравствуйте!" in text and msg["Content-Language"] == "ru"


def test_server_down_then_up_delivers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_PORT", str(port))
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_SECURITY", "none")
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_TIMEOUT", "3")
    get_settings.cache_clear()
    seeded = seed_publication(patient_email="p@example.org", notify_language="en")

    for attempt in (1, 2):  # nobody listens: the message waits, with backoff
        counts = _deliver()
        assert counts["retrying"] == 1 and counts["sent"] == 0
        [row] = _messages(seeded.task_id)
        assert row.status == MessageStatus.QUEUED and row.attempts == attempt
        assert "unreachable" in (row.reason or "")
        assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()
        assert _deliver()["retrying"] == 0  # not due yet: nothing tried
        with get_sessionmaker(_settings())() as session:  # time passes
            session.execute(update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            session.commit()

    server = SmtpServer(port).start()
    try:
        assert _deliver()["sent"] == 1
        assert _deliver()["sent"] == 0
        assert len(server.messages()) == 1
        [row] = _messages(seeded.task_id)
        assert row.status == MessageStatus.SENT and row.attempts == 3 and row.reason is None
        assert server.messages()[0][1]["Message-ID"] == row.message_id  # the same Message-ID on every attempt
    finally:
        server.stop()


CRASH_AFTER_SEND = textwrap.dedent(
    """
    import os
    from studypub.db import get_sessionmaker
    from studypub.notify import outbox
    from studypub.notify.channels import default_senders
    from studypub.settings import get_settings

    real = default_senders()

    def send_then_die(settings, message, task):
        real.email(settings, message, task)  # handed to the SMTP server...
        os._exit(9)  # ... and the process dies before the result is recorded

    senders = outbox.Senders(email=send_then_die, sms=real.sms, fhir=real.fhir)
    with get_sessionmaker(get_settings())() as session:
        outbox.deliver_due(session, get_settings(), senders)
    """
)


def test_a_crash_between_sending_and_recording_is_unknown_never_resent_and_resend_works(
    db_url: str, smtp: SmtpServer
) -> None:
    seeded = seed_publication(patient_email="p@example.org", notify_language="fr")
    child = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_SEND], cwd=ROOT, env=dict(os.environ), capture_output=True, timeout=120
    )
    assert child.returncode == 9, child.stderr.decode()[-2000:]
    assert len(smtp.messages()) == 1
    [row] = _messages(seeded.task_id)
    assert row.status == MessageStatus.SENDING

    assert _deliver()["sent"] == 0  # a "sending" row is never picked up again
    with get_sessionmaker(_settings())() as session:
        assert mark_unknown(session, _settings(), now=utcnow() + timedelta(minutes=10)) == [row.id]
    [row] = _messages(seeded.task_id)
    assert row.status == MessageStatus.UNKNOWN and "never recorded" in (row.reason or "")
    assert _deliver() == {"sent": 0, "retrying": 0, "failed": 0, "unknown": 0}
    assert len(smtp.messages()) == 1  # nothing sent twice

    with get_sessionmaker(_settings())() as session:
        again = resend(session, _settings(), row.id, actor="registrar1")
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "message.resent")).one()
        assert audit.actor == "registrar1" and audit.task_id == seeded.task_id
    assert _deliver()["sent"] == 1
    assert len(smtp.messages()) == 2
    statuses = {m.id: m.status for m in _messages(seeded.task_id)}
    assert statuses == {row.id: MessageStatus.UNKNOWN, again.id: MessageStatus.SENT}
    ids = [m["Message-ID"] for _, m in smtp.messages()]
    assert ids[0] != ids[1]  # a resend is a new message
    assert "Bonjour," in smtp.messages()[1][1].get_body(("plain",)).get_content()


def test_extending_the_storage_re_notifies_with_the_new_date(smtp: SmtpServer) -> None:
    seeded = seed_publication(patient_email="p@example.org", notify_language="en")
    _deliver()
    with get_sessionmaker(_settings())() as session:
        extend(session, _settings(), seeded.task_id, utcnow() + timedelta(days=90), actor="mis:test")
    assert _deliver()["sent"] == 1
    [_, (_, second)] = smtp.messages()
    assert "is kept until" in second["Subject"]
    assert "extended the storage period" in second.get_body(("plain",)).get_content()


def test_nothing_is_sent_for_a_deleted_publication_and_the_contact_is_erased(smtp: SmtpServer) -> None:
    from studypub.models import Task
    from studypub.publications import revoke

    seeded = seed_publication(patient_email="p@example.org", patient_phone="+79161234567")
    with get_sessionmaker(_settings())() as session:
        revoke(session, _settings(), seeded.task_id, actor="admin")
        task = session.get(Task, seeded.task_id)
        assert task is not None and task.patient_email is None and task.patient_phone is None
    counts = _deliver()
    assert counts["failed"] == 2 and counts["sent"] == 0
    assert smtp.messages() == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_authentication(security: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's certificate is verified (against the configured CA file) and the login is required."""
    from studypub.tls import self_signed

    certs, other = tmp_path / "certs", tmp_path / "other"
    self_signed(certs, ["127.0.0.1"])
    self_signed(other, ["127.0.0.1"])
    server = SmtpServer(security=security, cert_dir=certs, credentials=("mailer", "s3cret-pass")).start()
    try:
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(server.port),
            "SMTP_SECURITY": security,
            "SMTP_CA_FILE": str(other / "tls.crt"),  # not the server's: its certificate is refused
            "SMTP_USERNAME": "mailer",
            "SMTP_PASSWORD": "s3cret-pass",
        }.items():
            monkeypatch.setenv(f"STUDYPUB_NOTIFY__{name}", value)
        get_settings.cache_clear()
        seeded = seed_publication(patient_email="p@example.org")
        assert _deliver()["retrying"] == 1
        [row] = _messages(seeded.task_id)
        assert "SSL" in (row.reason or "") and server.logins == [] and server.messages() == []

        monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_CA_FILE", str(certs / "tls.crt"))
        get_settings.cache_clear()
        with get_sessionmaker(_settings())() as session:
            session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
            session.commit()
        assert _deliver()["sent"] == 1
        assert server.logins == [("mailer", True)] and len(server.messages()) == 1
    finally:
        server.stop()
