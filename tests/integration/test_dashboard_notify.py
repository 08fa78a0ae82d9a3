"""The dashboard and the patient's contact: the publish form checks the contact (the same rules as the MIS's)
and shows a PIN once; the publication's page shows each message's delivery state with the provider's reason;
a registrator sends a message again (audited) and the outbox sends it; a new PIN is shown once."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update

from studypub.db import get_sessionmaker, migrate
from studypub.models import AuditEvent, MessageStatus, OutboxMessage, Task
from studypub.notify.outbox import deliver_due, messages_of
from studypub.settings import get_settings
from tests.integration.test_dashboard import UNREACHABLE_PREFECT
from tests.support.api import seed_publication
from tests.support.dashboard import Browser, make_user


def test_publish_form_contact_pin_messages_and_resend(api_server: Any) -> None:
    migrate()
    make_user("reg", "registrator")
    api = api_server(PREFECT_API_URL=UNREACHABLE_PREFECT)
    with Browser(api.base_url) as b:
        b.login("reg")
        form = {"patient_id": "PF1", "accession_number": "AF1"}
        bad = b.post("/dashboard/publish", {**form, "patient_phone": "8 916 123 45 67", "patient_email": "x@"})
        assert bad.status_code == 422
        assert 'data-field="patient_phone"' in bad.text and 'data-field="patient_email"' in bad.text
        assert "international format" in bad.text and "8 916 123 45 67" in bad.text  # kept in the field to fix

        made = b.post("/dashboard/publish", {**form, "patient_phone": "+7 916 123 45 67", "second_factor": "pin"})
        assert made.status_code == 200, made.text[:300]  # the page itself: the PIN is never put in a URL
        pin = re.search(r'data-test="pin">[^<]*<strong class="mono">(\d+)</strong>', made.text)
        assert pin is not None and len(pin.group(1)) == 6
        with get_sessionmaker(get_settings())() as session:
            task = session.scalars(select(Task).where(Task.patient_id == "PF1")).one()
            assert task.patient_phone == "+79161234567" and task.second_factor == "pin"
            assert task.factor_hash and pin.group(1) not in task.factor_hash
        again = b.get(f"/dashboard/tasks/{task.id}")
        assert 'data-test="pin"' not in again.text  # shown once
        assert "+7••••••••67" in again.text and "+79161234567" not in again.text  # the number is masked

        new = b.post(f"/dashboard/tasks/{task.id}/pin", {})
        assert new.status_code == 200 and 'data-test="pin"' in new.text
        fresh = re.search(r'data-test="pin">[^<]*<strong class="mono">(\d+)</strong>', new.text)
        assert fresh is not None and fresh.group(1) != pin.group(1)
        with get_sessionmaker(get_settings())() as session:
            from studypub.factor import verify

            task = session.get(Task, task.id)
            assert task is not None
            assert not verify(session, get_settings(), task, pin.group(1)).ok  # the old PIN no longer works
            session.refresh(task)
            assert verify(session, get_settings(), task, fresh.group(1)).ok
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "link.new_pin")).one()
            assert event.actor == "reg"

    # A published study whose SMS the gateway refused: the page says so; a registrator sends it again.
    seeded = seed_publication(patient_phone="+79161234567")
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        [row] = messages_of(session, seeded.task_id)
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(status=MessageStatus.FAILED, reason="SMS.ru refused the number (code 207)", attempts=1)
        )
        session.commit()
    with Browser(api.base_url) as b:
        b.login("reg")
        page = b.get(f"/dashboard/tasks/{seeded.task_id}")
        assert 'data-status="failed"' in page.text and "SMS.ru refused the number (code 207)" in page.text
        resent = b.post(f"/dashboard/tasks/{seeded.task_id}/messages/{row.id}/resend", {})
        assert resent.status_code == 303
        page = b.get(resent.headers["location"])
        assert page.text.count('data-test="message"') == 2 and 'data-status="queued"' in page.text
    with get_sessionmaker(settings)() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "message.resent")).one()
        assert event.actor == "reg" and event.details["of"] == row.id
        assert deliver_due(session, settings).counts()["sent"] == 1  # the log-only gateway in development
        statuses = sorted(m.status for m in messages_of(session, seeded.task_id))
        assert statuses == [MessageStatus.FAILED, MessageStatus.SENT]
