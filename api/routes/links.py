"""The patient's link: ``GET /s/{key}`` (a page in Russian or English that works on a phone) and
``GET /s/{key}/download`` (a redirect to a short-lived presigned S3 URL, or the file itself with HTTP Range).

Every answer on these routes, including redirects, misses, 429s and errors, is an HTML page (or the file) with
the link hygiene headers (no referrer, no indexing, no caching, a strict CSP). A page GET (the patient, or a
messenger making a link preview) is audited as a view; only a download counts as one. Unknown keys of any
shape get the same 404 page after the same database lookup. Requests are rate-limited per client address
(``links.rate_limit``), by a limiter that belongs to the app instance.

Static files (the page's CSS and icon) are served under ``/static``.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.types import Message, Receive, Scope, Send

from api.deps import PublicSessionDep, SettingsDep
from api.errors import NulInRequest
from api.i18n import choose_locale, remember_locale
from api.routes.link_gate import GateClosed, SecondFactorChecked, factor_state
from studypub.clinics import ClinicContext, UnknownClinic, clinic_context
from studypub.errors import StorageUnavailable
from studypub.i18n import N_
from studypub.i18n.labels import modality_names
from studypub.i18n.templates import Templates
from studypub.i18n.translator import Translator, translator
from studypub.links import (
    Client,
    Link,
    LinkState,
    display_zone,
    download_filename,
    find_link,
    rate_limit_key,
    record_download,
    record_view,
)
from studypub.logs import details, get_logger
from studypub.models import Task
from studypub.settings import Settings
from studypub.storage import LocalStorage, S3Storage, open_storage
from studypub.viewer.index import has_index

log = get_logger("links")

API_DIR = Path(__file__).parents[1]
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"
PREPARING_REFRESH_SECONDS = 10

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HYGIENE_HEADERS: dict[str, str] = {
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
}

_templates = Templates(TEMPLATES_DIR)

# Every miss and error looks the same: a title and a sentence.
MESSAGES: dict[str, tuple[str, str]] = {
    "not_found": (
        N_("Link not found"),
        N_("Check that the link was copied completely. If it still does not open, ask the clinic for the link again."),
    ),
    "gone": (
        N_("This link has expired"),
        N_(
            "The study was available for a limited time and has been deleted. If you still need it, contact the clinic."
        ),
    ),
    "too_many": (N_("Too many requests"), N_("Please wait a minute and try again.")),
    "unavailable": (
        N_("Temporarily unavailable"),
        N_("The service cannot answer right now. Please try again in a few minutes."),
    ),
}


def _apply_hygiene(headers: MutableHeaders) -> None:
    for name, value in HYGIENE_HEADERS.items():
        headers[name] = value


class LinkHygiene:
    """ASGI middleware: answers under ``/s/`` that no link route produced (405 for another method, say) get
    the hygiene headers too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/s/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HYGIENE_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Rate limiting -----------------------------------------------------------------------------------------------


class LinkLimiter:
    """A moving-window limit per client (IPv4 address or IPv6 /64), in this process's memory."""

    def __init__(self, spec: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec)  # ValueError on a bad spec: at start-up
        if not self.items:
            raise ValueError(f"no rate limit in {spec!r}")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, address: str | None) -> int | None:
        """Count a request; None when it is allowed, else the seconds to wait (Retry-After)."""
        who = rate_limit_key(address)
        for item in self.items:
            if not self._limiter.hit(item, "links", who):
                stats = self._limiter.get_window_stats(item, "links", who)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


_limiter_lock = threading.Lock()


def _limiter(app: Any) -> LinkLimiter:
    limiter = getattr(app.state, "link_limiter", None)
    if limiter is None:
        with _limiter_lock:
            limiter = getattr(app.state, "link_limiter", None)
            if limiter is None:
                limiter = app.state.link_limiter = LinkLimiter(app.state.settings.links.rate_limit)
    return limiter  # type: ignore[no-any-return]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    _limiter(app)  # a bad links.rate_limit stops the start-up instead of failing every request
    yield


# Storage (one client per app instance: an S3 client is not free to make) ------------------------------------

_storage_lock = threading.Lock()


def _storage(request: Request, settings: Settings) -> LocalStorage | S3Storage:
    state = request.app.state
    storage = getattr(state, "link_storage", None)
    if storage is None:
        with _storage_lock:
            storage = getattr(state, "link_storage", None)
            if storage is None:
                storage = state.link_storage = open_storage(settings)
    return storage  # type: ignore[no-any-return]


# Responses ---------------------------------------------------------------------------------------------------


def _static_version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
    except OSError:
        return "0"


_STATIC_VERSIONS = {name: _static_version(name) for name in ("link.css", "icon.svg")}


def _static_url(request: Request, name: str) -> str:
    return f"{request.url_for('static', path=name).path}?v={_STATIC_VERSIONS.get(name, '0')}"


def _page(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    choice = choose_locale(request)
    t = translator(choice.locale)
    html = _templates.render(
        template,
        t,
        css_url=_static_url(request, "link.css"),
        icon_url=_static_url(request, "icon.svg"),
        refresh=context.pop("refresh", None),
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=headers)
    remember_locale(response, request, choice)
    return response


def _message_page(request: Request, status_code: int, kind: str, *, headers: dict[str, str] | None = None) -> Response:
    """The one look of every miss and error: a title and a sentence (:data:`MESSAGES`)."""
    t = translator(choose_locale(request).locale)
    title, text = MESSAGES[kind]
    return _page(
        request,
        "link_message.html",
        status_code=status_code,
        headers=headers,
        kind=kind,
        title=t.gettext(title),
        text=t.gettext(text),
    )


def _not_found(request: Request) -> Response:
    return _message_page(request, 404, "not_found")


def _gone(request: Request) -> Response:
    return _message_page(request, 410, "gone")


def _facts(t: Translator, link: Link, settings: Settings) -> dict[str, Any]:
    tz = display_zone(settings)
    return {
        "title": link.service_title or t.gettext("Imaging study"),
        "study_date": t.long_date(link.study_date, tz) if link.study_date else None,
        "kept_until": t.date_time(link.save_till, tz) if link.save_till else None,
        "kept_until_date": t.long_date(link.save_till, tz) if link.save_till else None,
        "modalities": modality_names(t, link.modalities) or None,
        "images": t.number(link.instances) if link.instances is not None else None,
        "size": t.size(link.size_bytes) if link.size_bytes is not None else None,
        "withheld": (
            t.ngettext(
                "%(num)s image was not included to protect privacy: it may show personal data in the picture "
                "itself. If your doctor needs it, contact the clinic.",
                "%(num)s images were not included to protect privacy: they may show personal data in the "
                "picture itself. If your doctor needs them, contact the clinic.",
                link.withheld,
            )
            if link.withheld > 0
            else None
        ),
        "progress": (
            t.gettext(
                "Images received: %(received)s of %(expected)s",
                received=t.number(link.progress_received),
                expected=t.number(exp),
            )
            if (exp := link.progress_expected) and link.progress_received is not None
            else None
        ),
    }


def _clinic(session: Session, settings: Settings, link: Link) -> ClinicContext | None:
    """The publication's clinic (its name, contact and branding for the page; its time zone for the dates)."""
    if not link.exists or not link.clinic_code:
        return None
    try:
        return clinic_context(session, settings, link.clinic_code)
    except UnknownClinic:  # disabled since: the page still serves the study
        return None


def _link_page(
    request: Request,
    session: Session,
    settings: Settings,
    key: str,
    link: Link,
    clinic: ClinicContext | None = None,
) -> Response:
    if link.state is LinkState.UNKNOWN:
        return _not_found(request)
    if link.state is LinkState.GONE:
        return _gone(request)
    t = translator(choose_locale(request).locale)
    if clinic is not None:
        settings = clinic.settings
    facts = _facts(t, link, settings)
    facts["clinic"] = (
        None
        if clinic is None
        else {
            "name": clinic.name(t.locale),
            "phone": clinic.phone,
            "address": clinic.address,
            "logo_url": clinic.logo_url,
            "colour": clinic.colour,
        }
    )
    if link.state is LinkState.READY:
        download = request.url_for("link_download", key=key).path
        view = None
        viewer_on = getattr(request.app.state, "viewer_available", False)
        if viewer_on and link.object_key and has_index(session, link.object_key):
            view = request.url_for("viewer_page", key=key).path
        return _page(request, "link_ready.html", download_url=download, view_url=view, **facts)
    if link.state is LinkState.FAILED:
        return _page(request, "link_failed.html", **facts)
    return _page(request, "link_preparing.html", refresh=PREPARING_REFRESH_SECONDS, **facts)


class ArchiveFileResponse(FileResponse):
    """A FileResponse whose every answer (200, 206, and the 416/400 it makes itself) has the hygiene headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                _apply_hygiene(MutableHeaders(scope=message))
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


class _StaticFiles(StaticFiles):
    """The pages' CSS and icon: cacheable (the URLs carry a version), never sniffed."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response


class LinkRoute(APIRoute):
    """Every answer of a link route gets the hygiene headers, and nothing escapes as JSON or a traceback: a
    database or storage failure is a 503 page, anything else a 500 page (logged by type only)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except NulInRequest:  # a NUL in the body (the second factor's form): the one 422 of every route
                raise
            except GateClosed as gate:  # the link asks for its second factor first
                response = _gate_page(
                    request,
                    gate.key,
                    gate.state.kind,
                    locked=gate.state.locked,
                    pending=gate.state.factor_hash is None,
                    preparing=gate.state.preparing,
                )
            except (SQLAlchemyError, StorageUnavailable, OSError) as exc:
                log.error("Link route unavailable", extra=details(error=type(exc).__name__))
                response = _message_page(request, 503, "unavailable", headers={"Retry-After": "60"})
            except Exception as exc:
                log.error("Link route failed", extra=details(error=type(exc).__name__))
                response = _message_page(request, 500, "unavailable")
            _apply_hygiene(response.headers)
            return response

        return route


# Routes ------------------------------------------------------------------------------------------------------

router = APIRouter(route_class=LinkRoute, include_in_schema=False, lifespan=_lifespan)
router.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")


def _client(request: Request) -> Client:
    return Client(address=request.client.host if request.client else None, user_agent=request.headers.get("user-agent"))


def _too_many(request: Request) -> Response | None:
    retry_after = _limiter(request.app).hit(request.client.host if request.client else None)
    if retry_after is None:
        return None
    return _message_page(request, 429, "too_many", headers={"Retry-After": str(retry_after)})


def _safely(what: str, record: Callable[[], bool | None], session: Session) -> bool | None:
    """Recording must not stand between the patient and the study: a failed write is logged, not raised."""
    try:
        return record()
    except SQLAlchemyError as exc:
        session.rollback()
        log.error(f"Could not record a link {what}", extra=details(error=type(exc).__name__))
        return None


def _show(request: Request, session: Session, settings: Settings, key: str) -> Response:
    if (limited := _too_many(request)) is not None:
        return limited
    link = find_link(session, key)
    if request.method == "GET" and link.exists:
        _safely("view", lambda: record_view(session, link, _client(request)), session)
    return _link_page(request, session, settings, key, link, _clinic(session, settings, link))


@router.api_route("/s/{key}", methods=["GET", "HEAD"], name="link_page", include_in_schema=False)
def link_page(
    key: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """The link's page: ready (facts, download button, help), being prepared (refreshes), failed, 404, 410."""
    try:
        return _show(request, session, settings, key)
    finally:
        session.close()  # no connection held while the answer is sent


_RANGE_FROM_START = re.compile(r"^\s*bytes\s*=\s*0*0\s*-", re.IGNORECASE)


def _counts_as_download(request: Request, *, whole_file_only: bool) -> bool:
    """A GET counts; for a file served here, only without Range or with one from byte 0 (a resume does not)."""
    if request.method != "GET":
        return False
    if not whole_file_only:
        return True
    header = request.headers.get("range")
    return header is None or bool(_RANGE_FROM_START.match(header))


def _deleted_meanwhile(session: Session, link: Link, client: Client, via: str) -> bool:
    """Count the download; True when the publication turned out to be deleted (nothing counted: 410)."""
    return _safely("download", lambda: record_download(session, link, client, via=via), session) is False


@router.api_route("/s/{key}/download", methods=["GET", "HEAD"], name="link_download", include_in_schema=False)
def link_download(
    key: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """The archive: 302 to a presigned URL (S3) or the file (local storage, with Range). Not ready: 303 to
    the page; unknown: 404; expired or deleted: 410."""
    try:
        return _download(key, request, session, settings)
    finally:
        session.close()  # a download may stream for minutes: it must not hold a database connection


def _download(key: str, request: Request, session: Session, settings: Settings) -> Response:
    if (limited := _too_many(request)) is not None:
        return limited
    link = find_link(session, key)
    if link.state is LinkState.UNKNOWN:
        return _not_found(request)
    if link.state is LinkState.GONE:
        return _gone(request)
    if link.state is not LinkState.READY or not link.object_key:
        return RedirectResponse(request.url_for("link_page", key=key).path, status_code=303)
    storage = _storage(request, settings)
    filename = download_filename(link.study_date, display_zone(settings))
    client = _client(request)

    if isinstance(storage, S3Storage):
        url = storage.presigned_url(link.object_key, settings.links.presign_seconds, filename)
        counts = _counts_as_download(request, whole_file_only=False)
        if counts and _deleted_meanwhile(session, link, client, "redirect"):
            return _gone(request)
        return RedirectResponse(url, status_code=302)

    path = storage.path(link.object_key)
    if not path.is_file():
        if find_link(session, key).state is LinkState.GONE:  # deleted while we looked
            return _gone(request)
        log.error("Archive missing from local storage", extra=details(task_id=link.task_id))
        return _message_page(request, 503, "unavailable", headers={"Retry-After": "60"})
    if _counts_as_download(request, whole_file_only=True) and _deleted_meanwhile(session, link, client, "file"):
        return _gone(request)
    return ArchiveFileResponse(path, filename=filename, media_type="application/zip")


# The second factor ---------------------------------------------------------------------------------------------

GATE_TEXTS: dict[str, tuple[str, str, str]] = {  # kind -> title, explanation, field label
    "pin": (
        N_("Enter the PIN"),
        N_("This link is protected by a PIN. You received it from the clinic or in a separate message."),
        N_("PIN"),
    ),
    "birth_date": (
        N_("Enter your date of birth"),
        N_("To protect your privacy, this link asks for the patient's date of birth."),
        N_("Date of birth"),
    ),
}


def _gate_page(
    request: Request,
    key: str,
    kind: str,
    *,
    locked: bool = False,
    pending: bool = False,
    preparing: bool = False,
    remaining: int | None = None,
    status_code: int = 200,
) -> Response:
    t = translator(choose_locale(request).locale)
    title, text, label = GATE_TEXTS[kind]
    if locked:
        return _page(
            request,
            "link_gate.html",
            status_code=403,
            state="locked",
            title=t.gettext("This link is locked"),
            text=t.gettext("Too many wrong attempts. Contact the clinic to unlock the link."),
            kind=kind,
            action="",
            label="",
            remaining=None,
        )
    if pending:  # nothing to check against yet: a PIN on its way, a birth date the PACS has not given yet
        return _page(
            request,
            "link_gate.html",
            refresh=PREPARING_REFRESH_SECONDS if preparing else None,
            state="pending",
            title=t.gettext("Your study is being prepared") if preparing else t.gettext(title),
            text=(
                t.gettext("You will receive the PIN in a separate message when the study is ready.")
                if kind == "pin"
                else t.gettext(
                    "The images are being collected and made anonymous. This usually takes a few minutes. This "
                    "page refreshes by itself; you can also come back to the same link later."
                )
                if preparing
                else t.gettext("The link cannot check the date of birth. Contact the clinic.")
            ),
            kind=kind,
            action="",
            label="",
            remaining=None,
        )
    return _page(
        request,
        "link_gate.html",
        status_code=status_code,
        state="ask",
        title=t.gettext(title),
        text=t.gettext(text),
        kind=kind,
        action=request.url_for("link_verify", key=key).path,
        label=t.gettext(label),
        remaining=remaining,
    )


@router.api_route("/s/{key}/verify", methods=["GET", "HEAD"], include_in_schema=False)
def link_verify_page(key: str, request: Request, session: PublicSessionDep) -> Response:
    """The address of a wrong answer's page, opened again (the language switch, a reload): the link's page.
    A key that is not a link is the same miss as anywhere else."""
    try:
        if (limited := _too_many(request)) is not None:
            return limited
        if not find_link(session, key).exists:
            return _not_found(request)
    finally:
        session.close()
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(request.url_for("link_page", key=key).path + query, status_code=303)


@router.post("/s/{key}/verify", name="link_verify", include_in_schema=False)
async def link_verify(key: str, request: Request, session: PublicSessionDep, settings: SettingsDep) -> Response:
    """The patient's answer: right → a cookie for this link and back to its page; wrong → asked again with the
    attempts left; the last wrong one locks the link."""
    from starlette.concurrency import run_in_threadpool

    await request.body()  # the whole body is read (and checked for a NUL) whatever its type
    form = await request.form()
    answer = str(form.get("answer", ""))[:64]

    def check() -> Response:
        from studypub.factor import cookie_name, remember_token, verify

        try:
            if (limited := _too_many(request)) is not None:
                return limited
            link = find_link(session, key)
            if not link.exists:
                return _not_found(request)
            state = factor_state(session, key, settings)
            page = request.url_for("link_page", key=key).path
            if state is None:  # no second factor, or gone: the page says what there is to say
                return RedirectResponse(page, status_code=303)
            task = session.get(Task, state.task_id)
            assert task is not None
            if state.factor_hash is None or state.locked:
                return _gate_page(
                    request, key, state.kind, locked=state.locked, pending=not state.locked, preparing=state.preparing
                )
            outcome = verify(session, settings, task, answer)
            if outcome.locked:
                return _gate_page(request, key, state.kind, locked=True)
            if not outcome.ok:
                return _gate_page(request, key, state.kind, remaining=outcome.remaining, status_code=422)
            response = RedirectResponse(page, status_code=303)
            minutes = settings.factor.remember_minutes
            response.set_cookie(
                cookie_name(key),
                remember_token(settings.secret_bytes(), key, state.factor_hash, minutes),
                max_age=minutes * 60,
                path=f"/s/{key}",
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
            return response
        finally:
            session.close()

    return await run_in_threadpool(check)


@router.api_route("/s", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/s/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
def link_other(request: Request, session: PublicSessionDep, settings: SettingsDep, rest: str = "") -> Response:
    """Anything else under /s/ (an empty key, a key with slashes, a trailing slash): looked up like a key, so
    it has the same look and cost as any other miss."""
    try:
        return _show(request, session, settings, rest.strip("/"))
    finally:
        session.close()
