"""Storage stays clean, through real parts: moto's S3 server over HTTP (or a local folder), the app's
database on SQLite and PostgreSQL, a writer process killed mid-upload, the retention flow on a real Prefect
server. A killed upload aborts nothing, so its S3 multipart upload stays pending (parts kept, and billed);
the next attempt at that key aborts it, and retention aborts what no attempt comes back for and deletes
objects no publication references, but nothing young and nothing a publication names.

Things are made "old" by passing ``now``/``max_age`` (moto dates objects in real time; it dates every
pending multipart upload 2010-11-10, so on S3 a pending upload always looks old)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from studypub import retention as r
from studypub.db import get_sessionmaker
from studypub.models import TaskStatus, TaskStep, utcnow
from studypub.publications import REPLACES, get_task, new_object_key, republish
from studypub.settings import get_settings
from studypub.spool import WorkPaths, mark_done
from studypub.storage import UPLOADING_SUFFIX, LocalStorage, S3Storage, open_storage
from tasks.upload import upload_archive
from tests.integration.test_retention import (  # noqa: F401 (fixtures, requested by name)
    object_exists,
    results_dir,
    run_retention,
    s3_env,
    storage_kind,
)
from tests.support.api import seed_publication
from tests.support.retention import ZERO, counts

LATER = timedelta(hours=7)  # past the default grace period: what is there now is "old" then
REPO = Path(__file__).parents[2]

# Starts an upload the way the upload step does, sends one part, and waits to be killed.
KILLED_WRITER = """
import os, sys
from studypub.settings import get_settings
from studypub.storage import open_storage
storage = open_storage(get_settings())
storage.ensure_ready()
with storage.writer(sys.argv[1]) as fh:
    fh.write(os.urandom(6 * 1024 * 1024))
    fh.flush()
    print("part sent", flush=True)
    sys.stdin.read()
"""


def storage() -> LocalStorage | S3Storage:
    return open_storage(get_settings())


def _boto() -> Any:
    """A plain boto3 client of the same storage: what the tests see, read independently of the code under
    test."""
    import boto3

    s = get_settings().storage
    assert s.access_key_id is not None and s.secret_access_key is not None
    return boto3.client(
        "s3",
        endpoint_url=s.endpoint_url,
        aws_access_key_id=s.access_key_id.get_secret_value(),
        aws_secret_access_key=s.secret_access_key.get_secret_value(),
        region_name=s.region,
    )


def leave_pending_upload(store: LocalStorage | S3Storage, key: str) -> None:
    """What a process killed mid-upload leaves: a multipart upload with a part and no end, or a local
    ``.uploading`` file."""
    if isinstance(store, S3Storage):
        client = _boto()
        full = store.prefix + key
        upload = client.create_multipart_upload(Bucket=store.bucket, Key=full)
        client.upload_part(
            Bucket=store.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=os.urandom(1024)
        )
    else:
        path = store.path(key + UPLOADING_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024))


def pending_keys(store: LocalStorage | S3Storage) -> list[str]:
    """Keys of the uploads pending under archives/ (S3's own listing, or the folder's ``.uploading`` files)."""
    if isinstance(store, S3Storage):
        page = _boto().list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix + "archives/")
        return sorted(u["Key"][len(store.prefix) :] for u in page.get("Uploads", []))
    folder = store.root / "archives"
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(f"archives/{n[: -len(UPLOADING_SUFFIX)]}" for n in names if n.endswith(UPLOADING_SUFFIX))


def stored_keys(store: LocalStorage | S3Storage) -> list[str]:
    if isinstance(store, S3Storage):
        page = _boto().list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "archives/")
        return sorted(o["Key"][len(store.prefix) :] for o in page.get("Contents", []))
    folder = store.root / "archives"
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(f"archives/{n}" for n in names if not n.endswith(UPLOADING_SUFFIX))


def put_object(store: LocalStorage | S3Storage, key: str) -> None:
    store.ensure_ready()
    with store.writer(key) as fh:
        fh.write(os.urandom(2048))


# --- the next attempt -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("s3_env")
def test_next_upload_aborts_what_a_killed_attempt_left(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUDYPUB_STORAGE__UPLOAD_PART_SIZE", str(5 * 1024 * 1024))
    get_settings.cache_clear()
    store = storage()
    assert isinstance(store, S3Storage)
    key = new_object_key()
    # The upload step's writer in a process of its own, killed (its whole group) after sending a part.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, key],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line.strip() == "part sent", writer.stderr.read() if writer.stderr else ""
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    # Another key that merely starts with this one: not this publication's, left alone.
    sibling = key + ".other"
    leave_pending_upload(store, sibling)
    assert pending_keys(store) == sorted([key, sibling])
    assert stored_keys(store) == []

    data = os.urandom(300 * 1024)
    paths = WorkPaths(tmp_path / "task").create()
    paths.archive.write_bytes(data)
    mark_done(paths, "archive", {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    result = upload_archive(store, paths, key)

    assert result["size_bytes"] == len(data)
    assert pending_keys(store) == [sibling]  # the killed attempt's upload is gone, the other key's is not
    assert stored_keys(store) == [key]  # exactly one object
    body = _boto().get_object(Bucket=store.bucket, Key=store.prefix + key)["Body"].read()
    assert body == data


# --- retention --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("storage_kind")
def test_retention_aborts_dead_uploads_and_deletes_orphans_only(db_url: str) -> None:
    store = storage()
    completed = seed_publication()  # its object: tasks.object_key and published_studies.object_key
    republished = seed_publication()  # its archive, while the new one is being made: "replaces" + published
    failed = seed_publication(TaskStatus.FAILED)  # its worker was killed mid-upload
    uploaded = seed_publication(TaskStatus.FAILED)  # uploaded, then killed before the link step: tasks only
    running = seed_publication(TaskStatus.RUNNING)  # uploading slowly for hours
    replacing = seed_publication(TaskStatus.QUEUED)  # its replaced archive, named by a "replaces" row only
    replaced_key = new_object_key()
    published_only = seed_publication()  # its published archive, named by published_studies only
    with get_sessionmaker()() as session:
        republish(session, republished.task_id, actor="test")
        republish(session, published_only.task_id, actor="test")
        session.execute(delete(TaskStep).where(TaskStep.task_id == published_only.task_id))
        session.add(TaskStep(task_id=replacing.task_id, step=REPLACES, data={"object_key": replaced_key}))
        session.commit()
        assert get_task(session, published_only.task_id).object_key != published_only.object_key
    put_object(store, replaced_key)
    put_object(store, uploaded.object_key)
    leave_pending_upload(store, failed.object_key)
    leave_pending_upload(store, running.object_key)
    orphan = new_object_key()
    put_object(store, orphan)
    kept = sorted(
        [completed.object_key, uploaded.object_key, republished.object_key, replaced_key, published_only.object_key]
    )
    assert stored_keys(store) == sorted([*kept, orphan])

    with get_sessionmaker()() as session:
        outcome = r.clean_storage(session, store, now=utcnow() + LATER)

    assert (outcome.uploads_aborted, outcome.orphans_deleted, outcome.kept_running) == (1, 1, 1)
    assert stored_keys(store) == kept
    assert pending_keys(store) == [running.object_key]
    with get_sessionmaker()() as session:  # idempotent: nothing left to do
        again = r.clean_storage(session, store, now=utcnow() + LATER)
    assert (again.uploads_aborted, again.orphans_deleted, again.kept_running) == (0, 0, 1)


@pytest.mark.usefixtures("storage_kind")
def test_young_orphans_and_referenced_objects_are_kept(db_url: str) -> None:
    store = storage()
    completed = seed_publication()
    orphan = new_object_key()  # e.g. an upload that finished a moment ago
    put_object(store, orphan)

    with get_sessionmaker()() as session:
        young = r.clean_storage(session, store)  # now, with the default grace period
    assert young.orphans_deleted == 0
    assert stored_keys(store) == sorted([completed.object_key, orphan])

    with get_sessionmaker()() as session:
        # The grace period is what kept it: once past, the orphan goes and the referenced object stays.
        old = r.clean_storage(session, store, max_age=timedelta(minutes=5), now=utcnow() + timedelta(minutes=6))
    assert old.orphans_deleted == 1
    assert stored_keys(store) == [completed.object_key]


def test_young_pending_local_upload_is_kept(db_url: str) -> None:
    """(Local storage only: moto dates every pending multipart upload in 2010.)"""
    store = storage()
    assert isinstance(store, LocalStorage)
    failed = seed_publication(TaskStatus.FAILED)
    leave_pending_upload(store, failed.object_key)
    with get_sessionmaker()() as session:
        assert r.clean_storage(session, store).uploads_aborted == 0
    assert pending_keys(store) == [failed.object_key]
    with get_sessionmaker()() as session:
        assert r.clean_storage(session, store, now=utcnow() + LATER).uploads_aborted == 1
    assert pending_keys(store) == []


@pytest.mark.usefixtures("storage_kind")
def test_two_cleanings_at_once_abort_once_and_keep_what_is_referenced(db_url: str) -> None:
    store = storage()
    completed = seed_publication()
    failed = seed_publication(TaskStatus.FAILED)
    leave_pending_upload(store, failed.object_key)
    orphans = [new_object_key() for _ in range(5)]
    for key in orphans:
        put_object(store, key)
    barrier = threading.Barrier(2)
    outcomes: list[r.StorageOutcome] = []
    errors: list[BaseException] = []

    def clean() -> None:
        try:
            with get_sessionmaker()() as session:
                barrier.wait(timeout=10)
                outcomes.append(r.clean_storage(session, storage(), now=utcnow() + LATER))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=clean) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sum(o.uploads_aborted for o in outcomes) == 1
    deleted = sum(o.orphans_deleted for o in outcomes)
    if isinstance(store, LocalStorage):
        assert deleted == len(orphans)  # each counted by the run that removed it
    else:
        assert len(orphans) <= deleted <= 2 * len(orphans)  # S3 does not say whether it was there
    assert stored_keys(store) == [completed.object_key]
    assert pending_keys(store) == []


@pytest.mark.usefixtures("storage_kind", "results_dir")
def test_retention_flow_cleans_storage_and_reports_it(
    db_url: str, prefect_api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = storage()
    completed = seed_publication()
    failed = seed_publication(TaskStatus.FAILED)
    leave_pending_upload(store, failed.object_key)
    orphan = new_object_key()
    put_object(store, orphan)
    monkeypatch.setenv("STUDYPUB_RETENTION__STORAGE_GRACE_HOURS", str(1 / 3600))  # a second
    get_settings.cache_clear()
    time.sleep(1.5)  # what is there now is older than the grace period

    assert run_retention() == counts(uploads_aborted=1, orphans_deleted=1)

    assert object_exists(completed.object_key) and not object_exists(orphan)
    assert stored_keys(store) == [completed.object_key] and pending_keys(store) == []
    assert run_retention() == ZERO


def test_random_keys_are_under_the_prefix_retention_cleans() -> None:
    """Retention looks under ``archives/`` only: the keys publications get must be there."""
    assert new_object_key().startswith(r.ARCHIVES_PREFIX)
