"""One worker, two clinics, two PACS (two Orthanc servers), end to end: the MIS of each clinic publishes at
the same time, each publication is retrieved from its own clinic's PACS (the environment's PACS answers
nothing), and while clinic B's PACS is stopped clinic A's next publication completes."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy
from tests.support.fixtures import STUDYPUB_AET
from tests.support.net import LOOPBACK, wait_for
from tests.support.worker import find_deployment, running_worker

pytestmark = pytest.mark.slow


def _archive(task_id: str) -> zipfile.ZipFile:
    """The publication's archive in the local storage folder."""
    from studypub.db import get_sessionmaker
    from studypub.publications import get_task
    from studypub.settings import get_settings

    with get_sessionmaker()() as session:
        key = get_task(session, task_id).object_key or ""
    root = Path(get_settings().storage_url_resolved.removeprefix("file://"))
    return zipfile.ZipFile(io.BytesIO((root / key).read_bytes()))


def test_two_clinics_publish_from_their_own_pacs_and_one_pacs_down_delays_only_its_clinic(
    isolated_env: Path,
    prefect_api_url: str,
    studypub_scp_port: int,
    orthanc: OrthancServer,
    study_factory: Callable[..., GeneratedStudy],
    api_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.api import ensure_test_clinics, make_api_key

    other = OrthancServer(
        tmp_path / "orthanc-b",
        aet="ORTHANC_B",
        modalities={STUDYPUB_AET: (STUDYPUB_AET, LOOPBACK, studypub_scp_port)},
    )
    other.start()
    try:
        env = dict(
            os.environ,
            PREFECT_API_URL=prefect_api_url,
            STUDYPUB_PACS__SCP_PORT=str(studypub_scp_port),
            STUDYPUB_PACS__SCP_BIND=LOOPBACK,
            STUDYPUB_PACS__CALLING_AE=STUDYPUB_AET,
            STUDYPUB_PACS__PORT="9",  # the environment's PACS answers nothing: each clinic has its own
            STUDYPUB_PACS__CALLED_AE="NOWHERE",
            STUDYPUB_PACS__ACSE_TIMEOUT="3",
            STUDYPUB_RUNS__STUDY_WAIT_HOURS="0",
            STUDYPUB_PREFECT__TASK_RETRY_DELAY="1",
        )
        for name, value in env.items():  # the API, the worker and this test see the same database
            if name.startswith(("STUDYPUB_", "PREFECT_API_URL")):
                monkeypatch.setenv(name, value)
        from studypub.clinics import update_clinic
        from studypub.db import get_sessionmaker
        from studypub.settings import get_settings

        get_settings.cache_clear()
        ensure_test_clinics()
        with get_sessionmaker()() as session:
            for code, pacs in (("f_khimki", orthanc), ("f_other", other)):
                values = {"pacs.host": LOOPBACK, "pacs.port": str(pacs.dicom_port), "pacs.called_ae": pacs.aet}
                update_clinic(session, get_settings(), code, actor="test", values=values)
        keys = {code: make_api_key(f"mis-{code}", clinic_code=code) for code in ("f_khimki", "f_other")}
        studies = {"a1": study_factory(), "b1": study_factory(), "a2": study_factory(), "b2": study_factory()}
        orthanc.upload(studies["a1"].paths + studies["a2"].paths)
        other.upload(studies["b1"].paths + studies["b2"].paths)

        api = api_server(STUDYPUB_API__DISPATCH_INTERVAL="1")

        def publish(name: str, code: str) -> dict[str, Any]:
            study = studies[name]
            answer = httpx.post(
                f"{api.base_url}/publish",
                headers={"X-API-Key": keys[code]},
                json={"patient_id": study.patient_id, "accession_number": study.accession_number, "clinic_code": code},
                timeout=30,
            )
            assert answer.status_code == 202, answer.text
            return answer.json()  # type: ignore[no-any-return]

        def status(code: str, task: dict[str, Any]) -> dict[str, Any]:
            return httpx.get(task["status_url"], headers={"X-API-Key": keys[code]}, timeout=30).json()  # type: ignore[no-any-return]

        def finished(code: str, task: dict[str, Any]) -> dict[str, Any]:
            def ended() -> dict[str, Any] | None:
                state = status(code, task)
                return state if state["status"] in ("COMPLETED", "FAILED") else None

            return wait_for(ended, 300, "a publication to end")  # type: ignore[no-any-return]

        with running_worker(env, tmp_path / "worker.log", "worker-two-clinics.log"):
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                wait_for(lambda: find_deployment(client, "publish-study/publish"), 120, "the worker's deployment")
            # Both clinics at once, each from its own PACS (each study is in one PACS only).
            a1, b1 = publish("a1", "f_khimki"), publish("b1", "f_other")
            for code, task in (("f_khimki", a1), ("f_other", b1)):
                done = finished(code, task)
                assert done["status"] == "COMPLETED", done
            for name, task in (("a1", a1), ("b1", b1)):
                images = [n for n in _archive(task["task_id"]).namelist() if n not in ("DICOMDIR", "README.txt")]
                assert len(images) == studies[name].instance_count
            # Clinic B's PACS goes down: B's publication waits for it, A's completes meanwhile.
            other.stop()
            b2 = publish("b2", "f_other")
            a2 = publish("a2", "f_khimki")
            done = finished("f_khimki", a2)
            assert done["status"] == "COMPLETED", done
            waiting = status("f_other", b2)
            assert waiting["status"] in ("QUEUED", "RUNNING") and waiting["waiting_for"] == "pacs", waiting
            # A's key learns nothing of B's publication.
            assert httpx.get(b2["status_url"], headers={"X-API-Key": keys["f_khimki"]}, timeout=30).status_code == 404
    finally:
        other.stop()
