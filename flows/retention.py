"""The retention flow, on a schedule (``studypub worker`` serves it with ``retention.cron``; ``studypub
retention`` runs it once): delete the archives whose storage period has passed (links answer 410), keep
storage clean (abort uploads a killed process left pending, delete objects no publication references), clean
work folders and Prefect's persisted results older than the settings, and erase the identifiers of
publications deleted long enough ago.

The flow only orchestrates; the work is in ``studypub.retention``. Idempotent and safe to run twice at once
(each item is done and counted by one run). A step that fails does not stop the others; a publication whose
archive could not be deleted (storage down) stays EXPIRED for the next run, and the run ends FAILED with the
counts in its message, so operators see it in the Prefect UI. It returns counts and logs task ids, never
identifiers.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from prefect import State, flow, task

from studypub import retention as r
from studypub.db import get_sessionmaker
from studypub.logs import details, get_logger
from studypub.settings import get_settings
from studypub.storage import open_storage
from tasks.common import TASK_DEFAULTS

log = get_logger("flows.retention")

MAX_IDS_LOGGED = 200  # task ids in one summary line; the counts are always complete


def _owner() -> str:
    from prefect.runtime import flow_run

    return f"retention-{flow_run.id or uuid.uuid4()}"


@task(name="delete-expired-archives", **TASK_DEFAULTS)
def delete_expired_archives(owner: str) -> dict[str, int]:
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        outcome = r.delete_expired(session, open_storage(settings), owner=owner)
    return {"archives_deleted": len(outcome.deleted), "deletions_failed": len(outcome.failed)}


@task(name="clean-storage", **TASK_DEFAULTS)
def clean_storage() -> dict[str, int]:
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        outcome = r.clean_storage(
            session, open_storage(settings), max_age=timedelta(hours=settings.retention.storage_grace_hours)
        )
    return {"uploads_aborted": outcome.uploads_aborted, "orphans_deleted": outcome.orphans_deleted}


@task(name="clean-work-folders", **TASK_DEFAULTS)
def clean_work_folders() -> dict[str, int]:
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        outcome = r.clean_work_folders(
            session, settings.work_dir, max_age=timedelta(hours=settings.retention.work_max_age_hours)
        )
    if outcome.removed:
        known = [name for name in outcome.removed[:MAX_IDS_LOGGED] if _is_task_id(name)]
        log.info(
            "Work folders removed",
            extra=details(count=len(outcome.removed), orphans=outcome.orphans, task_ids=known),
        )
    return {"work_folders_removed": len(outcome.removed)}


@task(name="clean-prefect-results", **TASK_DEFAULTS)
def clean_prefect_results() -> dict[str, int]:
    settings = get_settings()
    removed = r.clean_result_files(
        r.prefect_results_path(),
        max_age=timedelta(days=settings.retention.results_max_age_days),
        work_dir=settings.work_dir,
    )
    if removed:
        log.info("Prefect result files removed", extra=details(count=removed))
    return {"result_files_removed": removed}


@task(name="erase-identifiers", **TASK_DEFAULTS)
def erase_identifiers() -> dict[str, int]:
    settings = get_settings()
    with get_sessionmaker(settings)() as session:
        erased = r.erase_identifiers(session, after=timedelta(days=settings.retention.erase_identifiers_after_days))
    return {"identifiers_erased": len(erased)}


def _is_task_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


@flow(name="retention", persist_result=False, log_prints=False)
def retention() -> dict[str, int]:
    """Run every retention step once. Returns counts (no identifiers); raises ``RetentionIncomplete`` (the
    run ends FAILED) when a deletion or a step failed, after doing all the rest."""
    owner = _owner()
    report: dict[str, int] = {
        "archives_deleted": 0,
        "deletions_failed": 0,
        "uploads_aborted": 0,
        "orphans_deleted": 0,
        "work_folders_removed": 0,
        "result_files_removed": 0,
        "identifiers_erased": 0,
        "steps_failed": 0,
    }
    # One step after the other; a failed step does not stop the next. Storage that has just failed archive
    # deletions is not listed as well (that would report the same outage twice): the next run cleans it.
    deleted = delete_expired_archives(owner, return_state=True)
    states: dict[str, State[Any]] = {"delete-expired-archives": deleted}
    if deleted.is_completed() and not deleted.result()["deletions_failed"]:
        states["clean-storage"] = clean_storage(return_state=True)
    else:
        log.info("Storage cleaning skipped: archive deletions failed in this run; the next run cleans")
    states |= {
        "clean-work-folders": clean_work_folders(return_state=True),
        "clean-prefect-results": clean_prefect_results(return_state=True),
        "erase-identifiers": erase_identifiers(return_state=True),
    }
    failed_steps: list[str] = []
    for name, state in states.items():
        if state.is_completed():
            report.update(state.result())
        else:
            failed_steps.append(name)
    report["steps_failed"] = len(failed_steps)
    log.info("Retention finished", extra=details(**report, failed_steps=failed_steps or None))
    if report["deletions_failed"] or failed_steps:
        problems = []
        if report["deletions_failed"]:
            problems.append(f"{report['deletions_failed']} archive deletion(s) failed (they stay EXPIRED)")
        if failed_steps:
            problems.append(f"step(s) failed: {', '.join(failed_steps)}")
        raise r.RetentionIncomplete(f"retention incomplete: {'; '.join(problems)}; counts: {report}", report)
    return report
