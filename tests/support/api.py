"""The API as the MIS and the patient meet it: ``studypub api`` in its own process on a free port, over
real HTTP, with the test's environment (database, storage, Prefect URL, work dir).

Also ``seed_publication``: a publication in a chosen state with a real archive in the configured storage,
made through the domain functions (request → claim → complete), for tests of what serves publications
(link pages, downloads, retention) that do not need a PACS. The real path is covered end to end elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from studypub.models import Task, TaskStatus, utcnow
from tests.support.net import LOOPBACK, free_port

ROOT = Path(__file__).parents[2]


class ApiServer:
    def __init__(self, log_path: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        # One process unless the test asks for more: per-process state (link rate limits) stays predictable.
        self.env = dict(os.environ, **{"STUDYPUB_API__WORKERS": "1", **(env or {})})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ApiServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "api", "--host", LOOPBACK, "--port", str(self.port)],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studypub api exited ({self.proc.returncode}); log: {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"studypub api did not answer within {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


TEST_CLINICS = ("f_Khimki", "f_Other")  # the clinics the tests publish for, beside the default one


def ensure_test_clinics(*codes: str) -> None:
    """The database migrated, with the test clinics (and ``codes``) known to it, as an administrator would
    have added them (`studypub clinic add`)."""
    from studypub.clinics import add_clinic, get_clinic
    from studypub.db import get_sessionmaker, migrate
    from studypub.settings import get_settings

    settings = get_settings()
    migrate(settings)
    with get_sessionmaker(settings)() as session:
        for code in (*TEST_CLINICS, *codes):
            if get_clinic(session, code) is None:
                add_clinic(session, settings, code, actor="test")


def make_api_key(name: str = "test-mis", clinic_code: str | None = None) -> str:
    from studypub.apikeys import create_key
    from studypub.db import get_sessionmaker
    from studypub.settings import get_settings

    ensure_test_clinics()
    with get_sessionmaker(get_settings())() as session:
        return create_key(session, name, clinic_code=clinic_code, actor="test")[1]


def tiny_archive(files: int = 3) -> bytes:
    """A real ZIP with a few members (content does not matter to what serves it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(files):
            zf.writestr(f"DICOM/IM{i:04d}", os.urandom(20000))
    return buf.getvalue()


# What the zip step records of the archive (new UIDs), for the FHIR resource of a seeded publication.
SEED_MANIFEST = {
    "study_uid": "2.25.1111",
    "series": [
        {
            "uid": "2.25.2222",
            "number": 1,
            "modality": "MR",
            "instances": [
                {"uid": f"2.25.333{i}", "sop_class": "1.2.840.10008.5.1.4.1.1.4", "number": i} for i in (1, 2, 3)
            ],
        }
    ],
}


@dataclass
class Seeded:
    task_id: str
    link_key: str
    object_key: str
    archive: bytes


def seed_publication(
    status: str = TaskStatus.COMPLETED,
    *,
    patient_id: str | None = None,
    accession: str | None = None,
    clinic_code: str = "f_Khimki",
    service_title: str | None = "МРТ суставов",
    study_date: datetime | None = None,
    save_till: datetime | None = None,
    archive: bytes | None = None,
    **request: Any,
) -> Seeded:
    """A publication in ``status``: COMPLETED has its archive in storage; FAILED has a reason; QUEUED and
    RUNNING have neither. ``save_till`` in the past makes a publication that has expired but is not deleted
    yet (it is recorded with a valid date, then moved back, as time would)."""
    import secrets

    from sqlalchemy import update

    from studypub.db import get_sessionmaker
    from studypub.errors import StudyNotFound
    from studypub.publications import PublicationRequest, claim, complete, fail, request_publication
    from studypub.settings import get_settings
    from studypub.storage import open_storage

    settings = get_settings()
    ensure_test_clinics(clinic_code)
    sessions = get_sessionmaker(settings)
    with sessions() as session:
        task, _ = request_publication(
            session,
            settings,
            PublicationRequest(
                patient_id=patient_id or f"P{secrets.token_hex(4)}",
                accession_number=accession or f"A{secrets.token_hex(4)}",
                clinic_code=clinic_code,
                source="mis",
                service_title=service_title,
                study_date=study_date or datetime.fromisoformat("2025-02-01T16:18:02+03:00"),
                **request,  # the patient's contact, the second factor...
            ),
        )
        task_id, link_key, object_key = task.id, task.link_key, task.object_key or ""
        data = archive if archive is not None else tiny_archive()
        if status != TaskStatus.QUEUED:
            assert claim(session, task_id, "seed", lease_seconds=settings.runs.lease_seconds)
        if status == TaskStatus.COMPLETED:
            from studypub.models import Step
            from studypub.publications import save_checkpoint

            save_checkpoint(session, task_id, Step.ZIP, {"manifest": SEED_MANIFEST})
            storage = open_storage(settings)
            storage.ensure_ready()
            with storage.writer(object_key) as fh:
                fh.write(data)
            complete(
                session,
                settings,
                task_id,
                archive={
                    "size_bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "instances": 3,
                    "series": 1,
                    "modalities": ["MR"],
                },
                profile_version="test",
            )
        elif status == TaskStatus.FAILED:
            fail(session, settings, task_id, StudyNotFound("the PACS has no study with this accession number"))
        if save_till is not None:
            session.execute(update(Task).where(Task.id == task_id).values(save_till=save_till))
            session.commit()
    return Seeded(task_id=task_id, link_key=link_key, object_key=object_key, archive=data)


def past(days: float = 1) -> datetime:
    return utcnow() - timedelta(days=days)
