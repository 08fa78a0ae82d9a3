"""A failure names the step that failed, even when overlapping steps were still running before it."""

from __future__ import annotations

from studypub.db import get_sessionmaker
from studypub.errors import StorageUnavailable
from studypub.publications import fail, get_task
from studypub.settings import get_settings
from tests.support.api import seed_publication


def test_the_failed_step_is_the_one_that_raised(db_url: str) -> None:
    seeded = seed_publication(status="RUNNING")
    exc = StorageUnavailable("Upload to storage failed: EndpointConnectionError")
    exc.failed_step = "upload"  # type: ignore[attr-defined]  # what flows.publish.run_pipeline sets
    with get_sessionmaker()() as session:
        assert get_task(session, seeded.task_id).step == "find"  # the first unfinished step
        task = fail(session, get_settings(), seeded.task_id, exc)
        assert task.status == "FAILED" and task.step == "upload"
        assert (task.reason or "").startswith("upload: Upload to storage failed: EndpointConnectionError; tried again")


def test_a_run_cancelled_in_prefect_says_so(db_url: str) -> None:
    from prefect.exceptions import TerminationSignal

    seeded = seed_publication(status="RUNNING")
    with get_sessionmaker()() as session:
        task = fail(session, get_settings(), seeded.task_id, TerminationSignal(signal=15))
        assert task.error_code == "cancelled" and task.reason == "find: the run was cancelled in Prefect"
