"""Step 3, anonymise: every received instance through the PS3.15 Annex E profile (studypub.deid), as the
instances arrive. Work is spread over a process pool (the engine is pure Python); each output is verified
by the engine before it is kept (fail closed)."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from prefect import task

from studypub.deid.burned_in import OCR_MODALITIES
from studypub.deid.engine import PROFILE_VERSION, DeidOptions
from studypub.deid.errors import DeidError
from studypub.deid.pool import anonymise_one, init_worker, pool_context, warm_up
from studypub.errors import Aborted, AnonymisationFailed
from studypub.i18n import N_
from studypub.logs import details, get_logger
from studypub.models import Step
from studypub.publications import save_checkpoint
from studypub.settings import Settings
from studypub.spool import WorkPaths, clear_done, follow_files, mark_done, read_done
from tasks.common import TASK_DEFAULTS, step_context

log = get_logger("tasks.anonymise")

POOL_THRESHOLD = 32  # below this many instances a pool costs more than it saves
OCR_POOL_THRESHOLD = 4  # ...unless their pixels are read for burned-in text (seconds each)


def uid_key(settings: Settings, uid_salt: str) -> bytes:
    """Per-publication key for new UIDs: from the service secret, not a plain hash of the original."""
    return hmac.new(settings.secret_bytes(), b"uid:" + uid_salt.encode(), hashlib.sha256).digest()


# A shifted date moves back by 1 to 10 years (never into the future), whole days, so intervals are kept.
DATE_SHIFT_MIN_DAYS = 365
DATE_SHIFT_MAX_DAYS = 3652


def date_shift_days(settings: Settings, uid_salt: str) -> int:
    """The publication's date offset (negative days): from the service secret and the publication's random
    salt, so every instance and every re-run of a publication gets the same offset, and nobody without the
    secret can derive it from the output (it is stored nowhere)."""
    digest = hmac.new(settings.secret_bytes(), b"dates:" + uid_salt.encode(), hashlib.sha256).digest()
    span = DATE_SHIFT_MAX_DAYS - DATE_SHIFT_MIN_DAYS + 1
    return -(DATE_SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % span)


def deid_options(settings: Settings, uid_salt: str = "") -> DeidOptions:
    d = settings.deid
    return DeidOptions(
        burned_in_policy=d.burned_in_policy,
        retain_patient_characteristics=d.retain_patient_characteristics,
        retain_device_identity=d.retain_device_identity,
        dates=d.dates,
        date_shift_days=date_shift_days(settings, uid_salt) if d.dates == "shift" else 0,
        burned_in_text=d.burned_in_text,
    )


def withheld_text(result: dict[str, Any]) -> str:
    """Why nothing is left, e.g. "all 3 instances were withheld (burned_in_annotation: 2, pixel_data_short: 1)"."""
    if not result["withheld"]:
        return N_("no instance was received")
    reasons = ", ".join(f"{code}: {n}" for code, n in sorted(result["withheld_reasons"].items()))
    return N_("all %(count)s instances were withheld (%(codes)s)", count=result["withheld"], codes=reasons)


def anonymise_spool(
    settings: Settings,
    key: bytes,
    paths: WorkPaths,
    *,
    expected: int | None = None,
    uid_salt: str = "",
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """Anonymise every file that appears in ``paths.raw`` (until retrieval is done) into ``paths.clean``.
    A study whose modalities are read for burned-in text uses the process pool from a few instances on."""
    options = deid_options(settings, uid_salt)
    workers = settings.deid.workers or os.cpu_count() or 1
    written = 0
    withheld: Counter[str] = Counter()
    started = time.monotonic()

    def account(result: tuple[bool, str | None]) -> None:
        nonlocal written
        was_withheld, reason = result
        if was_withheld:
            withheld[reason or "withheld"] += 1
        else:
            written += 1

    def wrap(exc: BaseException) -> AnonymisationFailed | Aborted:
        if isinstance(exc, AnonymisationFailed | Aborted):  # Aborted: another step failed, and says why
            return exc
        if isinstance(exc, DeidError):  # its reason names tags and rules, never values
            return AnonymisationFailed(
                N_("an instance could not be anonymised safely: %(detail)s", detail=exc.reason), code=exc.code
            )
        return AnonymisationFailed(
            N_("an instance could not be anonymised safely (%(error)s)", error=type(exc).__name__)
        )

    ocr = options.burned_in_text != "off" and bool(set(modalities or ()) & OCR_MODALITIES)
    use_pool = workers > 1 and (expected or 0) >= (OCR_POOL_THRESHOLD if ocr else POOL_THRESHOLD)
    if not use_pool:
        init_worker(key, options)
        try:
            for src in follow_files(paths.raw, paths, "raw"):
                account(anonymise_one(str(src), str(paths.clean / src.name)))
        except Exception as exc:
            raise wrap(exc) from None
    else:
        pending: list[Future[tuple[bool, str | None]]] = []
        with ProcessPoolExecutor(
            workers, mp_context=pool_context(), initializer=init_worker, initargs=(key, options)
        ) as pool:
            for _ in range(workers):
                pool.submit(warm_up)
            try:
                for src in follow_files(paths.raw, paths, "raw"):
                    pending.append(pool.submit(anonymise_one, str(src), str(paths.clean / src.name)))
                    while len(pending) > workers * 8:
                        account(pending.pop(0).result())
                for fut in pending:
                    account(fut.result())
            except Exception as exc:
                for fut in pending:
                    fut.cancel()
                raise wrap(exc) from None
    seconds = time.monotonic() - started
    return {
        "instances": written,
        "withheld": sum(withheld.values()),
        "withheld_reasons": dict(withheld),
        "seconds": round(seconds, 3),
        "profile_version": PROFILE_VERSION,
        "dates": options.dates,
        "burned_in_text": options.burned_in_text,  # stated in the archive's note
    }


@task(name="anonymise", retries=0, **TASK_DEFAULTS)
def anonymise(task_id: str) -> int:
    """Deterministic local work: a failure is final for this run (a re-run resumes from here)."""
    with step_context(task_id) as ctx:
        done = read_done(ctx.paths, "clean")
        if done is not None:
            return int(done["instances"])
        ctx.paths.create()
        clear_done(ctx.paths, "clean")
        found = ctx.task.checkpoints.get(Step.FIND.value) or {}
        salt = ctx.task.uid_salt
        result = anonymise_spool(
            ctx.settings,
            uid_key(ctx.settings, salt),
            ctx.paths,
            expected=found.get("instances"),
            uid_salt=salt,
            modalities=found.get("modalities"),
        )
        if result["instances"] == 0:
            raise AnonymisationFailed(N_("nothing left to publish: %(reason)s", reason=withheld_text(result)))
        save_checkpoint(ctx.session, task_id, Step.ANONYMISE, result)
        mark_done(ctx.paths, "clean", result)
        log.info(
            "Study anonymised",
            extra=details(
                task_id=task_id,
                acsn=ctx.task.accession_number,
                instances=result["instances"],
                withheld=result["withheld"],
                seconds=result["seconds"],
            ),
        )
        return int(result["instances"])
