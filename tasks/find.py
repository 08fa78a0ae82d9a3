"""Step 1, find: C-FIND the study by AccessionNumber and check that it belongs to the requested patient.

A PACS outage is waited out here (``ride_through``). A study that is not in the PACS is not retried here:
the flow lets the publication wait for it, holding no process or slot, and the watchdog looks again later."""

from __future__ import annotations

from typing import Any

from prefect import task

from studypub.dicom import scu
from studypub.errors import AmbiguousStudy, PatientMismatch, StudyNotFound
from studypub.factor import set_birth_date_factor
from studypub.i18n import N_
from studypub.lifecycle import Waiting
from studypub.logs import details, get_logger
from studypub.models import Step
from studypub.publications import copy_study_date, save_checkpoint
from studypub.settings import Settings
from tasks.common import TASK_DEFAULTS, retry_if_transient, ride_through, step_context

log = get_logger("tasks.find")
BIRTH_DATE = "_patient_birth_date"


def find_study(settings: Settings, accession_number: str, patient_id: str) -> dict[str, Any]:
    """The one study with this accession number, checked against the patient; what later steps need."""
    matches = scu.find_studies(settings, accession_number)
    if not matches:
        raise StudyNotFound(N_("study not found in PACS"))
    uids = {m.study_instance_uid for m in matches}
    if len(uids) > 1:
        raise AmbiguousStudy(N_("ambiguous: %(count)s studies in the PACS have this accession number", count=len(uids)))
    match = matches[0]
    if match.patient_id.strip() != patient_id.strip():
        raise PatientMismatch(N_("the study in the PACS belongs to another PatientID; nothing was retrieved"))
    sop_classes, instances = match.sop_classes, match.instances
    if not sop_classes or instances is None:
        sop_classes, counted = scu.study_sop_classes(settings, match.study_instance_uid)
        instances = instances if instances is not None else counted
    return {
        "study_instance_uid": match.study_instance_uid,
        "study_date": match.study_date,
        "study_time": match.study_time,
        "modalities": match.modalities,
        "instances": instances,
        "series": match.series,
        "sop_classes": sop_classes,
        BIRTH_DATE: match.patient_birth_date,  # popped by the step: never stored in the checkpoint
    }


@task(
    name="find",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
    **TASK_DEFAULTS,
)
def find(task_id: str) -> int:
    """Returns the number of instances the PACS reports (no identifiers leave the app database)."""
    with step_context(task_id) as ctx:
        assert ctx.task.accession_number and ctx.task.patient_id
        acsn, pid = ctx.task.accession_number, ctx.task.patient_id
        study = ride_through(ctx, Waiting.PACS, lambda: find_study(ctx.settings, acsn, pid))
        birth_date = study.pop(BIRTH_DATE, None)
        if ctx.task.second_factor == "birth_date" and not ctx.task.factor_hash:
            # The MIS gave no birth date: the PACS's answer is the one the patient is asked for.
            set_birth_date_factor(ctx.session, task_id, birth_date)
        save_checkpoint(ctx.session, task_id, Step.FIND, study)
        # The MIS may send no date (and the dashboard's form asks for none): the PACS's answer then says it.
        copy_study_date(ctx.session, ctx.settings, task_id, study.get("study_date"), study.get("study_time"))
        log.info(
            "Study found in PACS",
            extra=details(task_id=task_id, acsn=ctx.task.accession_number, instances=study["instances"]),
        )
        return int(study["instances"] or 0)
