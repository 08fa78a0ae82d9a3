"""The MIS API: ``POST /publish``, ``GET /publish/{task_id}``, ``POST /publish/{task_id}/extend``.

The endpoint only records the request (idempotently) and answers; the dispatcher starts the Prefect run.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response, status

from api.deps import MisClient, SessionDep, SettingsDep
from api.jsonbody import JsonBodyRoute
from api.schemas import SPEC_EXAMPLE, Error, ExtendRequest, Publication, PublishRequest
from studypub.apikeys import Caller
from studypub.clinics import clinic_context, normalise_code
from studypub.errors import Forbidden, NotFound
from studypub.factor import issue_pin_to_hand_over
from studypub.models import Task, TaskStatus
from studypub.publications import (
    PublicationRequest,
    extend,
    get_task,
    request_publication,
    requeue,
    result_view,
)
from studypub.settings import Settings

router = APIRouter(prefix="/publish", tags=["publications"], route_class=JsonBodyRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No API key, or a wrong or revoked one."},
    403: {"model": Error, "description": "The key belongs to another clinic."},
    413: {"model": Error, "description": "The body is too large."},
    422: {"model": Error, "description": "Invalid request (the reason names the field), or an unknown clinic."},
    429: {"model": Error, "description": "Too many requests."},
    503: {"model": Error, "description": "The database is unavailable; retry later (nothing was recorded)."},
}


def _view(request: Request, session: Any, settings: Settings, task: Task, *, with_queue: bool = False) -> Publication:
    view = result_view(session, settings, task, with_queue=with_queue)
    view.pop("object_key", None)
    view["status_url"] = str(request.url_for("get_publication", task_id=task.id))
    # End the transaction before FastAPI validates the answer in another worker thread: a connection held
    # across that hop deadlocks the pool under load (threads wait for connections held by waiting requests).
    session.commit()
    return Publication.model_validate(view)


def _own(client: Caller, task: Task) -> Task:
    # The session's scope already hides other clinics' tasks (studypub.tenancy); this states it again.
    if not client.allows(task.clinic_code):
        raise NotFound("no such task")  # a key of one clinic does not learn about another's tasks
    return task


@router.post(
    "",
    response_model=Publication,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Publish a study (or get its existing link)",
    responses={
        200: {"model": Publication, "description": "Already published and not expired: the existing link."},
        202: {"description": "Recorded (or already queued/running): the task, its status URL and the link."},
        **_ERRORS,
    },
    openapi_extra={"requestBody": {"content": {"application/json": {"example": SPEC_EXAMPLE}}}},
)
def publish(
    body: PublishRequest,
    request: Request,
    response: Response,
    client: MisClient,
    session: SessionDep,
    settings: SettingsDep,
) -> Publication:
    """Record the request and answer at once with the task and **the patient's link, issued now** (the
    page says "being prepared" until the archive is ready). The same study again returns the same task and
    link; a failed one is queued again (same link)."""
    if not client.allows(normalise_code(body.clinic_code)):
        raise Forbidden("this API key cannot publish for that clinic")
    clinic = clinic_context(session, settings, body.clinic_code)  # unknown: 422, nothing recorded
    task, created = request_publication(
        session,
        clinic.settings,
        PublicationRequest(
            patient_id=body.patient_id,
            accession_number=body.accession_number,
            clinic_code=body.clinic_code,
            source="mis",
            save_till=body.save_till_date,
            emk_record_id=body.emk_record_id,
            service_code=body.service_code,
            service_title=body.service_title,
            study_date=body.study_date,
            dispatch=True,
            patient_email=body.patient_email,
            patient_phone=body.patient_phone,
            notify_language=body.notify_language,
            second_factor=body.second_factor,
            patient_birth_date=body.patient_birth_date.isoformat() if body.patient_birth_date else None,
        ),
        actor=f"mis:{client.name}",
    )
    pin = issue_pin_to_hand_over(session, clinic.settings, task) if created else None
    if not created and task.status == TaskStatus.FAILED:
        created = requeue(session, task.id, actor=f"mis:{client.name}")
        session.expire(task)
    if created:
        request.app.state.dispatcher.wake()
    if task.status == TaskStatus.COMPLETED:
        response.status_code = status.HTTP_200_OK
    answer = _view(request, session, clinic.settings, task)
    answer.pin = pin
    return answer


@router.get(
    "/{task_id}",
    response_model=Publication,
    name="get_publication",
    summary="Follow a publication",
    responses={404: {"model": Error, "description": "No such task."}, **_ERRORS},
)
def get_publication(
    task_id: UUID, request: Request, client: MisClient, session: SessionDep, settings: SettingsDep
) -> Publication:
    """Status, current step, progress (instances received / expected), the error reason, link, size, save_till."""
    task = _own(client, get_task(session, str(task_id)))
    clinic = clinic_context(session, settings, task.clinic_code)
    return _view(request, session, clinic.settings, task, with_queue=True)


@router.post(
    "/{task_id}/extend",
    response_model=Publication,
    summary="Extend the storage period",
    responses={
        404: {"model": Error, "description": "No such task."},
        409: {"model": Error, "description": "The publication's archive is being deleted."},
        410: {"model": Error, "description": "The publication was deleted; it cannot be extended."},
        **_ERRORS,
    },
)
def extend_publication(
    task_id: UUID, body: ExtendRequest, request: Request, client: MisClient, session: SessionDep, settings: SettingsDep
) -> Publication:
    """Move `save_till` forward, up to the maximum retention. A study past its date but not yet deleted can
    be extended; a deleted one cannot."""
    task = _own(client, get_task(session, str(task_id)))
    clinic = clinic_context(session, settings, task.clinic_code)
    task = extend(session, clinic.settings, task.id, body.save_till_date, actor=f"mis:{client.name}")
    return _view(request, session, clinic.settings, task)
