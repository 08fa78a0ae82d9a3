"""FastAPI dependencies as ``Annotated`` aliases: the settings, a database session, the calling MIS client, the
signed-in user, and the caller's clinic.

Isolation of clinics is decided here, for every route: a route's session (``SessionDep``) starts with no scope
and runs nothing until the caller is authenticated; the MIS key or the signed-in user then gives it its scope
(``studypub.tenancy``): the key's clinics, the user's clinic, or every clinic for a superadmin. The link
pages, whose key is the capability, get a system session (``PublicSessionDep``) and look up by that key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from studypub.apikeys import Caller, authenticate
from studypub.clinics import ClinicContext, UnknownClinic, clinic_context
from studypub.errors import Forbidden, Unauthorized
from studypub.i18n import N_
from studypub.models import User
from studypub.settings import Settings
from studypub.tenancy import EVERY_CLINIC, SYSTEM, Scope, clinics_scope, enter, system
from studypub.users import Role

API_KEY_HEADER = "X-API-Key"
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The MIS client's key (`studypub create-api-key`)."
)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Async on purpose: its clean-up (returning the connection to the pool) then runs
    on the event loop, not in a worker thread; a sync clean-up would wait for a free thread while holding a
    connection that the busy threads are waiting for (a pool/thread deadlock under load)."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_public_session(request: Request) -> AsyncIterator[Session]:
    """A system session for the public link pages (they find a publication by its unguessable key only)."""
    session = request.app.state.sessions()
    enter(session, SYSTEM)
    try:
        yield session
    finally:
        session.close()


PublicSessionDep = Annotated[Session, Depends(get_public_session)]


def get_mis_client(session: SessionDep, key: Annotated[str | None, Security(_api_key_scheme)]) -> Caller:
    with system(session):
        client = authenticate(session, key)
        # FastAPI runs this dependency and the route in different worker threads: end the transaction here so
        # no thread holds a pooled connection while it waits for another thread (a pool/thread deadlock).
        session.commit()
    if client is None:
        raise Unauthorized("missing or invalid API key" if key else f"the {API_KEY_HEADER} header is missing")
    enter(session, EVERY_CLINIC if client.clinic_codes is None else clinics_scope(client.clinic_codes))
    return client


MisClient = Annotated[Caller, Depends(get_mis_client)]


# The dashboard -----------------------------------------------------------------------------------------------


def get_current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    """The signed-in dashboard user (session cookie); pages send a visitor without one to sign-in, JSON gets 401."""
    from dashboard.auth import SESSION_COOKIE, session_user

    with system(session):
        user = session_user(session, settings, request.cookies.get(SESSION_COOKIE))
        session.commit()  # as above: no connection held across FastAPI's thread hops
    if user is None:
        raise Unauthorized(N_("sign in first"))
    enter(session, user_scope(user))
    request.state.user = user
    try:  # the user's clinic: its time zone for the pages' dates, its settings for the routes (UserClinic)
        request.state.clinic = clinic_context(session, settings, user.clinic_code)
    except UnknownClinic:
        request.state.clinic = None  # a disabled clinic: its users still sign in and see their lists
    return user


def user_scope(user: User) -> Scope:
    """What a dashboard user sees: a superadmin every clinic, anyone else their own clinic."""
    return EVERY_CLINIC if user.role == Role.SUPERADMIN else clinics_scope({user.clinic_code})


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_administrator(user: CurrentUser) -> User:
    if user.role not in (Role.ADMINISTRATOR, Role.SUPERADMIN):
        raise Forbidden(N_("administrators only"))
    return user


AdminUser = Annotated[User, Depends(get_administrator)]


def get_superadmin(user: CurrentUser) -> User:
    if user.role != Role.SUPERADMIN:
        raise Forbidden(N_("the instance's operators only"))
    return user


SuperAdmin = Annotated[User, Depends(get_superadmin)]


def get_user_clinic(request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> ClinicContext:
    """The signed-in user's clinic and its effective settings (environment, clinic, dashboard overrides),
    resolved once per request (with the user)."""
    clinic: ClinicContext | None = getattr(request.state, "clinic", None)
    return clinic if clinic is not None else clinic_context(session, settings, user.clinic_code)


UserClinic = Annotated[ClinicContext, Depends(get_user_clinic)]


async def check_csrf(request: Request, settings: SettingsDep) -> None:
    """Unsafe requests to the dashboard must carry the CSRF token (form field or header)."""
    from dashboard.auth import CSRF_FIELD, CSRF_HEADER, csrf_valid

    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # Starlette keeps it: the route's Form() fields read the same parse
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not csrf_valid(settings, request, presented):
        raise Forbidden(N_("the form has expired or did not come from this site; reload the page and try again"))


CsrfChecked = Depends(check_csrf)
