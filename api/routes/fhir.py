"""FHIR for the MIS: ``GET /fhir/R4/ImagingStudy/{task_id}`` (R4B models) and ``GET /fhir/R5/ImagingStudy/{task_id}``,
one base per version as FHIR servers do, with the MIS key. The resource is built by ``studypub.fhir``."""

from __future__ import annotations

import json
from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Response

from api.deps import MisClient, SessionDep, SettingsDep
from studypub.errors import NotFound
from studypub.fhir.publication import resource_for
from studypub.i18n import N_
from studypub.publications import get_task

router = APIRouter(prefix="/fhir", tags=["fhir"])
MEDIA_TYPE = "application/fhir+json"


@router.get(
    "/{version}/ImagingStudy/{task_id}",
    summary="The published study as a FHIR ImagingStudy (R4 or R5)",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}}, 404: {"description": "No such published study."}},
)
def imaging_study(
    version: Literal["R4", "R5"], task_id: UUID, client: MisClient, session: SessionDep, settings: SettingsDep
) -> Response:
    """The anonymised study's series and instances (new UIDs), modalities and counts, the study date the MIS
    gave, `identifier` with the accession number as the MIS knows it, `subject` as a logical reference to the
    MIS's patient id, and a contained Endpoint to the patient's link."""
    task = get_task(session, str(task_id))
    if not client.allows(task.clinic_code):  # the session is scoped to its clinics too
        raise NotFound(N_("no such task"))
    resource = resource_for(settings, task, version)
    session.commit()
    return Response(json.dumps(resource, ensure_ascii=False), media_type=MEDIA_TYPE)
