"""Rendering dashboard pages: the Jinja environment, the common context (user, language, CSRF token), the
security headers, and the HTML error pages (sign-in redirect for 401, a page for 403/404/409/...)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.i18n import Translator, choose_locale, remember_locale, template_environment, translator
from dashboard.auth import csrf_nonce, csrf_token, set_csrf_cookie
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

_env = template_environment(TEMPLATES_DIR)


def secure_headers(response: R) -> R:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def zone(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.links.time_zone)


def short_datetime(t: Translator, value: datetime | str | None, tz: tzinfo) -> str:
    """A table's date and time in the user's locale and the clinic's time zone ("01.02.2025, 16:18")."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return format_datetime(value.astimezone(tz), "short", locale=t.locale)


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
    t: Translator = translator(choice.locale)
    nonce, new_nonce = csrf_nonce(request)
    html = _env.get_template(template).render(
        t=t,
        _=t.gettext,
        user=user,
        is_admin=user is not None and user.role == Role.ADMINISTRATOR,
        csrf=csrf_token(settings, nonce),
        prefix=PREFIX,
        static=f"{PREFIX}/static",
        path=request.url.path,
        tz=zone(settings),
        dt=lambda value: short_datetime(t, value, zone(settings)),
        settings=settings,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    if new_nonce:
        set_csrf_cookie(response, request, nonce)
    remember_locale(response, request, choice)
    return secure_headers(response)


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
    return render(request, "error.html", user=user, status_code=status, status=status, code=code, detail=detail)
