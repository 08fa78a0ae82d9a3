"""End to end through real parts: a study in Orthanc, a request with the patient's email and a birth-date
factor, the real publish flow on a real Prefect server (C-GET, local storage): when it completes, the email
reaches a real SMTP server once, in the patient's language, with the link; the link's birth date is the PACS's
(kept as a hash only); the FHIR ImagingStudy lists the archive's new UIDs, in both versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from studypub.db import get_sessionmaker, migrate
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy
from studypub.factor import verify
from studypub.fhir.publication import resource_for
from studypub.models import MessageStatus, Task
from studypub.notify.outbox import messages_of
from studypub.publications import PublicationRequest, link_url, request_publication
from studypub.settings import get_settings
from tests.support.fixtures import STUDYPUB_AET
from tests.support.net import LOOPBACK
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.slow


def test_a_published_study_reaches_the_patient_and_fhir(
    prefect_api_url: str,
    orthanc: OrthancServer,
    study_factory: Callable[..., GeneratedStudy],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from fhir.resources.imagingstudy import ImagingStudy as R5
    from fhir.resources.R4B.imagingstudy import ImagingStudy as R4

    from flows.publish import publish_study

    study = study_factory(patient_birth_date="19750612")
    orthanc.upload(study.paths)
    smtp = SmtpServer().start()
    env = {
        "STUDYPUB_PACS__HOST": LOOPBACK,
        "STUDYPUB_PACS__PORT": str(orthanc.dicom_port),
        "STUDYPUB_PACS__CALLED_AE": orthanc.aet,
        "STUDYPUB_PACS__CALLING_AE": STUDYPUB_AET,
        "STUDYPUB_PACS__RETRIEVE_METHOD": "get",
        "STUDYPUB_STORAGE__URL": (tmp_path / "published").as_uri(),
        "STUDYPUB_LINKS__PUBLIC_BASE_URL": "https://studies.example.org",
        "STUDYPUB_NOTIFY__SMTP_HOST": LOOPBACK,
        "STUDYPUB_NOTIFY__SMTP_PORT": str(smtp.port),
        "STUDYPUB_NOTIFY__SMTP_SECURITY": "none",
        "STUDYPUB_NOTIFY__CLINIC_NAME": "Clínica Norte",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings)
    try:
        with get_sessionmaker(settings)() as session:
            task, created = request_publication(
                session,
                settings,
                PublicationRequest(
                    patient_id=study.patient_id,
                    accession_number=study.accession_number,
                    clinic_code="default",
                    source="mis",
                    patient_email="paciente@example.org",
                    notify_language="es",
                    second_factor="birth_date",
                ),
            )
            assert created and task.factor_hash is None
            task_id, link_key = task.id, task.link_key

        summary = publish_study(task_id)
        assert summary["status"] == "COMPLETED", summary

        [(rcpt, msg)] = smtp.messages()  # the flow's first attempt, once
        assert rcpt == ["paciente@example.org"]
        assert msg["Subject"] == "Su estudio de imagen de Clínica Norte"
        text = msg.get_body(("plain",)).get_content()
        assert link_url(settings, link_key) in text and "fecha de nacimiento" in text
        with get_sessionmaker(settings)() as session:
            [row] = messages_of(session, task_id)
            assert row.status == MessageStatus.SENT and row.message_id == msg["Message-ID"]
            stored = session.get(Task, task_id)
            assert stored is not None and stored.factor_hash and "1975" not in stored.factor_hash
            assert verify(session, settings, stored, "1975-06-12").ok  # the PACS's birth date

            for version, model in (("R4", R4), ("R5", R5)):
                resource = resource_for(settings, stored, version)  # type: ignore[arg-type]
                parsed = model.model_validate(resource)
                assert parsed.numberOfInstances == study.instance_count
                uids = {s.uid for s in parsed.series}
                assert len(uids) == len(study.series_instance_uids)
                assert not uids & set(study.series_instance_uids)  # the anonymised study's new UIDs
                assert f"urn:oid:{study.study_instance_uid}" not in {i.value for i in parsed.identifier}
                assert study.accession_number in {i.value for i in parsed.identifier}
                assert parsed.subject.identifier.value == study.patient_id

            # A resend is sent by the `notify` flow's pass (what the worker's deployment runs), on Prefect.
            from flows.notify import deliver_messages
            from studypub.notify.outbox import resend

            resend(session, settings, row.id, actor="reg")
        counts = deliver_messages()
        assert counts["sent"] == 1 and len(smtp.messages()) == 2
    finally:
        smtp.stop()
