"""The ``notify`` deployment: a pass over the outbox every ``notify.sweep_seconds`` (served by ``studypub
worker``, one run at a time). Messages a provider could not take are retried here with backoff; a message
whose result was never recorded becomes "unknown" here and is left for staff."""

from __future__ import annotations

from prefect import flow

from tasks.notify import notify


@flow(name="notify", persist_result=False, log_prints=False)
def deliver_messages() -> dict[str, int]:
    return notify()
