"""``studypub worker``: the process that runs publications and retention. It holds the Storage SCP (the
C-MOVE destination) and serves, from one ``serve()`` call, the ``publish`` deployment (runs started through
it, and an operator's "Retry" in the Prefect UI, execute here) and the ``retention`` deployment on its cron
schedule (one run at a time; a run due while one is still going is cancelled). Stopping the worker pauses
the schedule until it starts again. Stops cleanly on SIGINT/SIGTERM.

Nobody watches a small clinic's worker, so it heals what it can by itself: its watchdog resumes publications
whose run died and starts the ones whose next attempt is due, and its own dispatcher starts queued runs even
while the API is down. It runs at most ``runs.max_concurrent`` publications at once (each is a process of
~200 MiB); the rest wait in Prefect's queue and say so ("queued, 3 ahead")."""

from __future__ import annotations

import os
import warnings
from typing import Any

from studypub.logs import get_logger
from studypub.settings import Settings

log = get_logger("worker")

DEPLOYMENT_NAME = "publish"
RETENTION_DEPLOYMENT_NAME = "retention"
NOTIFY_DEPLOYMENT_NAME = "notify"


def runner_deployments(settings: Settings) -> list[Any]:
    """The deployments this worker serves (RunnerDeployments; prefect.yaml declares the same two)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.notify import deliver_messages
    from flows.publish import publish_study
    from flows.retention import retention

    return [
        publish_study.to_deployment(
            name=DEPLOYMENT_NAME,
            description="Publish one study. Its only parameter is the task id.",
            tags=["studypub", "publish"],
        ),
        retention.to_deployment(
            name=RETENTION_DEPLOYMENT_NAME,
            description="Delete expired archives, clean work folders and Prefect results, erase old identifiers.",
            tags=["studypub", "retention"],
            cron=settings.retention.cron,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        ),
        deliver_messages.to_deployment(
            name=NOTIFY_DEPLOYMENT_NAME,
            description="Send the patients' messages and the FHIR pushes that are due (retries with backoff).",
            tags=["studypub", "notify"],
            interval=settings.notify.sweep_seconds,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        ),
    ]


def prepare_storage(settings: Settings) -> None:
    """Make the bucket (private) at start, so a fresh installation is ready before its first upload. Storage
    that is not up yet is not fatal: each upload makes sure of it again, and /ready reports it meanwhile."""
    from studypub.errors import StudyPubError
    from studypub.logs import details, get_logger
    from studypub.storage import open_storage

    try:
        open_storage(settings).ensure_ready()
    except (StudyPubError, OSError) as exc:
        reason = exc.reason if isinstance(exc, StudyPubError) else type(exc).__name__
        get_logger("worker").warning("Storage is not ready yet", extra=details(reason=reason))


def serve_publications(settings: Settings, *, limit: int | None = None) -> None:
    # Prefect reads its settings at import: the environment must be complete before the import below.
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    # Prefect's runner, stopped by SIGTERM, leaves a coroutine un-awaited on its way out (harmless; it exits):
    # its warning is noise at the end of every Ctrl-C of `studypub run`.
    warnings.filterwarnings("ignore", message="coroutine 'Runner.astop' was never awaited", category=RuntimeWarning)
    from prefect import serve

    from studypub.db import get_sessionmaker, migrate
    from studypub.dicom.receiver import port_is_free, start_receiver
    from studypub.dispatch import Dispatcher
    from studypub.watchdog import Watchdog

    migrate(settings)
    prepare_storage(settings)
    receiver = None
    if settings.pacs.retrieve_method == "move":
        if not port_is_free(settings.pacs.scp_bind, settings.pacs.scp_port):
            raise SystemExit(f"port {settings.pacs.scp_port} (Storage SCP) is taken: is another worker running?")
        receiver = start_receiver(settings)
    sessions = get_sessionmaker(settings)
    dispatcher = Dispatcher(sessions, interval=settings.api.dispatch_interval)
    watchdog = Watchdog(sessions, settings, on_work=dispatcher.wake)
    dispatcher.start()
    watchdog.start()
    # The publications a worker runs at once, plus one for retention (it must never wait behind them).
    limit = limit or settings.runs.concurrent_runs() + 1
    log.info("Worker ready", extra={"details": {"max_concurrent_runs": limit}})
    try:
        serve(
            *runner_deployments(settings),
            limit=limit,
            print_starting_message=False,
        )
    finally:
        watchdog.stop()
        dispatcher.stop()
        if receiver is not None:
            receiver.shutdown()


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many flow runs at once (publications and retention)"
    )
