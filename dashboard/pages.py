"""The dashboard's routes, under ``/dashboard`` (kept out of the OpenAPI schema).

Every route states its access in its signature: ``CurrentUser`` (any signed-in user), ``AdminUser``
(administrators), or nothing (sign-in only). The role matrix test reads the routes of the app and checks each.
Unsafe methods pass the CSRF check (router dependency). Plain ``def`` routes: the work inside blocks.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from starlette.responses import Response

from api.deps import AdminUser, CsrfChecked, CurrentUser, SessionDep, SettingsDep, UserClinic
from dashboard import audit as audit_text
from dashboard import queries
from dashboard.auth import (
    LoginLimiter,
    clear_session_cookie,
    issue_session,
    set_session_cookie,
)
from dashboard.render import (
    PREFIX,
    redirect,
    render,
    render_fragment,
    secure_headers,
    translator_for,
    user_zone,
    zone,
)
from studypub.apikeys import create_key, list_keys, revoke_key
from studypub.clinics import clinic_context, display_name, list_clinics, normalise_code
from studypub.errors import Conflict, Forbidden, StudyPubError, TransientError, ValidationError
from studypub.factor import issue_pin_to_hand_over
from studypub.i18n import LOCALES, N_
from studypub.i18n.labels import modality_names
from studypub.links import rate_limit_key
from studypub.models import ManualRequest, Step, Task, TaskStatus, User, utcnow
from studypub.overrides import OVERRIDABLE, current_values, save_overrides
from studypub.publications import (
    PublicationRequest,
    audit,
    can_retry,
    extend,
    get_task,
    identifier_problem,
    link_url,
    republish,
    request_publication,
    requeue,
    revoke,
)
from studypub.settings import Settings
from studypub.tenancy import system
from studypub.users import (
    Role,
    authenticate_user,
    create_user,
    end_sessions,
    list_users,
    set_disabled,
    set_password,
    set_role,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[CsrfChecked])

Text = Annotated[str, Form()]
UserId = Annotated[int, FastApiPath(ge=1, le=2**31 - 1)]


KEY_NAME = re.compile(r"^[\w .-]{1,64}$")


def _client_address(request: Request) -> str:
    """Whom sign-in attempts count: an IPv4 address or an IPv6 /64 (a client cannot rotate within its /64)."""
    return rate_limit_key(request.client.host if request.client else None)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: only a dashboard path of this site (no open redirect)."""
    if value and value.startswith(f"{PREFIX}/") and "//" not in value and "\\" not in value:
        return value
    return f"{PREFIX}/queue"


def _actor(user: User) -> str:
    return user.username


def _can_extend(user: User, settings: Settings) -> bool:
    return user.role == Role.ADMINISTRATOR or settings.dashboard.registrators_can_extend


def _run_url(settings: Settings, flow_run_id: str | None) -> str | None:
    if not flow_run_id:
        return None
    return f"{settings.dashboard.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _parse_day(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValidationError(N_("%(field)s: not a date (YYYY-MM-DD)", field=field)) from None
    if not 1900 <= day.year <= 2200:
        raise ValidationError(N_("%(field)s: a year between 1900 and 2200", field=field))
    return day


# Sign-in -----------------------------------------------------------------------------------------------------


@router.get("", name="dashboard_home")
def home() -> Response:
    return redirect(f"{PREFIX}/queue")


@router.get("/login", name="dashboard_login")
def login_form(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", user=None, next=_safe_next(next), error=None, username="")


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Text = "",
    password: Text = "",
    next: Text = "",
) -> Response:
    limiter: LoginLimiter = request.app.state.login_limiter
    if not limiter.allow(_client_address(request), username):
        return render(
            request,
            "login.html",
            user=None,
            next=_safe_next(next),
            error=N_("Too many attempts. Wait a minute and try again."),
            username=username,
            status_code=429,
        )
    with system(session):  # who signs in is not known yet: the user is found by name, across clinics
        user = authenticate_user(session, username, password)
        if user is not None:
            audit(
                session,
                actor=user.username,
                action="user.signed_in",
                details={"role": user.role},
                clinic_code=None if user.role == Role.SUPERADMIN else user.clinic_code,  # the instance's
            )
        session.commit()
    if user is None:
        return render(
            request,
            "login.html",
            user=None,
            next=_safe_next(next),
            error=N_("Wrong user name or password."),
            username=username,
            status_code=401,
        )
    token, lifetime = issue_session(settings, user)
    response = redirect(_safe_next(next))
    set_session_cookie(response, request, token, lifetime)
    return response


@router.post("/logout")
def logout(request: Request, user: CurrentUser, session: SessionDep) -> Response:
    """Sign out: the user's sessions end everywhere (a copied cookie stops working too)."""
    end_sessions(session, user.id, actor=user.username)
    response = redirect(f"{PREFIX}/login")
    clear_session_cookie(response, request)
    return response


# Queue ---------------------------------------------------------------------------------------------------------

LIVE_STATUSES = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.FAILED)  # their reason says what goes on


def _queue_json(settings: Settings, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "task_id": r["id"],
            "clinic": r["clinic_code"],
            "pid": r["patient_id"],
            "acsn": r["accession_number"],
            "status": r["status"],
            "step": r["step"],
            "received": r["progress_received"],
            "expected": r["progress_expected"],
            "reason": r["reason"] if r["status"] in LIVE_STATUSES else None,
            "waiting_for": r["waiting_for"],
            "can_retry": can_retry(SimpleNamespace(**r), now),
            "size": r["size_bytes"],
            "created_at": r["created_at"].isoformat(),
            "run_url": _run_url(settings, r["flow_run_id"]),
        }
        for r in rows
    ]


ClinicParam = Annotated[str | None, Query(max_length=64)]


def _clinic_filter(request: Request, user: User, session: Any, clinic: str | None) -> tuple[str | None, dict[str, str]]:
    """A superadmin's lists name each row's clinic and may show one clinic: the chosen clinic (a known code,
    else none) and every clinic's name in the page's language. A clinic's users have neither (their session
    shows their clinic only)."""
    if user.role != Role.SUPERADMIN:
        return None, {}
    locale = translator_for(request).locale
    names = {c.code: display_name(c, locale) for c in list_clinics(session)}
    chosen = normalise_code(clinic)
    return (chosen if chosen in names else None), names


def queue_view(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status: str | None = None,
    clinic: ClinicParam = None,
) -> dict[str, Any]:
    """What the queue page and its poll show: the rows (of one status, of one clinic for a superadmin), and
    the clinics' names for a superadmin's clinic column."""
    status = status if status in set(TaskStatus) else None
    chosen, clinic_names = _clinic_filter(request, user, session, clinic)
    rows = _queue_json(settings, queries.queue_rows(session, status=status, clinic=chosen))
    session.commit()
    return {"rows": rows, "status": status, "clinic": chosen, "clinic_names": clinic_names}


QueueView = Annotated[dict[str, Any], Depends(queue_view)]


@router.get("/queue", name="dashboard_queue")
def queue_page(request: Request, user: CurrentUser, view: QueueView) -> Response:
    poll = urlencode({k: v for k in ("status", "clinic") if (v := view[k])})
    return render(request, "queue.html", user=user, statuses=list(TaskStatus), poll=poll, **view)


@router.get("/api/queue", name="dashboard_queue_json")
def queue_json(request: Request, user: CurrentUser, view: QueueView) -> Response:
    """The queue's rows as data, and as the page's table rows in the user's language (the page swaps them in)."""
    html = render_fragment(request, "_queue_rows.html", user=user, **view)
    return secure_headers(JSONResponse({"rows": view["rows"], "html": html}))


# Manual publication ----------------------------------------------------------------------------------------------


@router.get("/publish", name="dashboard_publish")
def publish_form(request: Request, user: CurrentUser, session: SessionDep, clinic: UserClinic) -> Response:
    effective = clinic.settings
    session.commit()
    return render(request, "publish.html", user=user, errors={}, values={}, limits=effective.links)


@router.post("/publish")
def publish(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    clinic: UserClinic,
    patient_id: Text = "",
    accession_number: Text = "",
    retention_days: Text = "",
    patient_email: Text = "",
    patient_phone: Text = "",
    notify_language: Text = "",
    second_factor: Text = "",
    patient_birth_date: Text = "",
) -> Response:
    effective = settings = clinic.settings
    values = {
        "patient_id": patient_id,
        "accession_number": accession_number,
        "retention_days": retention_days,
        "patient_email": patient_email,
        "patient_phone": patient_phone,
        "notify_language": notify_language,
        "second_factor": second_factor,
        "patient_birth_date": patient_birth_date,
    }
    errors: dict[str, str] = {}
    for field, value in (("patient_id", patient_id), ("accession_number", accession_number)):
        if problem := identifier_problem(value):  # the same rule as the MIS request's
            errors[field] = FORM_PROBLEMS[problem]
    errors.update(_contact_problems(values))
    save_till = None
    if retention_days.strip():
        try:
            days = int(retention_days)
        except ValueError:
            errors["retention_days"] = FORM_PROBLEMS["not_a_number"]
        else:
            if not 1 <= days <= effective.links.max_retention_days:
                errors["retention_days"] = FORM_PROBLEMS["retention_range"]
            else:
                # The end of the N-th day from today, in the clinic's zone (as extending to a date does).
                save_till = datetime.combine(
                    datetime.now(zone(settings)).date() + timedelta(days=days), time(23, 59), tzinfo=zone(settings)
                )
    if errors:
        session.commit()
        return render(
            request,
            "publish.html",
            user=user,
            errors=errors,
            values=values,
            limits=effective.links,
            status_code=422,
        )
    task, created = request_publication(
        session,
        effective,
        PublicationRequest(
            patient_id=patient_id,
            accession_number=accession_number,
            clinic_code=clinic.code,
            source="manual",
            save_till=save_till,
            dispatch=True,
            patient_email=patient_email or None,
            patient_phone=patient_phone or None,
            notify_language=notify_language or None,
            second_factor=second_factor or None,
            patient_birth_date=patient_birth_date or None,
        ),
        actor=_actor(user),
    )
    pin = issue_pin_to_hand_over(session, effective, task) if created else None
    if not created and task.status == TaskStatus.FAILED:
        created = requeue(session, task.id, actor=_actor(user))
    session.add(ManualRequest(task_id=task.id, clinic_code=clinic.code, user_id=user.id))
    session.commit()
    if created:
        request.app.state.dispatcher.wake()
    if pin:  # shown once, to hand to the patient: never in a URL, never stored
        return _task_view(request, task.id, user, session, settings, done="requested", pin=pin)
    return redirect(f"{PREFIX}/tasks/{task.id}?done={'requested' if created else 'existing'}")


def _contact_problems(values: dict[str, str]) -> dict[str, str]:
    """The contact fields' problems, by field (the same rules as the MIS request's, in the form's words)."""
    from studypub.contacts import birth_date_text, normalise_email, normalise_phone

    errors: dict[str, str] = {}
    for field, check, problem in (
        ("patient_email", normalise_email, "bad_email"),
        ("patient_phone", normalise_phone, "bad_phone"),
    ):
        try:
            check(values[field])
        except ValidationError:
            errors[field] = FORM_PROBLEMS[problem]
    if values["patient_birth_date"].strip() and birth_date_text(values["patient_birth_date"]) is None:
        errors["patient_birth_date"] = FORM_PROBLEMS["bad_date"]
    if values["notify_language"] not in ("", *LOCALES):
        errors["notify_language"] = FORM_PROBLEMS["bad_choice"]
    if values["second_factor"] not in ("", "none", "pin", "birth_date"):
        errors["second_factor"] = FORM_PROBLEMS["bad_choice"]
    return errors


FORM_PROBLEMS = {
    "required": N_("Fill this in."),
    "too_long": N_("At most 64 characters."),
    "bad_characters": N_("Contains characters that a PACS query cannot carry (\\ * ? or control characters)."),
    "not_a_number": N_("A whole number of days."),
    "retention_range": N_("From 1 to %(max)s days."),
    "bad_email": N_("Not an email address."),
    "bad_phone": N_("A phone number in international format, e.g. +79161234567."),
    "bad_date": N_("A date, e.g. 1980-04-21."),
    "bad_choice": N_("Choose one of the options."),
}


# One publication ---------------------------------------------------------------------------------------------------


DONE_MESSAGES = {
    "requested": N_("Recorded. Give the patient the link; it shows “being prepared” until the study is ready."),
    "existing": N_("This study is already published or in progress: here is its link."),
    "extended": N_("The storage period was extended."),
    "revoked": N_("The link was revoked and the archive deleted."),
    "retried": N_("Retry requested."),
    "republished": N_("A new archive is being built; the link stays the same."),
    "resent": N_("The message will be sent again within a minute."),
    "unlocked": N_("The link is unlocked."),
    "new_pin": N_("A new PIN was made; the old one no longer works."),
}


def _task_or_404(session: Any, task_id: str) -> Task:
    return get_task(session, task_id[:36])


@router.get("/tasks/{task_id}", name="dashboard_task")
def task_page(
    request: Request,
    task_id: str,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    done: str | None = None,
) -> Response:
    return _task_view(request, task_id, user, session, settings, done=done)


def _task_view(
    request: Request,
    task_id: str,
    user: User,
    session: Any,
    settings: Settings,
    *,
    done: str | None = None,
    pin: str | None = None,
) -> Response:
    from studypub.contacts import mask_email, mask_phone
    from studypub.notify.outbox import messages_of

    task = _task_or_404(session, task_id)
    pub = task.publication
    anonymised = (task.checkpoints or {}).get(Step.ANONYMISE.value) or {}
    withheld = anonymised.get("withheld_reasons") or {}
    data: dict[str, Any] = {
        "task": task,
        "pub": pub,
        "link": link_url(settings, task.link_key),
        "run_url": _run_url(settings, task.flow_run_id),
        "can_extend": _can_extend(user, settings) and task.status not in (TaskStatus.EXPIRED, TaskStatus.DELETED),
        "can_retry": can_retry(task),
        "show_reason": bool(task.reason) and task.status in LIVE_STATUSES,
        "done": DONE_MESSAGES.get(done or ""),
        "withheld_reasons": sorted(withheld.items(), key=lambda item: (-int(item[1]), item[0])),
        "pin": pin,
        "contact": {"email": mask_email(task.patient_email), "sms": mask_phone(task.patient_phone)},
        "messages": messages_of(session, task.id),
        "can_resend": task.status == TaskStatus.COMPLETED and bool(task.patient_email or task.patient_phone),
    }
    session.commit()
    t = translator_for(request)
    return render(
        request, "task.html", user=user, modalities=modality_names(t, pub.modalities if pub else None), **data
    )


@router.post("/tasks/{task_id}/extend")
def extend_task(
    task_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep, save_till: Text = ""
) -> Response:
    if not _can_extend(user, settings):
        raise Forbidden(N_("administrators only"))
    day = _parse_day(save_till, "save_till")
    if day is None:
        raise ValidationError(N_("%(field)s: choose a date", field="save_till"))
    task = _task_or_404(session, task_id)
    effective = clinic_context(session, settings, task.clinic_code).settings  # the task's clinic's
    until = datetime.combine(day, time(23, 59), tzinfo=zone(effective))
    extend(session, effective, task.id, until, actor=_actor(user))
    return redirect(f"{PREFIX}/tasks/{task.id}?done=extended")


@router.post("/tasks/{task_id}/messages/{message_id}/resend")
def resend_message(
    task_id: str, message_id: int, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    """Send a patient's message again (a new message, audited): one that failed, or whose fate is unknown."""
    from studypub.models import OutboxMessage
    from studypub.notify.outbox import resend

    task = _task_or_404(session, task_id)
    message = session.get(OutboxMessage, message_id)
    if message is None or message.task_id != task.id:
        raise ValidationError(N_("no such message"))
    resend(session, clinic_context(session, settings, task.clinic_code).settings, message.id, actor=_actor(user))
    return redirect(f"{PREFIX}/tasks/{task.id}?done=resent")


@router.post("/tasks/{task_id}/unlock")
def unlock_link(task_id: str, user: AdminUser, session: SessionDep) -> Response:
    """Unlock a link that locked after too many wrong answers (audited)."""
    from studypub.factor import unlock

    task = _task_or_404(session, task_id)
    unlock(session, task.id, actor=_actor(user))
    return redirect(f"{PREFIX}/tasks/{task.id}?done=unlocked")


@router.post("/tasks/{task_id}/pin")
def new_pin(request: Request, task_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Response:
    """A new PIN for the link, shown once to hand over (the old one stops working; audited)."""
    from studypub.factor import issue_pin

    task = _task_or_404(session, task_id)
    if task.second_factor != "pin" or task.status in (TaskStatus.EXPIRED, TaskStatus.DELETED):
        raise Conflict(N_("this link has no PIN"))
    pin = issue_pin(session, clinic_context(session, settings, task.clinic_code).settings, task.id)
    audit(session, actor=_actor(user), action="link.new_pin", task=task)
    session.commit()
    return _task_view(request, task.id, user, session, settings, done="new_pin", pin=pin)


@router.post("/tasks/{task_id}/revoke")
def revoke_task(task_id: str, user: AdminUser, session: SessionDep, settings: SettingsDep) -> Response:
    task = _task_or_404(session, task_id)
    revoke(session, settings, task.id, actor=_actor(user))
    return redirect(f"{PREFIX}/tasks/{task.id}?done=revoked")


@router.post("/tasks/{task_id}/republish")
def republish_task(request: Request, task_id: str, user: AdminUser, session: SessionDep) -> Response:
    """Build a new archive under the same link (images reached the PACS after the study was published)."""
    task = _task_or_404(session, task_id)
    republish(session, task.id, actor=_actor(user))
    request.app.state.dispatcher.wake()
    return redirect(f"{PREFIX}/tasks/{task.id}?done=republished")


@router.post("/tasks/{task_id}/retry")
def retry_task(request: Request, task_id: str, user: AdminUser, session: SessionDep) -> Response:
    """Retry a failed, stuck or waiting publication: a failed one's Prefect run again (as the Prefect UI's Retry
    does: it resumes after the last finished step), otherwise a new run (its run died, never started, was
    deleted, or it waits for a later attempt). Never refused because a dead run still holds it."""
    task = _task_or_404(session, task_id)
    if not can_retry(task):
        raise Conflict(N_("the publication is being prepared right now; there is nothing to retry"))
    run_id = task.flow_run_id
    retried = False
    if run_id and task.status == TaskStatus.FAILED:
        retried = _retry_prefect_run(run_id)
    if retried:
        audit(session, actor=_actor(user), action="publication.retried", task=task, details={"flow_run_id": run_id})
        session.commit()
    else:
        requeue(session, task.id, actor=_actor(user))
        request.app.state.dispatcher.wake()
    return redirect(f"{PREFIX}/tasks/{task.id}?done=retried")


def _retry_prefect_run(run_id: str) -> bool:
    """Set a failed or crashed run to AwaitingRetry; False when the run is gone or not in a final failed state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import AwaitingRetry

    try:
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(run_id))
            except ObjectNotFound:
                return False
            if run.state is None or not (run.state.is_failed() or run.state.is_crashed()):
                return False
            client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
            return True
    except ObjectNotFound:
        return False
    except Exception as exc:
        raise TransientError(
            N_("Prefect is unreachable (%(error)s); try again later", error=type(exc).__name__)
        ) from None


# Published studies ------------------------------------------------------------------------------------------


@router.get("/published", name="dashboard_published")
def published_page(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    pid: Annotated[str | None, Query(max_length=64)] = None,
    acsn: Annotated[str | None, Query(max_length=64)] = None,
    status: str = TaskStatus.COMPLETED.value,
    upload_from: str | None = None,
    upload_to: str | None = None,
    study_from: str | None = None,
    study_to: str | None = None,
    save_till_from: str | None = None,
    save_till_to: str | None = None,
    sort: str = "upload_date",
    order: str = "desc",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    clinic: ClinicParam = None,
) -> Response:
    chosen, clinic_names = _clinic_filter(request, user, session, clinic)
    flt = queries.PublishedFilter(
        clinic=chosen,
        pid=(pid or "").strip() or None,
        acsn=(acsn or "").strip() or None,
        status=status if status in {s.value for s in queries.PUBLISHED_STATUSES} else None,
        upload_from=_parse_day(upload_from, "upload_from"),
        upload_to=_parse_day(upload_to, "upload_to"),
        study_from=_parse_day(study_from, "study_from"),
        study_to=_parse_day(study_to, "study_to"),
        save_till_from=_parse_day(save_till_from, "save_till_from"),
        save_till_to=_parse_day(save_till_to, "save_till_to"),
        sort=sort if sort in queries.SORTS else "upload_date",
        descending=order != "asc",
        page=page,
        page_size=settings.dashboard.page_size,
        tz=user_zone(request),
    )
    result = queries.published_page(session, flt)
    session.commit()
    params = {
        k: v
        for k, v in {
            "pid": flt.pid,
            "acsn": flt.acsn,
            "clinic": flt.clinic,
            "status": status if flt.status else "all",
            "upload_from": upload_from,
            "upload_to": upload_to,
            "study_from": study_from,
            "study_to": study_to,
            "save_till_from": save_till_from,
            "save_till_to": save_till_to,
        }.items()
        if v
    }
    for row in result.rows:
        row["link"] = link_url(settings, row["link_key"])
    return render(
        request,
        "published.html",
        user=user,
        result=result,
        flt=flt,
        params=params,
        active=sum(1 for name in params if name != "status") + (flt.status != TaskStatus.COMPLETED.value),
        sorts=SORT_NAMES,
        clinic_names=clinic_names,
        published_statuses=[s.value for s in queries.PUBLISHED_STATUSES],
    )


SORT_NAMES = {
    "upload_date": N_("Publication date"),
    "study_date": N_("Study date"),
    "save_till": N_("Kept until"),
    "size": N_("Size"),
    "downloads": N_("Downloads"),
    "pid": N_("PID"),
    "emk_record_id": N_("EMK record"),
}


# Users and API keys (administrators) ----------------------------------------------------------------------------


USER_DONE = {
    "created": N_("The user was created."),
    "password": N_("The password was reset; the user's sessions ended."),
    "role": N_("The role was saved."),
    "disabled": N_("The user was disabled."),
    "enabled": N_("The user was enabled."),
}


def _users_page(
    request: Request, user: User, session: Any, *, error: str | None = None, done: str | None = None, status: int = 200
) -> Response:
    users = list_users(session)
    session.commit()
    return render(
        request,
        "users.html",
        user=user,
        users=users,
        roles=[r.value for r in Role if r != Role.SUPERADMIN or user.role == Role.SUPERADMIN],
        error=error,
        done=USER_DONE.get(done or ""),
        status_code=status,
    )


def _may_grant(user: User, role: str) -> None:
    """Only a superadmin makes superadmins (an administrator runs one clinic, not the instance)."""
    if role.strip() == Role.SUPERADMIN and user.role != Role.SUPERADMIN:
        raise Forbidden(N_("the instance's operators only"))


@router.get("/users", name="dashboard_users")
def users_page(request: Request, user: AdminUser, session: SessionDep, done: str | None = None) -> Response:
    return _users_page(request, user, session, done=done)


@router.post("/users")
def users_create(
    request: Request,
    user: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    username: Text = "",
    password: Text = "",
    role: Text = Role.REGISTRATOR.value,
    clinic_code: Text = "",
) -> Response:
    _may_grant(user, role)
    clinic = clinic_code if user.role == Role.SUPERADMIN and clinic_code.strip() else user.clinic_code
    try:
        create_user(session, settings, username, password, role, actor=_actor(user), clinic_code=clinic)
    except StudyPubError as exc:
        session.rollback()
        return _users_page(request, user, session, error=exc.reason, status=exc.http_status)
    return redirect(f"{PREFIX}/users?done=created")


@router.post("/users/{user_id}/password")
def users_password(user_id: UserId, user: AdminUser, session: SessionDep, password: Text = "") -> Response:
    set_password(session, user_id, password, actor=_actor(user))
    return redirect(f"{PREFIX}/users?done=password")


@router.post("/users/{user_id}/role")
def users_role(user_id: UserId, user: AdminUser, session: SessionDep, role: Text = "") -> Response:
    _may_grant(user, role)
    set_role(session, user_id, role, actor=_actor(user))
    return redirect(f"{PREFIX}/users?done=role")


@router.post("/users/{user_id}/disable")
def users_disable(user_id: UserId, user: AdminUser, session: SessionDep) -> Response:
    set_disabled(session, user_id, True, actor=_actor(user))
    return redirect(f"{PREFIX}/users?done=disabled")


@router.post("/users/{user_id}/enable")
def users_enable(user_id: UserId, user: AdminUser, session: SessionDep) -> Response:
    set_disabled(session, user_id, False, actor=_actor(user))
    return redirect(f"{PREFIX}/users?done=enabled")


@router.get("/api-keys", name="dashboard_api_keys")
def keys_page(request: Request, user: AdminUser, session: SessionDep, done: str | None = None) -> Response:
    keys = list_keys(session)
    session.commit()
    return render(
        request,
        "api_keys.html",
        user=user,
        keys=keys,
        new_key=None,
        error=None,
        done=done if done == "revoked" else None,
    )


@router.post("/api-keys")
def keys_create(
    request: Request, user: AdminUser, session: SessionDep, name: Text = "", clinic_code: Text = ""
) -> Response:
    new_key = None
    error = None
    try:
        if not KEY_NAME.match(name.strip()):
            raise ValidationError(N_("the name must be 1–64 letters, digits, spaces or . _ -"))
        codes = [c for c in clinic_code.split(",") if c.strip()]
        if user.role == Role.SUPERADMIN:  # any clinics of the instance (none named: every clinic)
            _, new_key = create_key(session, name.strip(), clinic_code=None, clinic_codes=codes, actor=_actor(user))
        else:  # an administrator's keys are their clinic's (another clinic's code is unknown in their scope)
            _, new_key = create_key(
                session, name.strip(), clinic_code=user.clinic_code, clinic_codes=codes, actor=_actor(user)
            )
    except StudyPubError as exc:
        error = exc.reason
    keys = list_keys(session)
    session.commit()
    # The key is shown once, in this answer; it is stored hashed.
    return render(
        request,
        "api_keys.html",
        user=user,
        keys=keys,
        new_key=new_key,
        error=error,
        done=None,
        status_code=200 if error is None else 422,
    )


@router.post("/api-keys/{name}/revoke")
def keys_revoke(name: str, user: AdminUser, session: SessionDep) -> Response:
    revoke_key(session, name, actor=_actor(user))
    return redirect(f"{PREFIX}/api-keys?done=revoked")


# Settings (administrators) ----------------------------------------------------------------------------------------


def _settings_form(request: Request, user: User, session: Any, settings: Settings, **extra: Any) -> Response:
    from studypub.overrides import load_overrides

    overridden = load_overrides(session, user.clinic_code)
    values = current_values(clinic_context(session, settings, user.clinic_code).settings)
    defaults = current_values(settings)
    session.commit()
    context: dict[str, Any] = {"error": None, "echo": None, "saved": False, **extra}
    return render(
        request,
        "settings.html",
        user=user,
        fields=OVERRIDABLE,
        values=values,
        defaults=defaults,
        overridden=overridden,
        **context,
    )


@router.get("/settings", name="dashboard_settings")
def settings_page(request: Request, user: AdminUser, session: SessionDep, settings: SettingsDep) -> Response:
    return _settings_form(request, user, session, settings)


@router.post("/settings")
async def settings_save(request: Request, user: AdminUser, session: SessionDep, settings: SettingsDep) -> Response:
    form = await request.form()
    values = {name: str(form.get(name, "")).strip() for name in OVERRIDABLE}
    from starlette.concurrency import run_in_threadpool

    def save() -> Response:
        try:
            save_overrides(session, settings, values, actor=_actor(user), clinic_code=user.clinic_code)
        except StudyPubError as exc:
            session.rollback()
            return _settings_form(request, user, session, settings, error=exc.reason)
        return _settings_form(request, user, session, settings, saved=True)

    return await run_in_threadpool(save)


@router.post("/settings/echo")
def settings_echo(
    request: Request, user: AdminUser, session: SessionDep, settings: SettingsDep, clinic: UserClinic
) -> Response:
    """Test the PACS connection (C-ECHO) with the settings in force."""
    from studypub.dicom.scu import echo

    effective = clinic.settings
    started = datetime.now(UTC)
    result: dict[str, Any]
    try:
        echo(effective)
        result = {"ok": True, "ms": int((datetime.now(UTC) - started).total_seconds() * 1000)}
    except StudyPubError as exc:
        result = {"ok": False, "reason": exc.reason}
    audit(session, actor=_actor(user), action="settings.pacs_echo", details={"ok": result["ok"]})
    session.commit()
    return _settings_form(request, user, session, settings, echo=result)


# Audit (administrators) --------------------------------------------------------------------------------------------


@router.get("/audit", name="dashboard_audit")
def audit_page(
    request: Request,
    user: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    task_id: Annotated[str | None, Query(max_length=36)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    result = queries.audit_page(session, actor=actor or None, action=action or None, task_id=task_id or None, page=page)
    session.commit()
    params = {k: v for k, v in {"actor": actor, "action": action, "task_id": task_id}.items() if v}
    t, tz = translator_for(request), user_zone(request)
    entries = [
        {
            "at": e["at"],
            "action": e["action"],
            "sentence": audit_text.sentence(t, e["action"], e["details"]),
            "actor": audit_text.actor(t, e["actor"]),  # (text, is a user's name)
            "task_id": e["task_id"],
            "details": audit_text.detail_rows(t, e["details"], tz),
        }
        for e in result.rows
    ]
    return render(
        request,
        "audit.html",
        user=user,
        result=result,
        entries=entries,
        params=params,
        actions=list(audit_text.ACTIONS.names),
        labels_audit=audit_text,
    )
