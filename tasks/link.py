"""Step 6, link: the archive is in storage; record the publication and mark the link ready. The key itself
was issued with the request and never changes. The work folder (raw instances hold PHI) is removed."""

from __future__ import annotations

from prefect import task

from studypub.deid.engine import PROFILE_VERSION
from studypub.logs import details, get_logger
from studypub.models import Step, TaskStatus
from studypub.publications import complete, forget_replaced, replaced_object
from studypub.storage import open_storage
from studypub.viewer.index import forget_index
from tasks.common import TASK_DEFAULTS, step_context

log = get_logger("tasks.link")


@task(name="link", retries=3, retry_delay_seconds=2, **TASK_DEFAULTS)
def link(task_id: str, owner: str | None = None) -> str:
    """``owner``: the run that holds the publication (only it may mark it COMPLETED)."""
    with step_context(task_id) as ctx:
        archive = dict(ctx.task.checkpoints[Step.ZIP.value])
        archive.update(ctx.task.checkpoints[Step.UPLOAD.value])
        old = replaced_object(ctx.session, task_id)
        if old and old != ctx.task.object_key:  # a republication: the new archive is in place
            open_storage(ctx.settings).delete(old)  # idempotent; a failure retries this step
            forget_index(ctx.session, old)  # committed with the completion
        # The raw (identifiable) instances go before the publication says COMPLETED: nobody who sees it
        # completed can find them on disk. The upload is done, so nothing needs them any more.
        ctx.paths.remove_identifiable()
        complete(ctx.session, ctx.settings, task_id, archive=archive, profile_version=PROFILE_VERSION, owner=owner)
        if old:
            forget_replaced(ctx.session, task_id)
        ctx.paths.remove()
        log.info(
            f"Study {ctx.task.accession_number} published",
            extra=details(
                pid=ctx.task.patient_id,
                acsn=ctx.task.accession_number,
                status=TaskStatus.COMPLETED,
                task_id=task_id,
            ),
        )
        return task_id
