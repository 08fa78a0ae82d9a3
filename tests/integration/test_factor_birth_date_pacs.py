"""A link asking for the birth date when the MIS sent none takes it from the PACS's C-FIND answer (a real
Orthanc): only its slow hash is kept, never the date itself (not in the step's checkpoint either). The lock
after wrong answers counts each one once, on both databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from studypub.db import get_sessionmaker, migrate
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy
from studypub.factor import verify
from studypub.models import Step, Task, TaskStatus
from studypub.settings import get_settings
from tests.support.api import seed_publication
from tests.support.fixtures import STUDYPUB_AET


def test_birth_date_from_the_pacs(
    orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.find import find

    study = study_factory(patient_birth_date="19610305")
    orthanc.upload(study.paths)
    monkeypatch.setenv("STUDYPUB_PACS__HOST", orthanc.host)
    monkeypatch.setenv("STUDYPUB_PACS__PORT", str(orthanc.dicom_port))
    monkeypatch.setenv("STUDYPUB_PACS__CALLED_AE", orthanc.aet)
    monkeypatch.setenv("STUDYPUB_PACS__CALLING_AE", STUDYPUB_AET)
    get_settings.cache_clear()
    migrate()
    seeded = seed_publication(
        TaskStatus.QUEUED,
        patient_id=study.patient_id,
        accession=study.accession_number,
        second_factor="birth_date",
    )
    with get_sessionmaker(get_settings())() as session:
        assert session.get(Task, seeded.task_id).factor_hash is None  # type: ignore[union-attr]
    assert find.fn(seeded.task_id) == study.instance_count
    with get_sessionmaker(get_settings())() as session:
        task = session.get(Task, seeded.task_id)
        assert task is not None and task.factor_hash and "1961" not in task.factor_hash
        checkpoint = task.checkpoints[Step.FIND.value]
        assert "19610305" not in str(checkpoint) and "1961-03-05" not in str(checkpoint)
        assert not verify(session, get_settings(), task, "1961-03-06").ok
        session.refresh(task)
        assert verify(session, get_settings(), task, "05.03.1961").ok


def test_the_lock_counts_each_wrong_answer_once(db_url: str) -> None:
    seeded = seed_publication(second_factor="birth_date", patient_birth_date="1980-04-21")
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        outcomes = []
        for _ in range(6):
            task = session.get(Task, seeded.task_id)
            assert task is not None
            session.refresh(task)
            outcomes.append(verify(session, settings, task, "1980-01-01"))
        assert [o.remaining for o in outcomes[:4]] == [4, 3, 2, 1]
        assert outcomes[4].locked and outcomes[5].locked
        session.refresh(task)
        assert task.factor_failures == 5 and task.factor_locked_at is not None
        assert not verify(session, settings, task, "1980-04-21").ok  # locked: even the right answer


def test_a_link_with_nothing_to_check_yet_says_why_and_serves_nothing(api_server: Any) -> None:
    migrate()
    waiting_pin = seed_publication(
        TaskStatus.QUEUED, second_factor="pin", patient_email="p@example.org", patient_phone="+79161234567"
    )
    waiting_date = seed_publication(TaskStatus.QUEUED, second_factor="birth_date")
    no_date = seed_publication(second_factor="birth_date")  # published, but neither the MIS nor the PACS gave one
    api = api_server()
    english = {"Accept-Language": "en"}
    with httpx.Client(base_url=api.base_url, headers=english, timeout=30) as client:
        pin_page = client.get(f"/s/{waiting_pin.link_key}")
        assert pin_page.status_code == 200 and "receive the PIN in a separate message" in pin_page.text
        date_page = client.get(f"/s/{waiting_date.link_key}")
        assert "being prepared" in date_page.text and "Contact the clinic" not in date_page.text
        for page in (pin_page, date_page):
            assert 'name="answer"' not in page.text and 'http-equiv="refresh"' in page.text
        stuck = client.get(f"/s/{no_date.link_key}")
        assert "cannot check the date of birth" in stuck.text and "МРТ" not in stuck.text
        download = client.get(f"/s/{no_date.link_key}/download")
        assert download.headers["content-type"].startswith("text/html") and "cannot check" in download.text
        assert client.post(f"/s/{no_date.link_key}/verify", data={"answer": "1970-01-01"}).status_code == 200
