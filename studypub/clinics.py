"""Clinics are data: one ``clinics`` row per clinic, keyed by its normalised code, and its settings.

A clinic code reaches the service in every MIS request; "Default" and " default" are the same clinic, so a
code is normalised (trimmed, case-folded) wherever it enters (:func:`normalise_code`) and only known codes are
served (:func:`require_clinic`: an unknown one is refused with "unknown clinic", nothing recorded).

A clinic's effective settings are the environment's, then its row (time zone, languages), then its
``settings`` rows (``studypub.overrides``: storage periods, burned-in policy, its PACS peer). They are built
here, once per clinic and process every few seconds, and handed to the API's routes and the flow's steps as
one :class:`ClinicContext`; no call site derives them again.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studypub.errors import Conflict, NotFound, ValidationError
from studypub.i18n import N_
from studypub.models import Clinic, utcnow
from studypub.settings import Settings

LANGUAGES = ("ru", "en", "es", "fr", "de")
MAX_CODE_LENGTH = 64
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class UnknownClinic(ValidationError):
    """A clinic code the instance does not know (a 422: the administrator adds the clinic)."""

    code = "unknown_clinic"


def normalise_code(code: str | None) -> str:
    """The one spelling of a clinic code: trimmed and case-folded ("F_Khimki " → "f_khimki")."""
    return (code or "").strip().casefold()


def check_code(code: str | None) -> str:
    value = normalise_code(code)
    if not value or len(value) > MAX_CODE_LENGTH or any(ord(c) < 32 for c in value):
        raise ValidationError(N_("the clinic code must be 1 to 64 printable characters"))
    return value


def get_clinic(session: Session, code: str | None) -> Clinic | None:
    return session.get(Clinic, normalise_code(code))


def require_clinic(session: Session, code: str | None) -> Clinic:
    """The known, enabled clinic of ``code`` (any spelling), else UnknownClinic."""
    clinic = get_clinic(session, code)
    if clinic is None or clinic.disabled:
        raise UnknownClinic(N_("unknown clinic %(code)s", code=repr((code or "").strip()[:MAX_CODE_LENGTH])))
    return clinic


def list_clinics(session: Session) -> list[Clinic]:
    return list(session.scalars(select(Clinic).order_by(Clinic.code)))


def display_name(clinic: Clinic, language: str) -> str:
    names = clinic.names or {}
    return str(names.get(language) or next(iter(names.values()), None) or clinic.code)


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The clinic row's own fields, checked (an empty value clears a field)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            value = value.strip() or None
        if name == "names":
            names = {k: str(v).strip() for k, v in (value or {}).items() if v and str(v).strip()}
            if any(k not in LANGUAGES for k in names) or any(len(v) > 128 for v in names.values()):
                raise ValidationError(N_("a clinic's name is given per language (ru, en, es, fr, de), 128 characters"))
            value = names
        elif name == "languages" and value is not None:
            langs = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
            if not langs or any(v not in LANGUAGES for v in langs):
                raise ValidationError(N_("the clinic's languages must be among ru, en, es, fr, de"))
            value = list(dict.fromkeys(langs))
        elif name == "time_zone" and value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValidationError(N_("not a time zone such as Europe/Moscow: %(value)s", value=value)) from None
        elif name == "colour" and value is not None and not _COLOUR.match(value):
            raise ValidationError(N_("the colour must be written #RRGGBB"))
        elif name in ("phone", "address", "logo_url") and value is not None and len(value) > 256:
            raise ValidationError(N_("%(field)s is longer than %(max)s characters", field=name, max=256))
        elif name not in ("names", "languages", "time_zone", "colour", "phone", "address", "logo_url", "disabled"):
            continue
        out[name] = value
    return out


def add_clinic(
    session: Session,
    settings: Settings,
    code: str,
    *,
    actor: str,
    fields: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> Clinic:
    """A new clinic with its row's fields and its settings (``values``: ``overrides.CLINIC_OVERRIDABLE`` names)."""
    from studypub.overrides import CLINIC_OVERRIDABLE, save_overrides
    from studypub.publications import audit

    normal = check_code(code)
    if session.get(Clinic, normal) is not None:
        raise Conflict(N_("a clinic with the code %(code)s exists", code=repr(normal)))
    clinic = Clinic(code=normal, **{"names": {}, **_check_fields(fields or {})})
    if not clinic.names:
        clinic.names = {settings.links.default_language: code.strip()}
    session.add(clinic)
    session.flush()
    if values:
        save_overrides(
            session, settings, values, actor=actor, clinic_code=normal, names=CLINIC_OVERRIDABLE, commit=False
        )
    audit(session, actor=actor, action="clinic.added", details={"clinic": normal}, clinic_code=normal)
    session.commit()
    forget()
    return clinic


def update_clinic(
    session: Session,
    settings: Settings,
    code: str,
    *,
    actor: str,
    fields: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> Clinic:
    """Change a clinic's fields; ``values`` replace the named settings only (others stay as they are)."""
    from studypub.overrides import CLINIC_OVERRIDABLE, load_overrides, save_overrides
    from studypub.publications import audit

    clinic = get_clinic(session, code)
    if clinic is None:
        raise NotFound(N_("no such clinic"))
    for name, value in _check_fields(fields or {}).items():
        setattr(clinic, name, value if name != "names" else {**(clinic.names or {}), **value})
    clinic.updated_at = utcnow()
    if values:
        merged = {**load_overrides(session, clinic.code, CLINIC_OVERRIDABLE), **values}
        save_overrides(
            session, settings, merged, actor=actor, clinic_code=clinic.code, names=CLINIC_OVERRIDABLE, commit=False
        )
    audit(session, actor=actor, action="clinic.updated", details={"clinic": clinic.code}, clinic_code=clinic.code)
    session.commit()
    forget()
    return clinic


def ensure_default_clinic(session: Session, settings: Settings) -> Clinic | None:
    """The default clinic (``STUDYPUB_DEFAULT_CLINIC_CODE``: where manual and CLI requests and new users go)
    exists: an instance that never configured clinics has it, on the environment's settings. Made when
    missing (an operator may disable it, not remove it)."""
    code = check_code(settings.default_clinic_code)
    if session.get(Clinic, code) is not None:
        return None
    clinic = Clinic(code=code, names={settings.links.default_language: settings.default_clinic_code.strip()})
    session.add(clinic)
    try:
        session.commit()
    except IntegrityError:  # another process of the same start made it
        session.rollback()
        return None
    return clinic


# The resolved context ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicContext:
    """A clinic as a request or a step uses it: its code, its row's public facts, its effective settings."""

    code: str
    settings: Settings
    names: dict[str, str]
    phone: str | None
    address: str | None
    languages: tuple[str, ...]
    logo_url: str | None
    colour: str | None

    def name(self, language: str) -> str:
        return str(self.names.get(language) or next(iter(self.names.values()), None) or self.code)


def _with_row(settings: Settings, clinic: Clinic) -> Settings:
    links: dict[str, Any] = {}
    if clinic.time_zone:
        links["time_zone"] = clinic.time_zone
    if clinic.languages:
        links["default_language"] = clinic.languages[0]
    if not links:
        return settings
    return settings.model_copy(update={"links": settings.links.model_copy(update=links)})


def clinic_context(session: Session, base: Settings, code: str | None) -> ClinicContext:
    """The clinic of ``code`` with its effective settings (environment, its row, its settings rows), cached
    a few seconds per process. Raises UnknownClinic for a code the instance does not know."""
    from studypub.overrides import CACHE_SECONDS, CLINIC_OVERRIDABLE, apply_overrides, load_overrides

    normal = normalise_code(code)
    key = (id(base), normal)
    now = time.monotonic()
    with _lock:
        hit = _contexts.get(key)
    if hit is not None and now - hit[0] < CACHE_SECONDS and hit[1] is base:
        return hit[2]
    clinic = require_clinic(session, normal)
    settings = _with_row(base, clinic)
    overrides = load_overrides(session, clinic.code, CLINIC_OVERRIDABLE)
    if overrides:  # saved values were validated; a later environment change may clash: keep the defaults
        with contextlib.suppress(ValidationError):
            settings = apply_overrides(settings, overrides)
    context = ClinicContext(
        code=clinic.code,
        settings=settings,
        names=dict(clinic.names or {}),
        phone=clinic.phone,
        address=clinic.address,
        languages=tuple(clinic.languages or ()),
        logo_url=clinic.logo_url,
        colour=clinic.colour,
    )
    with _lock:
        if len(_contexts) > 1024:
            _contexts.clear()
        _contexts[key] = (now, base, context)
    return context


_contexts: dict[tuple[int, str], tuple[float, Settings, ClinicContext]] = {}
_lock = threading.Lock()


def forget() -> None:
    """Drop this process's cached contexts and settings (after a change)."""
    from studypub.overrides import clear_cache

    clear_cache()  # the contexts too
