"""The publication flow: find → retrieve → anonymise → zip → upload → link, one flow run per publication.

The flow only orchestrates. Its one parameter is the task id: the PID and accession stay in the app's
database. Retrieve, anonymise, zip and upload are separate retryable tasks that run at the same time, each
following the previous one's output in the work folder (instances are anonymised as they arrive, the archive
is uploaded as it is written). A run that failed and runs again (a retry from the Prefect UI, or the same
request again) resumes after the last step whose output is still there; the link key and the object key were
fixed with the request, so nothing is ever published twice.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from studypub.db import get_sessionmaker
from studypub.errors import Aborted, PublicationError
from studypub.logs import details, get_logger
from studypub.models import Step, TaskStatus
from studypub.publications import (
    LEASE_SECONDS,
    claim,
    drop_checkpoints,
    fail,
    get_task,
    renew_lease,
    result_view,
    set_flow_run,
)
from studypub.settings import Settings, get_settings
from studypub.spool import WorkPaths, clear_abort, clear_done, read_done, signal_abort, work_paths
from tasks.anonymise import anonymise
from tasks.archive import archive
from tasks.find import find
from tasks.link import link
from tasks.retrieve import RETRIEVE_LIMIT, retrieve
from tasks.upload import upload

log = get_logger("flows.publish")


def pipeline_tasks(settings: Settings) -> dict[Step, Any]:
    """The overlapping steps, with the retry policy from the settings for the ones that touch the network."""
    policy: dict[str, Any] = {
        "retries": settings.prefect.task_retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=settings.prefect.task_retry_delay),
    }
    return {
        Step.RETRIEVE: retrieve.with_options(**policy),
        Step.ANONYMISE: anonymise,
        Step.ZIP: archive,
        Step.UPLOAD: upload.with_options(**policy),
    }


_MARKERS = {Step.RETRIEVE: "raw", Step.ANONYMISE: "clean", Step.ZIP: "archive"}


def plan(checkpoints: dict[str, Any], paths: WorkPaths) -> list[Step]:
    """The pipeline steps still to run: everything after the last step whose output is still available."""
    if Step.UPLOAD.value in checkpoints:
        return []
    if read_done(paths, "archive") is not None and paths.archive.exists():
        return [Step.UPLOAD]
    if read_done(paths, "clean") is not None:
        return [Step.ZIP, Step.UPLOAD]
    if read_done(paths, "raw") is not None:
        return [Step.ANONYMISE, Step.ZIP, Step.UPLOAD]
    return [Step.RETRIEVE, Step.ANONYMISE, Step.ZIP, Step.UPLOAD]


def reset_outputs(paths: WorkPaths, steps: list[Step]) -> None:
    """Remove what an interrupted earlier run left of the steps about to run again."""
    if Step.RETRIEVE in steps:
        shutil.rmtree(paths.raw, ignore_errors=True)
    if Step.ANONYMISE in steps:
        shutil.rmtree(paths.clean, ignore_errors=True)
    if Step.ZIP in steps:
        paths.archive.unlink(missing_ok=True)
    clear_done(paths, *(_MARKERS[s] for s in steps if s in _MARKERS))
    clear_abort(paths)
    paths.create()


def run_pipeline(settings: Settings, task_id: str, steps: list[Step], paths: WorkPaths) -> None:
    """Submit the overlapping steps, and on the first failure stop the others and raise its cause."""
    tasks = pipeline_tasks(settings)
    futures: list[tuple[Step, PrefectFuture[Any]]] = [(s, tasks[s].submit(task_id)) for s in steps]
    pending = [f for _, f in futures]
    aborted = False
    while pending:
        done = wait(pending, timeout=0.5).done
        pending = [f for f in pending if f not in done]
        if not aborted and any(f.state.is_failed() or f.state.is_crashed() for f in done):
            signal_abort(paths, "a step failed")
            aborted = True
    failures: list[tuple[Step, BaseException]] = []
    for step, future in futures:
        try:
            future.result(raise_on_failure=True)
        except BaseException as exc:
            failures.append((step, exc))
    if failures:
        step, root = next(((s, e) for s, e in failures if not isinstance(e, Aborted)), failures[0])
        # The steps overlap: the one that failed is not always the first unfinished one. Say which it was.
        root.failed_step = step.value  # type: ignore[attr-defined]
        raise root


@contextmanager
def leased(settings: Settings, task_id: str, owner: str) -> Iterator[None]:
    """Keep the task's lease alive while this run works on it (a crashed run's lease expires)."""
    stop = threading.Event()
    sessions = get_sessionmaker(settings)

    def beat() -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            try:
                with sessions() as session:
                    renew_lease(session, task_id, owner)
            except Exception:  # a database blip must not end the heartbeat; the next beat tries again
                log.warning("Could not renew the publication's lease", extra=details(task_id=task_id))

    thread = threading.Thread(target=beat, name="lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def _mark_ended(reason: str, code: str) -> Any:
    """A flow-run state hook: a run cancelled by an operator or crashed leaves a FAILED task with a reason,
    not a RUNNING one (the next run resumes it)."""

    def hook(_flow: Any, flow_run: Any, _state: Any) -> None:
        task_id = (flow_run.parameters or {}).get("task_id")
        if not task_id:
            return
        settings = get_settings()
        paths = work_paths(settings.work_dir, task_id)
        signal_abort(paths, reason)
        paths.remove_identifiable()
        with get_sessionmaker(settings)() as session:
            task = get_task(session, task_id)
            if task.status == TaskStatus.RUNNING:
                fail(session, task_id, PublicationError(reason, code=code))

    return hook


@flow(
    name="publish-study",
    flow_run_name="publish-{task_id}",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
    persist_result=False,
    log_prints=False,
    on_cancellation=[_mark_ended("the run was cancelled in Prefect", "cancelled")],
    on_crashed=[_mark_ended("the run crashed; operators: see the Prefect run", "crashed")],
)
def publish_study(task_id: str) -> dict[str, Any]:
    """Publish one study. Returns the task's id, status and sizes (no identifiers)."""
    settings = get_settings()
    sessions = get_sessionmaker(settings)
    flow_run_id = _current_flow_run_id()
    owner = flow_run_id or f"local-{uuid.uuid4()}"
    with sessions() as session:
        task = get_task(session, task_id)
        if task.status in (TaskStatus.COMPLETED, TaskStatus.EXPIRED, TaskStatus.DELETED):
            # Done, or revoked/expired while the run waited: nothing to do (never publish a deleted study).
            return _summary(session, settings, task_id)
        if not claim(session, task_id, owner):
            raise PublicationError("this publication is already being processed by another run")
        set_flow_run(session, task_id, flow_run_id)
        checkpoints = dict(get_task(session, task_id).checkpoints or {})
    paths = work_paths(settings.work_dir, task_id)
    try:
        with leased(settings, task_id, owner):
            steps = plan(checkpoints, paths)
            with sessions() as session:
                drop_checkpoints(session, task_id, [*steps, Step.LINK])
            if steps:
                reset_outputs(paths, steps)
                if Step.RETRIEVE in steps and Step.FIND.value not in checkpoints:
                    find.with_options(
                        retries=settings.pacs.find_attempts - 1,
                        retry_delay_seconds=settings.pacs.find_retry_delay,
                    )(task_id)
                run_pipeline(settings, task_id, steps, paths)
            link(task_id)
    except BaseException as exc:
        signal_abort(paths, "the publication failed")
        paths.remove_identifiable()
        with sessions() as session:
            task = fail(session, task_id, exc)
            log.error(
                f"Study {task.accession_number} failed",
                extra=details(
                    pid=task.patient_id,
                    acsn=task.accession_number,
                    status=TaskStatus.FAILED,
                    step=task.step,
                    task_id=task_id,
                    error_code=task.error_code,
                ),
            )
        raise
    with sessions() as session:
        return _summary(session, settings, task_id)


def _summary(session: Any, settings: Settings, task_id: str) -> dict[str, Any]:
    view = result_view(session, settings, get_task(session, task_id))
    return {k: view[k] for k in ("task_id", "status", "step", "size_bytes", "instances", "withheld")}


def ensure_prefect_objects(settings: Settings | None = None) -> None:
    """Create what the flow relies on in Prefect: the retrieval concurrency limit (start-up work)."""
    from prefect.client.orchestration import get_client

    s = settings or get_settings()
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(RETRIEVE_LIMIT, s.pacs.max_concurrent_retrievals)
