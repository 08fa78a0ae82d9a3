"""The publication flow: find → retrieve → anonymise → zip → upload → link, one flow run per publication.

The flow only orchestrates. Its one parameter is the task id: the PID and accession stay in the app's
database. Retrieve, anonymise, zip and upload are separate retryable tasks that run at the same time, each
following the previous one's output in the work folder (instances are anonymised as they arrive, the archive
is uploaded as it is written). A run that failed and runs again (a retry from the Prefect UI, the same
request again, or a new run the worker's watchdog starts after this one died) resumes after the last step
whose output is still there; the link key and the object key were fixed with the request, so nothing is ever
published twice.

A run holds its publication under a lease it renews; a run that finds its lease taken over (it stopped
renewing long enough for the watchdog to resume the publication elsewhere) ends its process at once, as if
killed, so two runs never work on one publication. A study that is not in the PACS yet ends the run and the
publication waits for it (holding no process and no slot).
"""

from __future__ import annotations

import os
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

from studypub.clinics import clinic_context
from studypub.db import get_sessionmaker
from studypub.errors import Aborted, PublicationError, StudyNotFound
from studypub.i18n import N_
from studypub.logs import details, get_logger
from studypub.models import Step, TaskStatus
from studypub.publications import (
    claim,
    drop_checkpoints,
    fail,
    get_task,
    release_lease,
    renew_lease,
    result_view,
    set_flow_run,
    wait_for_study,
)
from studypub.settings import Settings, get_settings
from studypub.spool import WorkPaths, clear_abort, clear_done, read_done, signal_abort, work_paths
from tasks.anonymise import anonymise
from tasks.archive import archive
from tasks.find import find
from tasks.link import link
from tasks.notify import notify
from tasks.retrieve import retrieve
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
    finished: list[PrefectFuture[Any]] = []
    aborted = False
    while pending:
        done = wait(pending, timeout=0.5).done
        for future in done:
            # Finished already: this records its final state on the future. Without it ``state`` asks the
            # Prefect API, which can still say Running for a moment; a failure read that way was missed and
            # the steps that follow the failed one waited for its output forever.
            future.wait(timeout=0)
        finished.extend(done)
        pending = [f for f in pending if f not in done]
        if not aborted and any(f.state.is_failed() or f.state.is_crashed() for f in finished):
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


LOST_LEASE_EXIT = 70
RENEW_RETRY_SECONDS = 2.0


@contextmanager
def leased(settings: Settings, task_id: str, owner: str) -> Iterator[None]:
    """Keep the publication's lease alive while this run works on it (a dead run's lease expires and the
    watchdog resumes the publication). A run that finds its lease taken over ends its process at once."""
    stop = threading.Event()
    sessions = get_sessionmaker(settings)
    period = settings.runs.lease_seconds / 4

    def beat() -> None:
        wait = period
        while not stop.wait(wait):
            try:
                with sessions() as session:
                    if renew_lease(session, task_id, owner, lease_seconds=settings.runs.lease_seconds):
                        wait = period
                        continue
                    if stop.is_set() or get_task(session, task_id).status == TaskStatus.COMPLETED:
                        return  # this run just finished it
            except Exception:  # a database blip: try again soon (the lease has four beats of margin)
                log.warning("Could not renew the publication's lease", extra=details(task_id=task_id))
                wait = RENEW_RETRY_SECONDS
                continue
            log.error(
                "This run lost its publication to a newer run (it stopped renewing its lease); stopping",
                extra=details(task_id=task_id),
            )
            os._exit(LOST_LEASE_EXIT)

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


def _owned_run(flow_run: Any) -> tuple[Settings, str] | None:
    """(settings, task id) when this flow run still holds its publication; else None (another run holds it
    now, the watchdog resumed it: its work folder is not this run's to touch)."""
    task_id = (flow_run.parameters or {}).get("task_id")
    if not task_id:
        return None
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        task = get_task(session, task_id)
        if task.status != TaskStatus.RUNNING or task.lease_owner != str(flow_run.id):
            return None
    return settings, task_id


def _on_cancelled(_flow: Any, flow_run: Any, _state: Any) -> None:
    """An operator cancelled the run in Prefect: the publication fails, saying so, and keeps no raw file."""
    owned = _owned_run(flow_run)
    if owned is None:
        return
    settings, task_id = owned
    paths = work_paths(settings.work_dir, task_id)
    signal_abort(paths, "the run was cancelled")
    paths.remove_identifiable()
    with get_sessionmaker(settings)() as session:
        fail(
            session,
            settings,
            task_id,
            PublicationError("the run was cancelled in Prefect", code="cancelled"),
            owner=str(flow_run.id),
        )


def _on_crashed(_flow: Any, flow_run: Any, _state: Any) -> None:
    """The run's process died and its runner saw it: an interruption, resumed by the watchdog at once
    (counted against ``runs.max_resumes``) instead of when the lease would have run out."""
    owned = _owned_run(flow_run)
    if owned is None:
        return
    settings, task_id = owned
    work_paths(settings.work_dir, task_id).remove_identifiable()
    with get_sessionmaker(settings)() as session:
        release_lease(session, task_id, str(flow_run.id))


@flow(
    name="publish-study",
    flow_run_name="publish-{task_id}",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
    persist_result=False,
    log_prints=False,
    on_cancellation=[_on_cancelled],  # type: ignore[list-item]
    on_crashed=[_on_crashed],  # type: ignore[list-item]
)
def publish_study(task_id: str) -> dict[str, Any]:
    """Publish one study. Returns the task's id, status and sizes (no identifiers)."""
    settings = get_settings()
    sessions = get_sessionmaker(settings)
    flow_run_id = _current_flow_run_id()
    owner = flow_run_id or f"local-{uuid.uuid4()}"
    with sessions() as session:
        task = get_task(session, task_id)
        settings = clinic_context(session, settings, task.clinic_code).settings  # its clinic's
        if task.status in (TaskStatus.COMPLETED, TaskStatus.EXPIRED, TaskStatus.DELETED):
            # Done, or revoked/expired while the run waited: nothing to do (never publish a deleted study).
            return _summary(session, settings, task_id)
        if not claim(session, task_id, owner, lease_seconds=settings.runs.lease_seconds):
            raise PublicationError(N_("this publication is already being processed by another run"))
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
                    try:
                        find(task_id)
                    except StudyNotFound:
                        with sessions() as session:
                            if wait_for_study(session, settings, task_id, owner=owner):
                                log.info("Waiting for the study to reach the PACS", extra=details(task_id=task_id))
                                return _summary(session, settings, task_id)
                            _log_failed(get_task(session, task_id))  # waited long enough: failed
                        raise
                run_pipeline(settings, task_id, steps, paths)
            link(task_id, owner)
    except BaseException as exc:
        with sessions() as session:
            task = get_task(session, task_id)
            if task.status == TaskStatus.RUNNING and task.lease_owner == owner:
                signal_abort(paths, "the publication failed")
                paths.remove_identifiable()
                _log_failed(fail(session, settings, task_id, exc, owner=owner))
        raise
    _notify(task_id)
    with sessions() as session:
        return _summary(session, settings, task_id)


def _log_failed(task: Any) -> None:
    """The one line an expected failure gets (Prefect's own lines about it carry no traceback)."""
    log.error(
        f"Study {task.accession_number} failed",
        extra=details(
            pid=task.patient_id,
            acsn=task.accession_number,
            status=task.status,
            step=task.step,
            task_id=task.id,
            error_code=task.error_code,
        ),
    )


def _notify(task_id: str) -> None:
    """The patient's messages were queued with the completion: a first attempt now. Never fails the
    publication (the ``notify`` deployment tries again)."""
    try:
        notify(task_id)
    except Exception as exc:
        log.warning("Messages not sent yet", extra=details(task_id=task_id, error=type(exc).__name__))


def _summary(session: Any, settings: Settings, task_id: str) -> dict[str, Any]:
    view = result_view(session, settings, get_task(session, task_id))
    return {k: view[k] for k in ("task_id", "status", "step", "size_bytes", "instances", "withheld")}
