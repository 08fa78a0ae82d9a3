"""Step 5, upload: stream the archive into storage while the zip step is still writing it.

The object key was fixed when the request was recorded (random, not derived from identifiers). The upload is
transactional: a failure leaves no object (multipart upload aborted / temporary file removed); a retry starts
the object again under the same key, so there is never a second object. A process killed mid-upload aborts
nothing, so every attempt first aborts what earlier attempts at its key left pending (only this publication
writes its key, and only one run of it at a time); retention aborts what no attempt comes back for.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from studypub.errors import ConfigurationError, PublicationError
from studypub.i18n import N_
from studypub.lifecycle import Waiting
from studypub.logs import details, get_logger
from studypub.models import Step
from studypub.publications import save_checkpoint
from studypub.spool import WorkPaths, follow_growing_file, read_done
from studypub.storage import LocalStorage, S3Storage, open_storage
from tasks.common import TASK_DEFAULTS, retry_if_transient, ride_through, step_context

log = get_logger("tasks.upload")


def upload_archive(storage: LocalStorage | S3Storage, paths: WorkPaths, object_key: str) -> dict[str, Any]:
    storage.ensure_ready()
    try:
        aborted = storage.abort_pending(object_key)
    except ConfigurationError as exc:  # the access key may not list uploads (a PUT/GET-only policy): go on
        log.warning("Interrupted uploads could not be looked for", extra=details(error=exc.reason))
    else:
        if aborted:
            log.info("Uploads left by an interrupted attempt were aborted", extra=details(count=aborted))
    sha = hashlib.sha256()
    size = 0
    started = time.monotonic()
    with storage.writer(object_key) as out:
        for chunk in follow_growing_file(paths.archive, paths, "archive", chunk_size=4 * 1024 * 1024):
            out.write(chunk)
            sha.update(chunk)
            size += len(chunk)
        expected = read_done(paths, "archive") or {}
        if size != expected.get("size_bytes") or sha.hexdigest() != expected.get("sha256"):
            raise PublicationError(N_("the uploaded bytes differ from the archive written (size or checksum)"))
    stored = storage.size(object_key)
    if stored != size:
        raise PublicationError(N_("storage holds %(stored)s bytes, %(sent)s were sent", stored=stored, sent=size))
    return {"size_bytes": size, "sha256": sha.hexdigest(), "seconds": round(time.monotonic() - started, 3)}


@task(
    name="upload",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=retry_if_transient,
    **TASK_DEFAULTS,
)
def upload(task_id: str) -> int:
    with step_context(task_id) as ctx:
        done = ctx.task.checkpoints.get(Step.UPLOAD.value)
        if done is not None:
            return int(done["size_bytes"])
        assert ctx.task.object_key
        storage, key = open_storage(ctx.settings), ctx.task.object_key
        result = ride_through(ctx, Waiting.STORAGE, lambda: upload_archive(storage, ctx.paths, key))
        save_checkpoint(ctx.session, task_id, Step.UPLOAD, result)
        log.info(
            "Archive uploaded",
            extra=details(
                task_id=task_id,
                acsn=ctx.task.accession_number,
                size=result["size_bytes"],
                seconds=result["seconds"],
            ),
        )
        return int(result["size_bytes"])
