"""The language of a request: shared by every web surface (the patient's link pages, the dashboard).

The choice, in order: a ``?lang=xx`` switch (remembered in a cookie), the cookie, the browser's
``Accept-Language``, then the clinic's default (``links.default_language``). The messages, the formats and
the templates that speak a language are in :mod:`studypub.i18n`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from babel.core import negotiate_locale
from starlette.requests import Request
from starlette.responses import Response

from studypub.i18n import DEFAULT_LOCALE, LOCALES, supported

LANG_PARAM = "lang"
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600

_LANG_TAG = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$|^\*$")


def parse_accept_language(header: str | None) -> list[str]:
    """Language tags of an ``Accept-Language`` header, most preferred first (``q=0`` and junk dropped)."""
    if not header:
        return []
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header[:1024].split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not tag or not _LANG_TAG.match(tag):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            weighted.append((-q, index, tag))
    return [tag for _, _, tag in sorted(weighted)]


def negotiate(accept_language: str | None, default: str = DEFAULT_LOCALE) -> str:
    """The supported locale the browser prefers (``ru-RU`` matches ``ru``), else ``default``."""
    preferred = [tag for tag in parse_accept_language(accept_language) if tag != "*"]
    found = negotiate_locale(preferred, list(LOCALES), sep="-") if preferred else None
    return found.lower() if found else default


@dataclass(frozen=True)
class LocaleChoice:
    locale: str
    remember: bool  # the ``?lang=`` switch was used: set the cookie


def _default(request: Request) -> str:
    settings = getattr(request.app.state, "settings", None)
    return settings.links.default_language if settings is not None else DEFAULT_LOCALE


def choose_locale(request: Request) -> LocaleChoice:
    """The request's locale: ``?lang=`` (remembered), the cookie, ``Accept-Language``, the default."""
    switched = supported(request.query_params.get(LANG_PARAM))
    if switched:
        return LocaleChoice(switched, remember=switched != supported(request.cookies.get(LANG_COOKIE)))
    remembered = supported(request.cookies.get(LANG_COOKIE))
    if remembered:
        return LocaleChoice(remembered, remember=False)
    return LocaleChoice(negotiate(request.headers.get("accept-language"), _default(request)), remember=False)


def remember_locale(response: Response, request: Request, choice: LocaleChoice) -> None:
    """Set the language cookie when the switch was used; say the answer depends on the language."""
    response.headers.append("Vary", "Accept-Language, Cookie")
    if choice.remember:
        response.set_cookie(
            LANG_COOKIE,
            choice.locale,
            max_age=LANG_COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
