"""Liveness and readiness, for Docker health checks, load balancers and people."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from studypub.clinics import normalise_code
from studypub.readiness import clinics_pacs, readiness

router = APIRouter(tags=["operations"])

CACHE_SECONDS = 2.0  # /ready is public: a flood of requests must not become a flood of C-ECHOs
_lock = threading.Lock()


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database, Prefect API, storage and each clinic's PACS, each reported",
    responses={
        503: {
            "description": "At least one dependency is down (the PACS: no clinic's answers); each one's state is "
            "in the body, each clinic's PACS under checks.pacs.clinics."
        }
    },
)
def ready(request: Request) -> JSONResponse:
    state = request.app.state
    cached: tuple[float, dict[str, Any]] | None = getattr(state, "ready_answer", None)
    fresh = cached is not None and time.monotonic() - cached[0] <= CACHE_SECONDS
    # One check at a time; requests meanwhile get the last answer instead of queueing (a flood of /ready
    # must not take the worker threads the link pages and the MIS need).
    if not fresh and _lock.acquire(blocking=cached is None):
        try:
            settings = state.settings
            # Every enabled clinic's PACS as set in the database; while the database cannot say, the last ones
            # read (at first, the environment's PACS as the default clinic's).
            known = getattr(state, "ready_clinics", None) or {normalise_code(settings.default_clinic_code): settings}
            checks, state.ready_clinics = readiness(
                settings, lambda: clinics_pacs(state.system_sessions, settings), known
            )
            body = {
                "status": "ready" if all(c.ok for c in checks.values()) else "not ready",
                "checks": {name: check.as_dict() for name, check in checks.items()},
            }
            cached = (time.monotonic(), body)
            state.ready_answer = cached
        finally:
            _lock.release()
    cached = cached or state.ready_answer
    body = cached[1]
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)
