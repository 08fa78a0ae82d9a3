"""``studypub worker``: the process that runs publications. It holds the Storage SCP (the C-MOVE
destination) and serves the ``publish`` deployment to Prefect, so runs started through the deployment,
and an operator's "Retry" in the Prefect UI, execute here. Stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import os
from typing import Any

from studypub.logs import get_logger
from studypub.settings import Settings

log = get_logger("worker")

DEPLOYMENT_NAME = "publish"


def serve_publications(settings: Settings, *, limit: int | None = None) -> None:
    # Prefect reads its settings at import: the environment must be complete before the import below.
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    from prefect import serve

    from flows.publish import ensure_prefect_objects, publish_study
    from studypub.db import migrate
    from studypub.dicom.receiver import port_is_free, start_receiver

    migrate(settings)
    ensure_prefect_objects(settings)
    receiver = None
    if settings.pacs.retrieve_method == "move":
        if not port_is_free(settings.pacs.scp_bind, settings.pacs.scp_port):
            raise SystemExit(f"port {settings.pacs.scp_port} (Storage SCP) is taken: is another worker running?")
        receiver = start_receiver(settings)
    try:
        serve(
            publish_study.to_deployment(  # type: ignore[arg-type]  # sync context: a RunnerDeployment
                name=DEPLOYMENT_NAME,
                description="Publish one study. Its only parameter is the task id.",
                tags=["studypub", "publish"],
            ),
            limit=limit,
            print_starting_message=False,
        )
    finally:
        if receiver is not None:
            receiver.shutdown()


def add_arguments(p: Any) -> None:
    p.add_argument("--limit", type=int, default=None, help="at most this many publications at once")
