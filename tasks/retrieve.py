"""Step 2, retrieve: C-MOVE the study to our Storage SCP (or C-GET it), into the publication's raw spool.

At most ``pacs.max_concurrent_retrievals`` run at once against one PACS: a slot leased in the app's database
(studypub.slots), held only while the retrieval talks to the PACS. While the PACS is unreachable the step
waits with backoff (``ride_through``) and gives its slot back meanwhile. Once the publication is aborted
(another step failed, the run was cancelled), nothing more is written: the progress callback stops the
retrieval, and no checkpoint or done-marker follows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff
from pydicom.filereader import read_file_meta_info as dcmread_meta

from studypub.db import get_sessionmaker
from studypub.dicom import scu
from studypub.dicom.contexts import ACCEPTED_SOP_CLASSES, sop_class_name
from studypub.dicom.receiver import registry_for
from studypub.errors import IncompleteRetrieval, InsufficientDiskSpace, PublicationError
from studypub.i18n import N_
from studypub.lifecycle import Waiting
from studypub.logs import details, get_logger
from studypub.models import Step
from studypub.publications import note_waiting, save_checkpoint, set_progress
from studypub.settings import Settings
from studypub.slots import held_slot, pacs_pool
from studypub.spool import WorkPaths, check_abort, clear_done, mark_done, read_done
from studypub.storage import disk_free_bytes
from tasks.common import TASK_DEFAULTS, StepContext, retry_if_transient, ride_through, step_context

log = get_logger("tasks.retrieve")
ESTIMATED_BYTES_PER_INSTANCE = 1024 * 1024


def check_disk_space(settings: Settings, expected_instances: int) -> None:
    """Raw + anonymised + archive copies of the study, plus the configured margin."""
    need = settings.min_free_disk_mb * 1024 * 1024 + 3 * expected_instances * ESTIMATED_BYTES_PER_INSTANCE
    free = disk_free_bytes(settings.work_dir)
    if free < need:
        raise InsufficientDiskSpace(
            N_(
                "not enough free disk space in the work folder: %(free)s MiB free, %(need)s MiB needed",
                free=free // 2**20,
                need=need // 2**20,
            )
        )


def count_files(folder) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for e in os.scandir(folder) if e.name.endswith(".dcm"))


def missing_kinds(study_classes: list[str], folder: Path) -> list[str]:
    """The SOP classes the PACS listed for the study of which no instance arrived (read from the file meta of
    what did arrive; only on a failed retrieval)."""
    received: set[str] = set()
    for entry in os.scandir(folder):
        if entry.name.endswith(".dcm"):
            try:
                meta = dcmread_meta(entry.path)
            except Exception:  # noqa: S112 (an unreadable file names no kind; the count already says it)
                continue
            received.add(str(meta.get("MediaStorageSOPClassUID", "")))
    return [uid for uid in sorted(set(study_classes)) if uid not in received]


def retrieve_study(settings: Settings, study: dict, paths: WorkPaths, progress, owner: str) -> int:  # type: ignore[no-untyped-def, type-arg]
    """Retrieve into ``paths.raw``; returns the number of instances received. Raises on partial retrieval."""
    study_uid = study["study_instance_uid"]
    expected = study.get("instances")
    if settings.pacs.retrieve_method == "get":
        result = scu.get_study(
            settings,
            study_uid,
            study.get("sop_classes") or [],
            paths.raw,
            progress=progress,
            expected=expected,
            stop=paths.abort_marker.exists,
        )
    else:
        registry = registry_for(settings)
        registry.register(study_uid, paths.raw, owner, settings.pacs.store_from_aes or [settings.pacs.called_ae])
        try:
            result = scu.move_study(
                settings, study_uid, progress=progress, expected=expected, stop=paths.abort_marker.exists
            )
        finally:
            registry.unregister(study_uid, owner)
    received = count_files(paths.raw)
    sent = result.completed + result.warning
    if result.category == "Failure" and sent == 0 and result.status == 0xA801:
        raise PublicationError(
            N_(
                "the PACS does not know our AE title %(ae)s as a C-MOVE destination (status 0xA801): add it to the "
                "PACS's modalities",
                ae=repr(settings.pacs.calling_ae),
            )
        )
    if received > sent and result.ok:
        # Nothing but this retrieval may file instances here: more than the PACS sent is a failure to look at.
        raise IncompleteRetrieval(
            N_("received %(received)s instances but the PACS reports sending %(sent)s", received=received, sent=sent)
        )
    if not result.ok or received < sent or (expected and received < expected):
        check_abort(paths)  # refused because another step failed: that step's failure is the reason, not this
        status = f"0x{result.status:04X} {result.category}"
        kinds = missing_kinds(study.get("sop_classes") or [], paths.raw)
        if kinds:
            params = {
                "received": received,
                "expected": expected if expected is not None else "?",
                "kinds": "; ".join(sop_class_name(uid) for uid in kinds),
                "failed": result.failed,
                "status": status,
            }
            if any(uid not in ACCEPTED_SOP_CLASSES for uid in kinds):
                raise IncompleteRetrieval(
                    N_(
                        "partial retrieval: received %(received)s of %(expected)s instances; the PACS could not send "
                        "%(kinds)s: our receiver does not accept this kind of object (%(failed)s failed, PACS status "
                        "%(status)s)",
                        **params,
                    )
                )
            raise IncompleteRetrieval(
                N_(
                    "partial retrieval: received %(received)s of %(expected)s instances; the PACS could not send "
                    "%(kinds)s, although our receiver accepts this kind of image in every transfer syntax it knows: "
                    "the PACS's log says why (%(failed)s failed, PACS status %(status)s)",
                    **params,
                )
            )
        raise IncompleteRetrieval(
            N_(
                "partial retrieval: received %(received)s of %(expected)s instances (%(failed)s failed, PACS status "
                "%(status)s)",
                received=received,
                expected=expected if expected is not None else "?",
                failed=result.failed,
                status=status,
            )
        )
    return received


def _in_slot(ctx: StepContext, study: dict, progress) -> int:  # type: ignore[no-untyped-def, type-arg]
    """One retrieval attempt inside a slot of the PACS (waiting for one says so on the publication)."""
    settings, task_id = ctx.settings, ctx.task.id
    size = settings.pacs.max_concurrent_retrievals

    def on_wait(busy: int) -> None:
        note_waiting(
            ctx.session,
            task_id,
            Waiting.SLOT,
            N_("waiting for a free PACS connection (%(busy)s of %(size)s retrieving)", busy=busy, size=size),
        )

    sessions = get_sessionmaker(settings)
    with held_slot(
        sessions,
        pacs_pool(settings),
        size,
        task_id,
        ttl=settings.runs.lease_seconds,
        on_wait=on_wait,
        should_stop=lambda: check_abort(ctx.paths),
    ):
        note_waiting(ctx.session, task_id, None, ended=Waiting.SLOT)  # a wait for the PACS itself goes on
        return retrieve_study(settings, study, ctx.paths, progress, owner=task_id)


@task(
    name="retrieve",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=retry_if_transient,
    tags=["pacs"],
    **TASK_DEFAULTS,
)
def retrieve(task_id: str) -> int:
    with step_context(task_id) as ctx:
        done = read_done(ctx.paths, "raw")
        if done is not None:
            return int(done["instances"])
        study = ctx.task.checkpoints[Step.FIND.value]
        expected = study.get("instances") or 0
        check_disk_space(ctx.settings, expected)
        ctx.paths.create()
        clear_done(ctx.paths, "raw")
        session = get_sessionmaker(ctx.settings)()
        last = [0.0]

        def progress(completed: int, total: int | None) -> None:
            check_abort(ctx.paths)  # an aborted publication stops its retrieval here
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                try:  # progress is for display: a database blip must not break a good retrieval
                    set_progress(session, task_id, completed, total)
                except Exception:
                    session.rollback()
                    log.warning("Could not record retrieval progress", extra=details(task_id=task_id))

        try:
            started = time.monotonic()
            received = ride_through(ctx, Waiting.PACS, lambda: _in_slot(ctx, study, progress))
            elapsed = time.monotonic() - started
            check_abort(ctx.paths)  # aborted meanwhile: record nothing
            set_progress(session, task_id, received, expected or received)
        finally:
            session.close()
        save_checkpoint(ctx.session, task_id, Step.RETRIEVE, {"instances": received, "seconds": round(elapsed, 3)})
        mark_done(ctx.paths, "raw", {"instances": received})
        log.info(
            "Study retrieved",
            extra=details(
                task_id=task_id, acsn=ctx.task.accession_number, instances=received, seconds=round(elapsed, 2)
            ),
        )
        return received
