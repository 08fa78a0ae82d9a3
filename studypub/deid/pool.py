"""Worker side of the anonymisation process pool: light imports only (the engine, not Prefect), so a fork
server preloads it in a fraction of a second."""

from __future__ import annotations

from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path

from studypub.deid.engine import DeidOptions, StudyAnonymiser

_worker: StudyAnonymiser | None = None


def pool_context() -> BaseContext:
    """Workers forked from a clean fork server (never from the threaded process that asks), with the
    engine preloaded. Note: multiprocessing still imports the parent's ``__main__`` in each worker; under the
    ``studypub`` console script that is cheap (~0.6 s pool start), under a heavier main it costs seconds,
    which the step hides by starting the pool while the retrieval is still under way."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def warm_up() -> int:
    """A no-op task that makes the pool start its workers now, while nothing has arrived yet."""
    return 0


def init_worker(key: bytes, options: DeidOptions) -> None:
    global _worker
    _worker = StudyAnonymiser(key, options)


def anonymise_one(src: str, dst: str) -> tuple[bool, str | None]:
    """Anonymise one file; returns (withheld, reason). Raises when it cannot be done safely."""
    assert _worker is not None, "init_worker was not called"
    outcome = _worker.anonymise_file(Path(src), Path(dst))
    return bool(outcome.withheld), outcome.withheld_reason
