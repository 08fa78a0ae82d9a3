"""The whole publication path through real parts: a study in a PACS (Orthanc, or dcmtk's dcmqrscp) →
``studypub publish`` (the installed console script, a real Prefect server) → the archive in S3 (moto's
server over HTTP) or a local folder; the app's database on PostgreSQL or SQLite."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.support.net import LOOPBACK, free_port, wait_for
from tests.support.worker import ARTIFACTS, STUDYPUB, find_deployment, running_worker

pytestmark = pytest.mark.slow


def start_publish(env: dict[str, str], study: GeneratedStudy, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(STUDYPUB),
            "publish",
            "--patient-id",
            study.patient_id,
            "--accession",
            study.accession_number,
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_publish(
    proc: subprocess.Popen[str], study: GeneratedStudy, timeout: float = 240
) -> tuple[int, dict[str, Any], str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"publish-{study.accession_number}-{time.time_ns()}.log").write_text(stdout + stderr)
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON object, got {stdout!r}; stderr tail: {stderr[-3000:]}"
    return proc.returncode, json.loads(lines[0]), stderr


def run_publish(
    env: dict[str, str], study: GeneratedStudy, *extra: str, timeout: float = 240
) -> tuple[int, dict[str, Any], str]:
    return finish_publish(start_publish(env, study, *extra), study, timeout)


@pytest.fixture
def base_env(isolated_env: Path, prefect_api_url: str, studypub_scp_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_api_url,
        STUDYPUB_PACS__SCP_PORT=str(studypub_scp_port),
        STUDYPUB_PACS__SCP_BIND=LOOPBACK,
        STUDYPUB_PACS__CALLING_AE="STUDYPUB",
        STUDYPUB_RUNS__STUDY_WAIT_HOURS="0",
        STUDYPUB_PREFECT__TASK_RETRY_DELAY="1",
        STUDYPUB_LINKS__PUBLIC_BASE_URL="https://studies.example.org",
    )
    return env


@pytest.fixture
def orthanc_env(base_env: dict[str, str], orthanc: OrthancServer) -> dict[str, str]:
    return dict(
        base_env,
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(orthanc.dicom_port),
        STUDYPUB_PACS__CALLED_AE=orthanc.aet,
    )


def s3_env(env: dict[str, str], s3_server: Any, bucket: str) -> dict[str, str]:
    return dict(
        env,
        STUDYPUB_STORAGE__URL=f"s3://{bucket}/published",
        STUDYPUB_STORAGE__ENDPOINT_URL=s3_server.endpoint_url,
        STUDYPUB_STORAGE__ACCESS_KEY_ID="testing",
        STUDYPUB_STORAGE__SECRET_ACCESS_KEY="testing-secret",
        STUDYPUB_STORAGE__REGION="us-east-1",
    )


def bucket_keys(s3_server: Any, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def check_archive(data: bytes, study: GeneratedStudy, *, expected_instances: int) -> None:
    """The archive holds every published image, a DICOMDIR pydicom reads, no identifying value, new UIDs
    consistent across the study."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    assert "DICOMDIR" in names and "README.txt" in names
    images = [n for n in names if n not in ("DICOMDIR", "README.txt")]
    assert len(images) == expected_instances
    for name in names:  # no identifier in entry names
        assert all(v not in name for v in study.identifying_values | study.identifying_uids)
    leaks = []
    for name in names:
        content = zf.read(name)
        lowered = content.lower()
        for value in study.identifying_values:
            if value.lower().encode("utf-8") in lowered:
                leaks.append((name, value))
        for uid in study.identifying_uids:
            if uid.encode() in content:
                leaks.append((name, uid))
    assert not leaks, f"identifying values in the archive: {leaks[:10]}"
    extract = Path(os.environ["STUDYPUB_WORK_DIR"]).parent / "extracted"
    zf.extractall(extract)
    fs = FileSet(extract / "DICOMDIR")
    assert len(fs) == expected_instances
    study_uids, series_uids = set(), set()
    for instance in fs:
        ds = instance.load()
        assert ds.PatientIdentityRemoved == "YES"
        study_uids.add(ds.StudyInstanceUID)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert len(study_uids) == 1 and study.study_instance_uid not in study_uids
    assert not series_uids & set(study.series_instance_uids)
    note = zf.read("README.txt").decode("utf-8")
    assert "DICOMDIR" in note and "Как открыть" in note
    assert "Даты удалены из снимков" in note and "Dates were removed from the images" in note  # the default
    assert not dciodvfy_errors(fs_paths := [i.path for i in fs]) - dciodvfy_errors(study.paths), fs_paths[:1]


def dciodvfy_errors(paths: list[Any]) -> set[str]:
    """dciodvfy's errors over files, values and item numbers blanked (UIDs and values change with
    anonymisation): an output may have no error kind its originals do not have. Files dciodvfy cannot read
    (a deflated transfer syntax) are left out on both sides."""
    import re
    import shutil

    if shutil.which("dciodvfy") is None:
        return set()
    errors = set()
    for path in paths:
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
        lines = (run.stderr + run.stdout).splitlines()
        if any("read failed" in line for line in lines):
            continue
        for line in lines:
            if line.startswith("Error"):
                errors.add(re.sub(r"\[\d+\]", "[]", re.sub(r"=\s*<[^>]*>", "=<>", line)))
    return errors


def flow_runs_parameters(prefect_api_url: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["publish-study"])))
    return [dict(r.parameters) for r in runs]


def test_study_in_orthanc_is_published_to_s3_once(
    orthanc_env: dict[str, str],
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    pg_database: str,
    study_factory: Callable[..., GeneratedStudy],
    prefect_api_url: str,
) -> None:
    study = study_factory(
        series=[
            SeriesSpec(images=3, rows=128, cols=128, transfer_syntax="explicit", description="Axial"),
            SeriesSpec(images=2, rows=128, cols=128, transfer_syntax="jpeg-lossless", description="Thin"),
            SeriesSpec(images=2, rows=96, cols=96, modality="US", frames=4, transfer_syntax="rle", color=True),
            SeriesSpec(images=1, rows=128, cols=128, modality="SC", burned_in_annotation=True),
            SeriesSpec(images=2, rows=64, cols=64, modality="OT", transfer_syntax="deflated"),
        ],
        include_pdf=True,
    )
    orthanc.upload(study.paths)
    env = s3_env(orthanc_env, s3_server, s3_bucket)
    env["STUDYPUB_DATABASE__URL"] = pg_database

    code, result, stderr = run_publish(env, study)
    assert code == 0, (result, stderr[-3000:])
    assert result["status"] == "COMPLETED" and result["step"] == "link"
    keys = bucket_keys(s3_server, s3_bucket)
    assert keys == [f"published/{result['object_key']}"]
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=keys[0])["Body"].read()
    # The PDF; the burned-in SC is published with its text blacked out (OCR: deid.burned_in_text=mask, issue 11).
    # The archive's note lists what was withheld and why.
    note = zipfile.ZipFile(io.BytesIO(body)).read("README.txt").decode("utf-8", "replace")
    assert result["withheld"] == 1, note
    assert result["instances"] == study.instance_count - 1
    assert result["link"].startswith("https://studies.example.org/s/") and len(result["link"].rsplit("/", 1)[1]) >= 22
    for value in (study.patient_id, study.accession_number):
        assert value not in result["object_key"] and value not in result["link"]
    assert len(body) == result["size_bytes"]
    check_archive(body, study, expected_instances=result["instances"])

    # Logs: JSON lines on stderr, the spec's pid/acsn may appear, names and birth dates never.
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(e["message"] == f"Study {study.accession_number} published" for e in events)
    published = next(e for e in events if e["message"].endswith("published"))
    assert published["details"]["pid"] == study.patient_id and published["details"]["status"] == "COMPLETED"
    for value in study.identifying_by_keyword.get("PatientName", set()) | study.identifying_by_keyword.get(
        "PatientBirthDate", set()
    ):
        assert value not in stderr

    # Prefect sees the task id only.
    params = flow_runs_parameters(prefect_api_url)
    assert {"task_id": result["task_id"]} in params
    assert all(set(p) == {"task_id"} for p in params)

    # The same request again: the same task, link and object, nothing re-published.
    code2, again, _ = run_publish(env, study)
    assert code2 == 0
    assert {k: again[k] for k in ("task_id", "link", "object_key", "size_bytes")} == {
        k: result[k] for k in ("task_id", "link", "object_key", "size_bytes")
    }
    assert bucket_keys(s3_server, s3_bucket) == keys


def test_study_not_in_pacs_fails_with_a_reason(
    orthanc_env: dict[str, str], study_factory: Callable[..., GeneratedStudy]
) -> None:
    study = study_factory()  # never loaded into the PACS
    code, result, stderr = run_publish(orthanc_env, study)
    assert code == 1
    assert result["status"] == "FAILED" and result["step"] == "find"
    assert "study not found in PACS" in result["reason"]
    assert result["link"]  # the link was issued with the request and stays the same
    # An expected failure is said in a line, not a traceback, and not repeated by Prefect's engine.
    assert "Traceback" not in stderr and "Engine execution exited" not in stderr, stderr[-3000:]
    assert f"Study {study.accession_number} failed" in stderr


def test_patient_id_mismatch_retrieves_nothing(
    orthanc_env: dict[str, str], orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]
) -> None:
    study = study_factory()
    orthanc.upload(study.paths)
    proc = subprocess.run(
        [str(STUDYPUB), "publish", "--patient-id", "SOMEONE-ELSE", "--accession", study.accession_number],
        env=orthanc_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["step"] == "find"
    assert "another PatientID" in result["reason"]
    tasks_dir = Path(orthanc_env["STUDYPUB_WORK_DIR"]) / "tasks"
    assert not tasks_dir.exists() or not any(tasks_dir.rglob("*.dcm"))


def test_pacs_down_then_back(
    base_env: dict[str, str],
    tmp_path: Path,
    studypub_scp_port: int,
    study_factory: Callable[..., GeneratedStudy],
) -> None:
    """The PACS is not there when the publication starts: find waits for it (retrying with backoff, saying so);
    it comes up without the study, which arrives a moment later: the publication looks for it again."""
    study = study_factory()
    port = free_port()
    env = dict(
        base_env,
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(port),
        STUDYPUB_PACS__CALLED_AE="LATEPACS",
        STUDYPUB_RUNS__STUDY_RECHECK_SECONDS="2",
    )
    late = OrthancServer(
        tmp_path / "late-pacs",
        aet="LATEPACS",
        dicom_port=port,
        modalities={"STUDYPUB": ("STUDYPUB", LOOPBACK, studypub_scp_port)},
    )
    proc = start_publish(env, study)
    try:
        time.sleep(5)
        assert proc.poll() is None, "the publication gave up while the PACS was down"
        late.start()
        late.upload(study.paths)
        code, result, stderr = finish_publish(proc, study)
    finally:
        proc.kill()
        late.stop()
    assert code == 0, (result, stderr[-3000:])
    assert result["instances"] == study.instance_count


def test_storage_down_then_back(
    orthanc_env: dict[str, str],
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    study_factory: Callable[..., GeneratedStudy],
) -> None:
    """S3 is down while the archive is uploaded; the upload step retries with backoff and succeeds."""
    study = study_factory()
    orthanc.upload(study.paths)
    env = dict(s3_env(orthanc_env, s3_server, s3_bucket), STUDYPUB_PREFECT__TASK_RETRIES="6")
    s3_server.stop()
    proc = start_publish(env, study)
    try:
        time.sleep(8)
        assert proc.poll() is None, "the publication gave up while storage was down"
        s3_server.start()
        code, result, stderr = finish_publish(proc, study)
    finally:
        proc.kill()
    assert code == 0, (result, stderr[-3000:])
    assert bucket_keys(s3_server, s3_bucket) == [f"published/{result['object_key']}"]


def test_failed_publication_resumes_without_a_second_link_or_object(
    orthanc_env: dict[str, str],
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    study_factory: Callable[..., GeneratedStudy],
    prefect_api_url: str,
) -> None:
    study = study_factory()
    orthanc.upload(study.paths)
    # No patience with the storage outage: the publication fails at once (with an automatic retry due later).
    env = dict(
        s3_env(orthanc_env, s3_server, s3_bucket),
        STUDYPUB_PREFECT__TASK_RETRIES="0",
        STUDYPUB_RUNS__OUTAGE_PATIENCE_SECONDS="0",
    )
    s3_server.stop()
    code, failed, _ = run_publish(env, study)
    assert code == 1 and failed["status"] == "FAILED" and failed["step"] == "upload"
    assert "storage" in failed["reason"].lower()
    # A failed publication keeps no identifiable data: the raw instances are gone, only anonymised outputs stay.
    work = Path(env["STUDYPUB_WORK_DIR"]) / "tasks" / failed["task_id"]
    assert not (work / "raw").exists() and (work / "archive.zip").exists()

    s3_server.start()
    code, done, stderr = run_publish(env, study)
    assert code == 0, (done, stderr[-3000:])
    assert (done["task_id"], done["link"], done["object_key"]) == (
        failed["task_id"],
        failed["link"],
        failed["object_key"],
    )
    assert bucket_keys(s3_server, s3_bucket) == [f"published/{done['object_key']}"]
    # The second run resumed at the upload: no retrieval, no anonymisation again.
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = {e["message"] for e in events}
    assert "Archive uploaded" in messages
    assert not {"Study retrieved", "Study anonymised", "Archive written"} & messages


def test_cget_to_local_storage_on_sqlite(
    orthanc_env: dict[str, str], orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]
) -> None:
    study = study_factory(
        series=[SeriesSpec(images=4, rows=64, cols=64, transfer_syntax=ts) for ts in ("jpeg-ls", "rle")]
    )
    orthanc.upload(study.paths)
    storage = Path(orthanc_env["STUDYPUB_WORK_DIR"]).parent / "published"
    env = dict(orthanc_env, STUDYPUB_PACS__RETRIEVE_METHOD="get", STUDYPUB_STORAGE__URL=storage.as_uri())
    code, result, stderr = run_publish(env, study)
    assert code == 0, (result, stderr[-3000:])
    archive = storage / result["object_key"]
    assert archive.stat().st_size == result["size_bytes"]
    check_archive(archive.read_bytes(), study, expected_instances=study.instance_count)
    # Compressed instances travel as sent: never decompressed on the way.
    with zipfile.ZipFile(archive) as zf:
        syntaxes = {dcmread(zf.open(n)).file_meta.TransferSyntaxUID.name for n in zf.namelist() if n.startswith("PT")}
    assert syntaxes == {"JPEG-LS Lossless Image Compression", "RLE Lossless"}
    # The request had no study date (as the dashboard's form has none): the PACS's C-FIND answer gave it.
    from zoneinfo import ZoneInfo

    from studypub.db import get_sessionmaker
    from studypub.publications import get_task
    from studypub.settings import get_settings

    with get_sessionmaker(get_settings())() as session:
        study_date = get_task(session, result["task_id"]).study_date
    assert study_date is not None
    local = study_date.astimezone(ZoneInfo("Europe/Moscow")).strftime("%Y%m%d%H%M%S")
    assert local == study.spec.study_date + study.spec.study_time


def test_cmove_from_dcmqrscp(
    base_env: dict[str, str], dcmqrscp: Any, study_factory: Callable[..., GeneratedStudy]
) -> None:
    """A second, independent Q/R SCP (dcmtk) as the PACS. It cannot transcode and sends uncompressed
    instances only (its default proposal), so the study is uncompressed here."""
    study = study_factory(
        series=[SeriesSpec(images=3, rows=128, cols=128, transfer_syntax=ts) for ts in ("explicit", "implicit")]
    )
    dcmqrscp.load(study.paths)
    env = dict(
        base_env,
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(dcmqrscp.port),
        STUDYPUB_PACS__CALLED_AE=dcmqrscp.aet,
    )
    code, result, stderr = run_publish(env, study)
    assert code == 0, (result, stderr[-3000:])
    assert result["instances"] == study.instance_count


def test_two_studies_with_one_accession_are_ambiguous(
    orthanc_env: dict[str, str], orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]
) -> None:
    first = study_factory()
    second = study_factory(accession_number=first.accession_number, patient_id=f"{first.patient_id}X")
    orthanc.upload(first.paths + second.paths)
    code, result, _ = run_publish(orthanc_env, first)
    assert code == 1 and result["step"] == "find"
    assert "ambiguous: 2 studies" in result["reason"]


def test_prefect_unreachable_is_a_visible_failure(
    base_env: dict[str, str], study_factory: Callable[..., GeneratedStudy]
) -> None:
    """Nothing is lost and nothing is silent: the request is recorded and its failure says why."""
    study = study_factory()
    env = dict(base_env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    code, result, _ = run_publish(env, study)
    assert code == 1 and result["status"] == "FAILED" and result["task_id"]
    assert "PREFECT_API_URL" in result["reason"] and "ConnectError" in result["reason"]


def test_failed_run_retried_from_prefect_resumes_through_the_deployment(
    orthanc_env: dict[str, str],
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    study_factory: Callable[..., GeneratedStudy],
    api_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MIS's request through the API; the dispatcher starts the run of the `publish` deployment that
    `studypub worker` serves; the run fails (storage down) and the API shows why; it is retried the way the
    Prefect UI's Retry does it (the same flow run set to AwaitingRetry) and resumes at the upload: same link,
    one object, and the MIS asking again gets the link with 200."""
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    from studypub.db import get_sessionmaker
    from studypub.publications import get_task
    from tests.support.api import make_api_key

    study = study_factory()
    orthanc.upload(study.paths)
    # No patience with the storage outage: the publication fails at once (with an automatic retry due later).
    env = dict(
        s3_env(orthanc_env, s3_server, s3_bucket),
        STUDYPUB_PREFECT__TASK_RETRIES="0",
        STUDYPUB_RUNS__OUTAGE_PATIENCE_SECONDS="0",
    )
    for name, value in env.items():  # the API process and this test's own database access see the same
        if name.startswith(("STUDYPUB_", "PREFECT_API_URL")):
            monkeypatch.setenv(name, value)
    from studypub.settings import get_settings

    get_settings.cache_clear()
    key = make_api_key()
    api = api_server(STUDYPUB_API__DISPATCH_INTERVAL="1")
    mis = httpx.Client(base_url=api.base_url, headers={"X-API-Key": key}, timeout=30)
    with mis, running_worker(env, tmp_path / "worker.log", f"worker-{study.accession_number}.log"):
        with get_client(sync_client=True) as client:
            wait_for(lambda: find_deployment(client, "publish-study/publish"), 90, "the worker to serve the deployment")
            s3_server.stop()
            body = {
                "patient_id": study.patient_id,
                "accession_number": study.accession_number,
                "clinic_code": "f_Khimki",
                "service_title": "МРТ суставов",
            }
            answer = mis.post("/publish", json=body)
            assert answer.status_code == 202
            first = answer.json()
            failed = wait_for(
                lambda: (s := mis.get(first["status_url"]).json())["status"] == "FAILED" and s, 180, "the failure"
            )
            assert failed["step"] == "upload" and "storage" in failed["reason"].lower()
            with get_sessionmaker()() as session:
                task = get_task(session, first["task_id"])
            run_id = task.flow_run_id
            assert run_id
            state = wait_for(lambda: (s := client.read_flow_run(run_id).state) and s.is_final() and s, 60, "run end")
            assert state.is_failed()

            s3_server.start()
            client.set_flow_run_state(run_id, AwaitingRetry(), force=True)  # what the UI's Retry does
            wait_for(
                lambda: (s := client.read_flow_run(run_id).state) and s.is_final() and s.is_completed() and s,
                180,
                "the retried run",
            )
        done = mis.get(first["status_url"]).json()
        assert done["status"] == "COMPLETED" and done["link"] == first["link"] and done["size_bytes"] > 0
        again = mis.post("/publish", json=body)
        assert again.status_code == 200 and again.json()["link"] == first["link"]
        with get_sessionmaker()() as session:
            task = get_task(session, first["task_id"])
            assert task.flow_run_id == str(run_id) and task.attempts == 2
        assert bucket_keys(s3_server, s3_bucket) == [f"published/{task.object_key}"]
