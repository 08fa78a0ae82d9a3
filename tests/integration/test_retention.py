"""The retention flow through real parts: a real Prefect server (the flow runs as a Prefect flow run), the
app's database on SQLite and PostgreSQL, archives in moto's S3 server over HTTP or in a local folder; and
`studypub worker` serving the retention deployment next to publish."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from studypub import retention as r
from studypub.db import get_sessionmaker
from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus, utcnow
from studypub.publications import claim_for_deletion, extend, get_task
from studypub.settings import get_settings
from studypub.storage import open_storage
from tests.support.api import Seeded, past, seed_publication
from tests.support.net import LOOPBACK, free_port, wait_for
from tests.support.retention import ZERO, counts
from tests.support.worker import ARTIFACTS, STUDYPUB, find_deployment, running_worker


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: Any, s3_bucket: str) -> str:
    """Storage in moto's S3 server (over HTTP) for this test; returns the bucket."""
    for key, value in {
        "STUDYPUB_STORAGE__URL": f"s3://{s3_bucket}/published",
        "STUDYPUB_STORAGE__ENDPOINT_URL": s3_server.endpoint_url,
        "STUDYPUB_STORAGE__ACCESS_KEY_ID": "testing",
        "STUDYPUB_STORAGE__SECRET_ACCESS_KEY": "testing-secret",
        "STUDYPUB_STORAGE__REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return s3_bucket


@pytest.fixture(params=["local", "s3"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "s3":
        request.getfixturevalue("s3_env")
    return str(request.param)


@pytest.fixture
def results_dir(tmp_path: Path, prefect_api_url: str) -> Iterator[Path]:
    """Prefect's result storage (PREFECT_LOCAL_STORAGE_PATH) for this test, inside the test's tmp dir."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    path = tmp_path / "prefect-results"
    path.mkdir()
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: path}):
        yield path


def run_retention() -> dict[str, Any]:
    from flows.retention import retention

    return retention()


def object_exists(key: str) -> bool:
    return bool(open_storage(get_settings()).exists(key))


def task_of(task_id: str) -> Task:
    with get_sessionmaker()() as session:
        return get_task(session, task_id)


def deleted_properly(seeded: Seeded) -> bool:
    with get_sessionmaker()() as session:
        task = get_task(session, seeded.task_id)
        pub = session.scalars(select(PublishedStudy).where(PublishedStudy.task_id == seeded.task_id)).first()
        events = session.scalars(
            select(AuditEvent.action).where(AuditEvent.task_id == seeded.task_id, AuditEvent.action == r.DELETED_ACTION)
        ).all()
    return (
        task.status == TaskStatus.DELETED
        and task.deleted_at is not None
        and (pub is None or pub.deleted_at is not None)
        and len(events) == 1
        and not object_exists(seeded.object_key)
    )


def test_retention_deletes_expired_archives_and_nothing_else(
    db_url: str, prefect_api_url: str, storage_kind: str, results_dir: Path
) -> None:
    expired = [seed_publication(save_till=past(1)), seed_publication(save_till=past(40))]
    live = seed_publication()
    running = seed_publication(TaskStatus.RUNNING, save_till=past(2))
    leftover = seed_publication()  # claimed by an interrupted run, or a revocation whose delete failed
    extended = seed_publication(save_till=past(1))
    with get_sessionmaker()() as session:
        assert claim_for_deletion(session, leftover.task_id, only_if_due=False)
        extend(session, get_settings(), extended.task_id, utcnow() + timedelta(days=3), actor="test")
    assert all(object_exists(s.object_key) for s in [*expired, live, leftover, extended])

    started = time.monotonic()
    report = run_retention()

    assert report == counts(archives_deleted=3)
    for seeded in [*expired, leftover]:
        assert deleted_properly(seeded), seeded.task_id
    assert task_of(live.task_id).status == TaskStatus.COMPLETED and object_exists(live.object_key)
    assert task_of(extended.task_id).status == TaskStatus.COMPLETED and object_exists(extended.object_key)
    assert task_of(running.task_id).status == TaskStatus.RUNNING
    assert time.monotonic() - started < 30

    assert run_retention() == ZERO  # idempotent: nothing left to do


class SlowProxy:
    """A TCP proxy in front of the S3 server that holds every request chunk for ``delay`` seconds: a slow
    storage, so that two retention runs are surely deleting at the same time."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.port = free_port()
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._sockets: list[socket.socket] = [self._listener]

    def __enter__(self) -> SlowProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=10)
            except OSError:
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                time.sleep(delay)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_two_retention_runs_at_once_delete_and_count_each_once(
    db_url: str, prefect_api_url: str, s3_env: str, s3_server: Any, tmp_path: Path
) -> None:
    """Two `studypub retention` processes at the same moment (the scheduled run and an operator's), against a
    slow storage so that they overlap: every archive is deleted, recorded and counted by exactly one of them.
    (Prefect runs flows called from threads of one process one after the other, so processes it is.)"""
    seeded = [seed_publication(save_till=past(1)) for _ in range(16)]
    with SlowProxy(s3_server.port, delay=0.8) as proxy:  # ~13 s of deletions: the second start falls inside
        env = dict(
            os.environ,
            PREFECT_API_URL=prefect_api_url,
            STUDYPUB_STORAGE__ENDPOINT_URL=f"http://{LOOPBACK}:{proxy.port}",
        )
        procs = [
            subprocess.Popen(
                [str(STUDYPUB), "retention"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [proc.communicate(timeout=180) for proc in procs]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i, (out, err) in enumerate(outputs):
        (ARTIFACTS / f"retention-concurrent-{i}-{time.time_ns()}.log").write_text(out + err)
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out.strip().splitlines()[-1])["report"] for out, _ in outputs]

    assert sum(rep["archives_deleted"] for rep in reports) == len(seeded)
    assert all(rep["archives_deleted"] > 0 for rep in reports), reports  # they did overlap
    assert all(rep["deletions_failed"] == 0 and rep["steps_failed"] == 0 for rep in reports)
    for s in seeded:
        assert deleted_properly(s), s.task_id
    listing = s3_server.client().list_objects_v2(Bucket=s3_env)
    assert listing.get("KeyCount", 0) == 0
    # Logs: task ids and counts, never the identifiers.
    with get_sessionmaker()() as session:
        identifiers = session.execute(select(Task.patient_id, Task.accession_number)).all()
    logs = "".join(err for _, err in outputs)
    assert all(pid not in logs and acsn not in logs for pid, acsn in identifiers)
    assert all(s.task_id in logs for s in seeded)


def test_storage_down_fails_the_run_visibly_and_the_next_run_finishes(
    db_url: str, prefect_api_url: str, s3_env: str, s3_server: Any, results_dir: Path
) -> None:
    from prefect.client.orchestration import get_client

    from flows.retention import retention

    seeded = seed_publication(save_till=past(1))
    s3_server.stop()
    try:
        state = retention(return_state=True)
        assert state.is_failed()
        assert "1 archive deletion(s) failed" in (state.message or "")
        assert state.state_details.flow_run_id
        with get_client(sync_client=True) as client:  # what an operator sees in the Prefect UI
            run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.state is not None and run.state.is_failed()
        with pytest.raises(r.RetentionIncomplete) as failed:
            run_retention()
        assert failed.value.report == counts(deletions_failed=1)
        task = task_of(seeded.task_id)
        assert task.status == TaskStatus.EXPIRED and task.deleted_at is None  # kept for the next run
    finally:
        s3_server.start()

    assert run_retention() == counts(archives_deleted=1)
    assert deleted_properly(seeded)


def _age_tree(path: Path, hours: float) -> None:
    stamp = time.time() - hours * 3600
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in (*filenames, *dirnames):
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))


def test_work_folders_results_and_identifiers_through_the_flow(
    db_url: str, prefect_api_url: str, results_dir: Path, isolated_env: Path
) -> None:
    long_deleted = seed_publication(save_till=past(33))
    assert run_retention()["archives_deleted"] == 1
    with get_sessionmaker()() as session:
        session.execute(update(Task).where(Task.id == long_deleted.task_id).values(deleted_at=past(31)))
        session.commit()

    old_done, new_done = seed_publication(), seed_publication()
    running = seed_publication(TaskStatus.RUNNING)
    folders = {}
    for name, seeded, hours in (("old", old_done, 25), ("new", new_done, 2), ("running", running, 72)):
        folder = isolated_env / "tasks" / seeded.task_id
        (folder / "clean").mkdir(parents=True)
        (folder / "clean" / "1.dcm").write_bytes(b"x")
        _age_tree(folder, hours)
        folders[name] = folder
    old_result, new_result = results_dir / "3f2a9c", results_dir / "8b1e0d"
    for path, days in ((old_result, 8), (new_result, 1)):
        path.write_bytes(b"pickle")
        os.utime(path, (time.time() - days * 86400,) * 2)

    report = run_retention()

    assert report == counts(work_folders_removed=1, result_files_removed=1, identifiers_erased=1)
    assert not folders["old"].exists() and folders["new"].exists() and folders["running"].exists()
    assert not old_result.exists() and new_result.exists()
    task = task_of(long_deleted.task_id)
    assert task.patient_id is None and task.accession_number is None and task.identifiers_erased_at is not None
    assert run_retention() == ZERO


# --- served by `studypub worker` ----------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_serves_retention_on_its_schedule_next_to_publish(
    db_url: str, prefect_api_url: str, tmp_path: Path
) -> None:
    """One `studypub worker` process serves both deployments; retention carries the cron setting and a limit
    of one run at a time (a second run asked for meanwhile is cancelled); a run started through the deployment
    deletes an expired archive."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    seeded = seed_publication(save_till=past(1))
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_api_url,
        STUDYPUB_PACS__SCP_PORT=str(free_port()),
        STUDYPUB_PACS__SCP_BIND=LOOPBACK,
        STUDYPUB_RETENTION__CRON="17 3 * * *",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    artifact = f"worker-retention-{time.time_ns()}.log"
    with running_worker(env, tmp_path / "worker.log", artifact):
        with get_client(sync_client=True) as client:

            def registered_by_this_worker() -> Any:
                # The session's Prefect server may hold the deployment from an earlier worker (default cron):
                # wait for this worker's registration, which replaces the schedule.
                found = find_deployment(client, "retention/retention")
                crons = [s.schedule.cron for s in found.schedules] if found else []
                return found if crons == ["17 3 * * *"] else None

            retention = wait_for(registered_by_this_worker, 90, "the retention deployment with the cron setting")
            assert wait_for(lambda: find_deployment(client, "publish-study/publish"), 30, "the publish deployment")
            [schedule] = retention.schedules
            assert schedule.active
            assert retention.global_concurrency_limit is not None and retention.global_concurrency_limit.limit == 1
            assert retention.concurrency_options.collision_strategy == "CANCEL_NEW"

            # Two runs asked for at once (the schedule and an operator): never both at the same time. Usually
            # the second is cancelled; when the first ended before the runner took the second (a loaded
            # machine), the second ran after it.
            runs: list[Any] = [run_deployment("retention/retention", timeout=0) for _ in range(2)]

            def final_states() -> list[Any] | None:
                states = [client.read_flow_run(run.id).state for run in runs]
                return [s for s in states if s and s.is_final()] if all(s and s.is_final() for s in states) else None

            states = wait_for(final_states, 120, "the runs")
            kinds = sorted(s.type.value for s in states)
            if kinds == ["COMPLETED", "COMPLETED"]:
                first, second = sorted((client.read_flow_run(run.id) for run in runs), key=lambda r: r.start_time)
                assert second.start_time >= first.end_time, "two retention runs overlapped"
            else:
                assert kinds == ["CANCELLED", "COMPLETED"], states
        assert deleted_properly(seeded)
