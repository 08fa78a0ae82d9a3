"""A failure names the step that failed, even when overlapping steps were still running before it."""

from __future__ import annotations

from studypub.db import get_sessionmaker
from studypub.errors import StorageUnavailable
from studypub.publications import fail, get_task
from tests.support.api import seed_publication


def test_the_failed_step_is_the_one_that_raised(db_url: str) -> None:
    seeded = seed_publication(status="RUNNING")
    exc = StorageUnavailable("Upload to storage failed: EndpointConnectionError")
    exc.failed_step = "upload"  # type: ignore[attr-defined]  # what flows.publish.run_pipeline sets
    with get_sessionmaker()() as session:
        assert get_task(session, seeded.task_id).step == "find"  # the first unfinished step
        task = fail(session, seeded.task_id, exc)
        assert task.status == "FAILED" and task.step == "upload"
        assert task.reason == "upload: Upload to storage failed: EndpointConnectionError"
