"""The dispatcher: hands recorded requests to Prefect. The endpoint records the request and answers at
once; this thread (one per API process, and one in the worker, so publications queued by its watchdog or
recorded while the API is down start too) creates the flow run of the ``publish`` deployment with an
idempotency key, so several processes, or a sweep racing a wake-up, still make one run per request.
While Prefect is unreachable the requests wait, with the reason written on them, and start when it is back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any
from uuid import UUID

from sqlalchemy.orm import Session, sessionmaker

from studypub.i18n import N_
from studypub.logs import details, get_logger
from studypub.publications import (
    fail_unstarted,
    mark_dispatched,
    note_dispatch_problem,
    pending_dispatch,
    queued_runs,
    restart_unstarted,
)
from studypub.settings import get_settings

log = get_logger("dispatch")

DEPLOYMENT = "publish-study/publish"
RECONCILE_SWEEPS = 6  # every this many sweep intervals, check that queued publications' runs can still start


def idempotency_key(task_id: str, requeues: int) -> str:
    return f"studypub-publish:{task_id}:{requeues}"


class Dispatcher:
    def __init__(self, sessions: sessionmaker[Session], *, interval: float) -> None:
        self._sessions = sessions
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deployment_id: UUID | None = None
        self._problem: str | None = None
        self._client: Any = None  # one Prefect client for the thread's life (made again after a failure)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._drop_client()

    def _prefect(self) -> Any:
        """The thread's Prefect client, made on first use (and again after a failure dropped it)."""
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True).__enter__()
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)

    def wake(self) -> None:
        """A request was recorded: sweep now rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        last_reconcile = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            backlog = False
            try:
                backlog = self.sweep()
                if time.monotonic() - last_reconcile > RECONCILE_SWEEPS * self._interval:
                    last_reconcile = time.monotonic()
                    self.reconcile()
            except Exception as exc:  # the loop must survive anything; the reason is on the waiting requests
                log.warning("Dispatch sweep failed", extra=details(error=type(exc).__name__))
                self._drop_client()
            if not backlog:
                self._wake.wait(self._interval)

    def sweep(self, limit: int = 100) -> bool:
        """Start the runs of waiting requests. True when more are waiting than one sweep takes."""
        with self._sessions() as session:
            waiting = pending_dispatch(session, limit)
        if not waiting:
            return False
        try:
            self._create_runs(waiting)
        except Exception as exc:
            reason = _problem_reason(exc)
            with self._sessions() as session:
                note_dispatch_problem(session, [t for t, _ in waiting], reason)
            if reason != self._problem:
                log.warning(reason, extra=details(waiting=len(waiting), error=type(exc).__name__))
            self._problem = reason
            self._deployment_id = None
            self._drop_client()
            return False
        if self._problem is not None:
            log.info("Prefect reachable again; waiting publications started")
            self._problem = None
        return len(waiting) == limit

    def reconcile(self) -> int:
        """Queued publications whose run was cancelled, failed or deleted in Prefect before it started would
        wait for ever: mark them FAILED with the reason (the same request, or a Retry in Prefect, runs them
        again). Returns how many."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self._sessions() as session:
            queued = queued_runs(session)
        if not queued:
            return 0
        ids = [UUID(run_id) for _, run_id in queued]
        runs = self._prefect().read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
        )
        states = {str(r.id): r.state for r in runs}
        failed = 0
        for task_id, run_id in queued:
            if run_id not in states:
                reason = N_("its Prefect run was deleted before it started")
            elif (state := states[run_id]) is not None and state.is_final():
                reason = N_("its Prefect run ended (%(state)s) before it started", state=state.name)
                if state.is_crashed() or state.is_failed():  # the worker died while starting it: heal
                    with self._sessions() as session:
                        if restart_unstarted(session, task_id, run_id, get_settings().runs.max_resumes):
                            log.warning(
                                "A queued publication's run died before it started; a new run starts",
                                extra=details(task_id=task_id),
                            )
                            self._wake.set()
                            continue
            else:
                continue
            with self._sessions() as session:
                if fail_unstarted(session, task_id, run_id, reason):
                    failed += 1
                    log.warning("A queued publication's run will not start", extra=details(task_id=task_id))
        return failed

    def _create_runs(self, waiting: list[tuple[str, int]]) -> None:
        client = self._prefect()
        if self._deployment_id is None:
            self._deployment_id = client.read_deployment_by_name(DEPLOYMENT).id
        for task_id, requeues in waiting:
            run = client.create_flow_run_from_deployment(
                self._deployment_id,
                parameters={"task_id": task_id},
                idempotency_key=idempotency_key(task_id, requeues),
            )
            with self._sessions() as session:
                mark_dispatched(session, task_id, requeues, str(run.id))
            log.info("Publication run created", extra=details(task_id=task_id, flow_run_id=str(run.id)))


def _problem_reason(exc: BaseException) -> str:
    from prefect.exceptions import ObjectNotFound

    if isinstance(exc, ObjectNotFound):
        return N_("waiting: the publish deployment is not registered yet (is `studypub worker` running?)")
    return N_("waiting: Prefect is unreachable (%(error)s); the run starts when it is back", error=type(exc).__name__)
