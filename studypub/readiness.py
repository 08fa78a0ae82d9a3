"""Is the service ready to work? Each dependency checked on its own, quickly, in parallel: the database, the
Prefect API, the archive storage, and the PACS (C-ECHO) of every enabled clinic. Reasons name the kind of
failure (and a PACS's clinic by its code), never a secret or an internal address.

Several clinics, several PACS: the PACS check is ``ok`` when every clinic's PACS answers, ``degraded`` when
some do (the service still serves: links, the dashboard and the other clinics' publications; each clinic's
own state is in ``clinics``), and ``down`` when none does. Only ``down`` makes the service not ready (503),
so a single clinic's instance answers exactly as before. Clinics sharing one PACS are asked once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from studypub.settings import Settings

CHECK_TIMEOUT = 5.0
LIST_TIMEOUT = 1.5  # reading the clinics' PACS from the database; else the last ones read are checked
PACS_AT_ONCE = 16  # distinct PACS echoed in parallel (more wait their turn within CHECK_TIMEOUT)


@dataclass(frozen=True)
class Check:
    ok: bool  # the service can rely on it (a degraded PACS check still serves)
    ms: int
    reason: str | None = None
    clinics: Mapping[str, Check] | None = None  # the PACS check: each enabled clinic's, by clinic code

    @property
    def status(self) -> str:
        if not self.ok:
            return "down"
        return "degraded" if self.clinics and not all(c.ok for c in self.clinics.values()) else "ok"

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "ms": self.ms}
        if self.reason:
            body["reason"] = self.reason
        if self.clinics is not None:
            body["clinics"] = {code: check.as_dict() for code, check in sorted(self.clinics.items())}
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
}


def clinics_pacs(sessions: Callable[[], Any], settings: Settings) -> dict[str, Settings]:
    """Each enabled clinic's effective settings (its PACS as the dashboard or ``studypub clinic`` set it), by
    code. ``sessions`` makes a system session."""
    from studypub.clinics import clinic_context, list_clinics

    with sessions() as session:
        codes = [c.code for c in list_clinics(session) if not c.disabled]
        return {code: clinic_context(session, settings, code).settings for code in codes}


def _peer(settings: Settings) -> tuple[Any, ...]:
    pacs = settings.pacs
    return (pacs.host, pacs.port, pacs.called_ae, pacs.calling_ae)


def _pacs(results: Mapping[str, Check]) -> Check:
    """The clinics' PACS as one check: it serves while one clinic's PACS answers; its reason names the clinics
    whose PACS does not, by code."""
    down = [f"{code}: {check.reason}" for code, check in sorted(results.items()) if not check.ok]
    return Check(
        ok=len(down) < len(results),
        ms=max((c.ms for c in results.values()), default=0),
        reason=", ".join(down) or None,
        clinics=dict(results),
    )


def _timed(check: Callable[[Settings], None], settings: Settings) -> Check:
    started = time.perf_counter()
    try:
        check(settings)
    except Exception as exc:
        return Check(False, int((time.perf_counter() - started) * 1000), _reason(exc))
    return Check(True, int((time.perf_counter() - started) * 1000))


def readiness(
    settings: Settings,
    clinics: Callable[[], Mapping[str, Settings]],
    known: Mapping[str, Settings],
) -> tuple[dict[str, Check], Mapping[str, Settings]]:
    """Every check, at once; one that does not answer within CHECK_TIMEOUT counts as down. ``clinics`` reads
    each enabled clinic's settings; when it fails or is slow, ``known`` (the last ones read) are checked.
    Returns the checks and the clinics' settings checked."""
    started = time.monotonic()
    deadline = started + CHECK_TIMEOUT
    pool = ThreadPoolExecutor(max_workers=len(CHECKS) + 1 + PACS_AT_ONCE, thread_name_prefix="ready")
    try:
        futures = {name: pool.submit(_timed, check, settings) for name, check in CHECKS.items()}
        listing = pool.submit(clinics)
        try:
            by_clinic = listing.result(timeout=LIST_TIMEOUT) or known
        except Exception:  # the database check reports why
            by_clinic = known
        peers: dict[tuple[Any, ...], list[str]] = {}
        for code, clinic_settings in by_clinic.items():
            peers.setdefault(_peer(clinic_settings), []).append(code)
        echoes = {key: pool.submit(_timed, check_pacs, by_clinic[codes[0]]) for key, codes in peers.items()}
        results: dict[str, Check] = {}
        for name, future in futures.items():
            results[name] = _result(future, deadline)
        per_clinic: dict[str, Check] = {}
        for key, future in echoes.items():
            answer = _result(future, deadline)
            per_clinic.update({code: answer for code in peers[key]})
        results["pacs"] = _pacs(per_clinic)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results, by_clinic


def _result(future: Any, deadline: float) -> Check:
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[no-any-return]
    except FutureTimeout:
        return Check(False, int(CHECK_TIMEOUT * 1000), "no answer in time")
