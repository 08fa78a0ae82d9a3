"""What every step shares: the retry policy and the task context (settings, session, work paths)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from studypub.db import get_sessionmaker
from studypub.errors import StudyNotFound, is_retryable
from studypub.models import Task
from studypub.overrides import effective_settings
from studypub.publications import get_task
from studypub.settings import Settings, get_settings
from studypub.spool import WorkPaths, work_paths


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry network/storage trouble, not a final verdict."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_retryable(exc)


def retry_if_transient_or_late(task: Any, task_run: Any, state: Any) -> bool:
    """As above, and a study that is not (yet) in the PACS: it can arrive late."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StudyNotFound) or retry_if_transient(task, task_run, state)


# Task results stay out of Prefect's storage: steps hand each other paths and keys through the work folder
# and the app database, and a result pickle could carry identifiers.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@dataclass
class StepContext:
    settings: Settings
    session: Session
    task: Task
    paths: WorkPaths


@contextmanager
def step_context(task_id: str) -> Iterator[StepContext]:
    base = get_settings()
    session = get_sessionmaker(base)()
    try:
        settings = effective_settings(session, base)  # with the administrator's dashboard settings
        task = get_task(session, task_id)
        yield StepContext(settings, session, task, work_paths(settings.work_dir, task_id))
    finally:
        session.close()
