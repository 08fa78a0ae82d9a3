"""A publication's facts for the FHIR mapper, read from the app's database (the zip step's manifest of new
UIDs, the MIS's accession, patient id and study date)."""

from __future__ import annotations

from typing import Any

from studypub.errors import NotFound
from studypub.fhir.imaging_study import StudyFacts, Version, imaging_study
from studypub.i18n import N_
from studypub.models import Step, Task, TaskStatus
from studypub.settings import Settings


def facts_for(settings: Settings, task: Task) -> StudyFacts:
    from studypub.publications import link_url

    if task.status != TaskStatus.COMPLETED:
        raise NotFound(N_("the study is not published (yet)"))
    manifest = ((task.checkpoints or {}).get(Step.ZIP.value) or {}).get("manifest") or {}
    return StudyFacts(
        task_id=task.id,
        status=task.status,
        link=link_url(settings, task.link_key),
        study_uid=manifest.get("study_uid"),
        series=list(manifest.get("series") or []),
        accession_number=task.accession_number,
        patient_id=task.patient_id,
        study_date=task.study_date,
        service_title=task.service_title,
        patient_system=settings.notify.fhir_patient_system,
        accession_system=settings.notify.fhir_accession_system,
    )


def resource_for(settings: Settings, task: Task, version: Version) -> dict[str, Any]:
    return imaging_study(facts_for(settings, task), version)
