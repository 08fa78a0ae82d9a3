"""The dashboard's Clinics screen, for the instance's superadmins: the clinics, their contact, PACS and
settings, added and changed (what ``studypub clinic`` does from the command line)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from api.deps import CsrfChecked, SessionDep, SettingsDep, SuperAdmin
from dashboard.render import PREFIX, redirect, render, translator_for
from studypub.clinics import add_clinic, list_clinics, update_clinic
from studypub.errors import StudyPubError
from studypub.i18n import N_
from studypub.models import User
from studypub.overrides import CLINIC_OVERRIDABLE, load_overrides
from studypub.settings import Settings

router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[CsrfChecked])

Text = Annotated[str, Form()]
FIELDS = ("phone", "address", "time_zone", "languages", "logo_url", "colour")
DONE = {"added": N_("The clinic was added."), "updated": N_("The clinic was changed.")}


def _page(
    request: Request,
    user: User,
    session: Any,
    settings: Settings,
    *,
    error: str | None = None,
    done: str | None = None,
    status: int = 200,
) -> Response:
    clinics = [
        {"clinic": c, "settings": load_overrides(session, c.code, CLINIC_OVERRIDABLE)} for c in list_clinics(session)
    ]
    session.commit()
    defaults = {name: getattr(getattr(settings, name.split(".")[0]), name.split(".")[1]) for name in CLINIC_OVERRIDABLE}
    return render(
        request,
        "clinics.html",
        user=user,
        clinics=clinics,
        fields=CLINIC_OVERRIDABLE,
        defaults=defaults,
        error=error,
        done=DONE.get(done or ""),
        status_code=status,
    )


async def _form(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    form = await request.form()
    fields: dict[str, Any] = {name: str(form.get(name, "")) for name in FIELDS}
    name = str(form.get("name", "")).strip()
    if name:  # its name in the language the page is shown in
        fields["names"] = {translator_for(request).locale: name}
    fields["disabled"] = form.get("disabled") == "on"
    values: dict[str, Any] = {}
    for setting in CLINIC_OVERRIDABLE:
        raw = str(form.get(setting, "")).strip()
        values[setting] = [v.strip() for v in raw.split(",") if v.strip()] if setting == "pacs.store_from_aes" else raw
    return fields, values


@router.get("/clinics", name="dashboard_clinics")
def clinics_page(
    request: Request, user: SuperAdmin, session: SessionDep, settings: SettingsDep, done: str | None = None
) -> Response:
    return _page(request, user, session, settings, done=done)


@router.post("/clinics")
async def clinics_add(request: Request, user: SuperAdmin, session: SessionDep, settings: SettingsDep) -> Response:
    from starlette.concurrency import run_in_threadpool

    fields, values = await _form(request)
    code = str((await request.form()).get("code", ""))
    fields.pop("disabled", None)

    def add() -> Response:
        try:
            add_clinic(session, settings, code, actor=user.username, fields=fields, values=values)
        except StudyPubError as exc:
            session.rollback()
            return _page(request, user, session, settings, error=exc.reason, status=exc.http_status)
        return redirect(f"{PREFIX}/clinics?done=added")

    return await run_in_threadpool(add)


@router.post("/clinics/{code}")
async def clinics_update(
    request: Request, code: str, user: SuperAdmin, session: SessionDep, settings: SettingsDep
) -> Response:
    from starlette.concurrency import run_in_threadpool

    fields, values = await _form(request)

    def update() -> Response:
        try:
            # The form shows every setting: what is left empty returns to the environment's value.
            update_clinic(session, settings, code, actor=user.username, fields=fields, values=values)
        except StudyPubError as exc:
            session.rollback()
            return _page(request, user, session, settings, error=exc.reason, status=exc.http_status)
        return redirect(f"{PREFIX}/clinics?done=updated")

    return await run_in_threadpool(update)
