"""Is the service ready to work? Each dependency checked on its own, quickly, in parallel: the database, the
Prefect API, the archive storage, and the PACS (C-ECHO). Reasons name the kind of failure, never a secret."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from studypub.settings import Settings

CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    ok: bool
    ms: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.ok else "down", "ms": self.ms}
        if self.reason:
            body["reason"] = self.reason
        return body


def _reason(exc: BaseException) -> str:
    """The kind of failure only: /ready is public, and messages may name internal hosts (the PACS's address)."""
    from studypub.errors import StudyPubError

    if isinstance(exc, StudyPubError):
        return exc.code
    return type(exc).__name__


def check_database(settings: Settings) -> None:
    from sqlalchemy import text

    from studypub.db import get_engine

    with get_engine(settings).connect() as conn:
        conn.execute(text("SELECT 1"))


def check_prefect(_settings: Settings) -> None:
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set")
    response = httpx.get(f"{str(url).rstrip('/')}/health", timeout=CHECK_TIMEOUT - 1)
    if response.status_code != 200:
        raise RuntimeError(f"Prefect answered {response.status_code}")


def check_storage(settings: Settings) -> None:
    """Reads only: the bucket (or folder) answers a lookup. Nothing is created or written."""
    from studypub.storage import LocalStorage, open_storage

    storage = open_storage(settings)
    if isinstance(storage, LocalStorage):
        # Made at the first upload: ready when it exists or can be made.
        if not (storage.root.is_dir() or os.access(storage.root.parent, os.W_OK)):
            raise RuntimeError("the storage folder cannot be written")
        return
    fs: Any = storage.fs
    fs.invalidate_cache()
    fs.info(storage.bucket)  # the bucket answers (FileNotFoundError when it is missing)


def check_pacs(settings: Settings) -> None:
    from studypub.dicom.scu import echo

    quick = settings.model_copy(
        update={"pacs": settings.pacs.model_copy(update={"acse_timeout": 3, "dimse_timeout": 3, "network_timeout": 3})}
    )
    echo(quick)


CHECKS: dict[str, Callable[[Settings], None]] = {
    "database": check_database,
    "prefect": check_prefect,
    "storage": check_storage,
    "pacs": check_pacs,
}


def _timed(check: Callable[[Settings], None], settings: Settings) -> Check:
    started = time.perf_counter()
    try:
        check(settings)
    except Exception as exc:
        return Check(False, int((time.perf_counter() - started) * 1000), _reason(exc))
    return Check(True, int((time.perf_counter() - started) * 1000))


def readiness(settings: Settings) -> dict[str, Check]:
    """Every check, at once; one that does not answer within CHECK_TIMEOUT counts as down."""
    with ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="ready") as pool:
        futures = {name: pool.submit(_timed, check, settings) for name, check in CHECKS.items()}
        deadline = time.monotonic() + CHECK_TIMEOUT
        results: dict[str, Check] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                results[name] = Check(False, int(CHECK_TIMEOUT * 1000), "no answer in time")
        pool.shutdown(wait=False, cancel_futures=True)
    return results
