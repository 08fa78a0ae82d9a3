"""Rendering dashboard pages: the templates (one environment per language), the common context (user,
language, CSRF token, sections), the security headers, and the HTML error pages (sign-in redirect for 401, a
page for 403/404/409/...)."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Match

from api.i18n import LANG_PARAM, choose_locale, remember_locale
from dashboard.auth import csrf_nonce, csrf_token, set_csrf_cookie
from studypub.i18n import N_, labels
from studypub.i18n.templates import Templates
from studypub.i18n.translator import Translator, translator
from studypub.models import User
from studypub.settings import Settings
from studypub.users import Role

DASHBOARD_DIR = Path(__file__).parent
TEMPLATES_DIR = DASHBOARD_DIR / "templates"
STATIC_DIR = DASHBOARD_DIR / "static"
PREFIX = "/dashboard"
R = TypeVar("R", bound=Response)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}

# The menu: (path under the prefix, name, administrators only).
# (path, label, who: False everyone, True administrators, "super" the instance's superadmins)
SECTIONS: tuple[tuple[str, str, bool | str], ...] = (
    ("queue", N_("Queue"), False),
    ("publish", N_("Publish"), False),
    ("published", N_("Published studies"), False),
    ("users", N_("Users"), True),
    ("api-keys", N_("MIS keys"), True),
    ("settings", N_("Settings"), True),
    ("audit", N_("Audit"), True),
    ("clinics", N_("Clinics"), "super"),
)

# The title of an error page, by status.
ERROR_TITLES = {
    403: N_("Not allowed"),
    404: N_("Not found"),
    409: N_("Cannot do that now"),
    410: N_("No longer available"),
    422: N_("Check the input"),
    503: N_("Temporarily unavailable"),
}

ERROR_SENTENCES = {
    4: N_("The address or the form is not right. Go back and try again."),
    5: N_("The service cannot answer right now. Please try again in a few minutes."),
}

_templates = Templates(TEMPLATES_DIR)


def secure_headers(response: R) -> R:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def zone(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.links.time_zone)


def user_zone(request: Request) -> ZoneInfo:
    """The signed-in user's clinic's time zone (``api.deps`` resolves the clinic), else the environment's."""
    clinic = getattr(request.state, "clinic", None)
    return zone(clinic.settings if clinic is not None else request.app.state.settings)


def translator_for(request: Request) -> Translator:
    return translator(choose_locale(request).locale)


def _page_path(request: Request) -> str:
    """The page to show again in another language: this one, or for the answer to a form (a POST), the
    nearest page above it (``/tasks/<id>/extend`` -> ``/tasks/<id>``, ``/settings/echo`` -> ``/settings``)."""
    path = request.url.path
    if request.method == "GET":
        return path
    while path.startswith(f"{PREFIX}/"):
        scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            return path
        path = path.rsplit("/", 1)[0]
    return f"{PREFIX}/queue"


def _context(request: Request, t: Translator, user: User | None, csrf: str) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    tz = user_zone(request)
    here = _page_path(request)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != LANG_PARAM and here == request.url.path]
    return {
        "user": user,
        "is_admin": user is not None and user.role in (Role.ADMINISTRATOR, Role.SUPERADMIN),
        "is_superadmin": user is not None and user.role == Role.SUPERADMIN,
        "csrf": csrf,
        "prefix": PREFIX,
        "static": f"{PREFIX}/static",
        "path": request.url.path,
        "tz": tz,
        "dt": lambda value: t.short_datetime(value, tz),
        "labels": labels,
        "sections": [(href, t.gettext(name), admin) for href, name, admin in SECTIONS],
        "lang_href": lambda code: f"{here}?{urlencode([*query, (LANG_PARAM, code)])}",
        "settings": settings,
    }


def render(
    request: Request,
    template: str,
    *,
    user: User | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    choice = choose_locale(request)
    t = translator(choice.locale)
    nonce, new_nonce = csrf_nonce(request)
    html = _templates.render(template, t, **_context(request, t, user, csrf_token(settings, nonce)), **context)
    response = HTMLResponse(html, status_code=status_code)
    if new_nonce:
        set_csrf_cookie(response, request, nonce)
    remember_locale(response, request, choice)
    return secure_headers(response)


def render_fragment(request: Request, template: str, *, user: User, **context: Any) -> str:
    """A part of a page (the queue's rows), as the page that polls it renders it (same CSRF token)."""
    settings: Settings = request.app.state.settings
    t = translator_for(request)
    nonce, _ = csrf_nonce(request)
    return _templates.render(template, t, **_context(request, t, user, csrf_token(settings, nonce)), **context)


def redirect(url: str) -> RedirectResponse:
    return secure_headers(RedirectResponse(url, status_code=303))


def error_page(request: Request, status: int, code: str, detail: str) -> Response | None:
    """HTML answers for dashboard pages; JSON routes (``/dashboard/api/``) keep the JSON body."""
    if request.url.path.startswith(f"{PREFIX}/api/") or request.url.path.startswith(f"{PREFIX}/static/"):
        return None
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = f"{PREFIX}/queue"
        return redirect(f"{PREFIX}/login?next={quote(target, safe='')}")
    user = getattr(request.state, "user", None)
    t = translator_for(request)
    title = t.gettext(ERROR_TITLES.get(status, N_("Something went wrong")))
    if detail == HTTPStatus(status).phrase:  # Starlette's own "Not Found": the title says it already
        detail = ""
    # A detail the catalogs do not know (a framework's message): a sentence in the page's language, the
    # detail itself folded, marked as English.
    message = t.text(detail) if t.knows(detail) else t.gettext(ERROR_SENTENCES.get(status // 100, ERROR_SENTENCES[5]))
    technical = "" if t.knows(detail) else detail
    return render(
        request, "error.html", user=user, status_code=status, title=title, message=message, technical=technical
    )
