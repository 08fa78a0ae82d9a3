"""SMS against local HTTP servers that behave like SMS.ru and Twilio (success, error, outage, and their
delivery-status callbacks into ``studypub api``'s authenticated webhook), the PIN sent by SMS when the link
goes by email, the log-only adapter keeping the number and the text out of the log, and FHIR ImagingStudy:
both versions from the API (validated by fhir.resources) and a push to a local FHIR-like server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from studypub.db import get_sessionmaker, migrate
from studypub.models import MessageStatus, OutboxMessage, Task, utcnow
from studypub.notify.outbox import deliver_due, messages_of
from studypub.notify.sms import TwilioGateway
from studypub.publications import link_url
from studypub.settings import get_settings
from tests.support.api import SEED_MANIFEST, ApiServer, make_api_key, seed_publication
from tests.support.gateways import FakeFhir, FakeSmsRu, FakeTwilio

PHONE = "+79161234567"
TOKEN = "cb-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_NOTIFY__WEBHOOK_TOKEN", TOKEN)
    get_settings.cache_clear()
    migrate(get_settings())


def _messages(task_id: str) -> list[OutboxMessage]:
    with get_sessionmaker(get_settings())() as session:
        rows = messages_of(session, task_id)
        for row in rows:
            session.expunge(row)
        return rows


def _deliver() -> dict[str, int]:
    with get_sessionmaker(get_settings())() as session:
        return deliver_due(session, get_settings()).counts()


@pytest.fixture
def smsru(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSmsRu]:
    server = FakeSmsRu()
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMS_PROVIDER", "smsru")
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMSRU_URL", server.url)
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMSRU_API_ID", "api-id-secret")
    get_settings.cache_clear()
    yield server
    server.close()


@pytest.fixture
def twilio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTwilio]:
    server = FakeTwilio()
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMS_PROVIDER", "twilio")
    monkeypatch.setenv("STUDYPUB_NOTIFY__TWILIO_URL", server.url)
    monkeypatch.setenv("STUDYPUB_NOTIFY__TWILIO_ACCOUNT_SID", "AC123")
    monkeypatch.setenv("STUDYPUB_NOTIFY__TWILIO_AUTH_TOKEN", "twilio-token")
    monkeypatch.setenv("STUDYPUB_NOTIFY__SMS_SENDER", "+15005550006")
    get_settings.cache_clear()
    yield server
    server.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path / "api.log") as server:
        yield server


def test_smsru_success_error_outage_and_delivery_callback(smsru: FakeSmsRu, api: ApiServer) -> None:
    ok = seed_publication(patient_phone=PHONE, notify_language="en")
    assert _deliver()["sent"] == 1
    [request] = smsru.requests
    form = request["form"]
    assert request["path"] == "/sms/send" and form["to"] == PHONE[1:] and form["api_id"] == "api-id-secret"
    assert link_url(get_settings(), ok.link_key) in form["msg"]
    assert "МРТ" not in form["msg"]  # no service title in an SMS by default
    [row] = _messages(ok.task_id)
    assert row.status == MessageStatus.SENT and row.provider == "smsru" and row.provider_id

    # The delivery report, as SMS.ru posts it, into the authenticated webhook.
    report = {"data[0]": f"sms_status\n{row.provider_id}\n103\n1733600000"}
    with api.client() as client:
        assert client.post("/webhooks/sms/smsru/wrong-token", data=report).status_code == 404
        answer = client.post(f"/webhooks/sms/smsru/{TOKEN}", data=report)
    assert answer.status_code == 200 and answer.text == "100"
    [row] = _messages(ok.task_id)
    assert row.status == MessageStatus.DELIVERED and row.delivered_at is not None

    smsru.mode = "error"  # the gateway refuses the number: final, with its reason
    refused = seed_publication(patient_phone="+79161234568")
    assert _deliver()["failed"] == 1
    [row] = _messages(refused.task_id)
    assert row.status == MessageStatus.FAILED and "207" in (row.reason or "")

    smsru.mode = "down"  # an outage: delayed, not lost
    later = seed_publication(patient_phone="+79161234569")
    assert _deliver()["retrying"] == 1
    smsru.mode = "ok"
    with get_sessionmaker(get_settings())() as session:
        session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
        session.commit()
    assert _deliver()["sent"] == 1
    assert _messages(later.task_id)[0].status == MessageStatus.SENT


def test_twilio_success_error_and_signed_callback(twilio: FakeTwilio, api: ApiServer) -> None:
    ok = seed_publication(patient_phone=PHONE, notify_language="es")
    assert _deliver()["sent"] == 1
    [request] = twilio.requests
    assert request["path"] == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request["auth"].startswith("Basic ")
    form = request["form"]
    assert form["To"] == PHONE and form["From"] == "+15005550006" and "su estudio" in form["Body"]
    callback = form["StatusCallback"]
    assert callback.endswith(f"/webhooks/sms/twilio/{TOKEN}")
    [row] = _messages(ok.task_id)

    status = {"MessageSid": row.provider_id or "", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    path = f"/webhooks/sms/twilio/{TOKEN}"
    url = f"{get_settings().links.public_base_url.rstrip('/')}{path}"
    with api.client() as client:
        forged = client.post(path, data=status, headers={"X-Twilio-Signature": "AAAA"})
        assert forged.status_code == 401
        assert _messages(ok.task_id)[0].status == MessageStatus.SENT
        signed = TwilioGateway.signature("twilio-token", url, status)
        assert client.post(path, data=status, headers={"X-Twilio-Signature": signed}).status_code == 204
    [row] = _messages(ok.task_id)
    assert row.status == MessageStatus.FAILED and "30003" in (row.reason or "")

    twilio.mode = "error"
    bad = seed_publication(patient_phone="+79161234568")
    assert _deliver()["failed"] == 1
    assert "21211" in (_messages(bad.task_id)[0].reason or "")


def test_pin_goes_by_sms_when_the_link_goes_by_email(smsru: FakeSmsRu, monkeypatch: pytest.MonkeyPatch) -> None:
    from studypub.factor import verify

    monkeypatch.setenv("STUDYPUB_NOTIFY__SMTP_HOST", "")  # no mail server yet: the email waits
    get_settings.cache_clear()
    seeded = seed_publication(patient_email="p@example.org", patient_phone=PHONE, second_factor="pin")
    kinds = sorted((m.channel, m.kind) for m in _messages(seeded.task_id))
    assert kinds == [("email", "link"), ("sms", "pin")]
    _deliver()
    [request] = smsru.requests
    text = request["form"]["msg"]
    assert link_url(get_settings(), seeded.link_key) not in text  # the PIN travels without the link
    pin = text.rsplit(" ", 1)[-1]
    assert pin.isdigit() and len(pin) == 6
    with get_sessionmaker(get_settings())() as session:
        task = session.get(Task, seeded.task_id)
        assert task is not None and task.factor_hash and pin not in task.factor_hash
        assert verify(session, get_settings(), task, pin).ok


def test_log_only_adapter_keeps_the_number_and_the_text_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    seeded = seed_publication(patient_phone=PHONE)
    with caplog.at_level(logging.INFO):
        assert _deliver()["sent"] == 1
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'details', '')}" for r in caplog.records)
    assert "log-only" in logged
    assert PHONE not in logged and PHONE[1:] not in logged and seeded.link_key not in logged


def test_fhir_imaging_study_in_both_versions_from_the_api(api: ApiServer) -> None:
    from fhir.resources.imagingstudy import ImagingStudy as R5
    from fhir.resources.R4B.imagingstudy import ImagingStudy as R4

    key = make_api_key()
    seeded = seed_publication(patient_id="1000001158664", accession="KP125706548L")
    with api.client(headers={"X-API-Key": key}) as client:
        r4 = client.get(f"/fhir/R4/ImagingStudy/{seeded.task_id}")
        r5 = client.get(f"/fhir/R5/ImagingStudy/{seeded.task_id}")
        assert client.get(f"/fhir/R4/ImagingStudy/{seeded.task_id}", headers={"X-API-Key": "nope"}).status_code == 401
    for answer, model in ((r4, R4), (r5, R5)):
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/fhir+json")
        study = model.model_validate(answer.json())
        assert study.id == seeded.task_id
        assert study.numberOfSeries == 1 and study.numberOfInstances == 3
        [series] = study.series
        assert series.uid == SEED_MANIFEST["series"][0]["uid"]
        assert [i.uid for i in series.instance] == ["2.25.3331", "2.25.3332", "2.25.3333"]
        values = {i.value for i in study.identifier}
        assert "KP125706548L" in values and "urn:oid:2.25.1111" in values
        assert study.subject.identifier.value == "1000001158664" and study.subject.type == "Patient"
        assert study.started == datetime.fromisoformat("2025-02-01T16:18:02+03:00")  # the MIS's study date
        [endpoint] = study.contained
        assert endpoint.address == link_url(get_settings(), seeded.link_key)
        assert study.endpoint[0].reference == "#patient-link"
    assert r4.json()["series"][0]["modality"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "MR",
    }
    assert r5.json()["series"][0]["modality"]["coding"][0]["code"] == "MR"


def test_fhir_push_to_a_configured_server_created_then_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir.resources.R4B.imagingstudy import ImagingStudy

    server = FakeFhir()
    try:
        monkeypatch.setenv("STUDYPUB_NOTIFY__FHIR_PUSH_URL", server.url + "/fhir")
        monkeypatch.setenv("STUDYPUB_NOTIFY__FHIR_PUSH_TOKEN", "fhir-bearer")
        get_settings.cache_clear()
        server.mode = "down"
        seeded = seed_publication()
        assert _deliver()["retrying"] == 1  # the server is down: retried like messages
        server.mode = "ok"
        with get_sessionmaker(get_settings())() as session:
            session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
            session.commit()
        assert _deliver()["sent"] == 1
        pushed = [r for r in server.requests if r["method"] == "PUT"]
        assert len(pushed) == 2 and pushed[-1]["path"] == f"/fhir/ImagingStudy/{seeded.task_id}"
        assert pushed[-1]["auth"] == "Bearer fhir-bearer" and pushed[-1]["content_type"] == "application/fhir+json"
        ImagingStudy.model_validate(pushed[-1]["body"])
        [row] = _messages(seeded.task_id)
        assert row.channel == "fhir" and row.status == MessageStatus.DELIVERED
        assert _deliver()["sent"] == 0
    finally:
        server.close()


def test_mis_request_validates_the_contact_and_returns_a_pin(api: ApiServer) -> None:
    key = make_api_key()
    base = {"patient_id": "P1", "accession_number": "A1", "clinic_code": "f_Khimki"}
    with api.client(headers={"X-API-Key": key}) as client:
        for field, value in (("patient_phone", "89161234567"), ("patient_phone", "+7916"), ("patient_email", "x@")):
            r = client.post("/publish", json={**base, field: value})
            assert r.status_code == 422 and field in r.json()["detail"], r.text
            assert value not in r.text or field == "patient_email"  # the phone is not repeated back
        r = client.post("/publish", json={**base, "notify_language": "it"})
        assert r.status_code == 422
        r = client.post(
            "/publish", json={**base, "patient_phone": PHONE, "second_factor": "pin", "notify_language": "de"}
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["second_factor"] == "pin" and body["pin"].isdigit() and len(body["pin"]) == 6
        again = client.post("/publish", json={**base, "patient_phone": PHONE, "second_factor": "pin"})
        assert again.json()["pin"] is None  # shown once
    assert PHONE not in api.log_text() and body["pin"] not in api.log_text()
