"""Settings an administrator may change from the dashboard. Saved in the ``settings`` table (per clinic), they
override the environment's defaults for these fields only; secrets and credentials stay in the environment.

Every process applies them: the API and dashboard per request, the flow's steps when they start
(``tasks.common.step_context``). Each process re-reads them at most every few seconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from studypub.errors import ValidationError
from studypub.i18n import N_
from studypub.models import Setting
from studypub.settings import Settings

# field ("section.name") -> what the form says about it
OVERRIDABLE: tuple[str, ...] = (
    "links.default_retention_days",
    "links.max_retention_days",
    "deid.burned_in_policy",
    "deid.dates",
    "deid.burned_in_text",
    "pacs.host",
    "pacs.port",
    "pacs.called_ae",
    # Per clinic once clinics exist (issue 14): how the patient is reached and what the messages say.
    "notify.clinic_name",
    "notify.email_from",
    "notify.email_from_name",
    "notify.sms_sender",
    "notify.include_service_title",
    "notify.sms_include_service_title",
    "notify.renotify_on_extend",
    "factor.second_factor",
)
# What a clinic's settings may hold beyond the dashboard's fields (set by the superadmin: `studypub clinic`).
CLINIC_OVERRIDABLE: tuple[str, ...] = (
    *OVERRIDABLE,
    "pacs.calling_ae",
    "pacs.retrieve_method",
    "pacs.store_from_aes",
)
CACHE_SECONDS = 5.0


def current_values(settings: Settings, names: tuple[str, ...] = OVERRIDABLE) -> dict[str, Any]:
    return {name: getattr(getattr(settings, name.split(".")[0]), name.split(".")[1]) for name in names}


def load_overrides(session: Session, clinic_code: str, names: tuple[str, ...] = OVERRIDABLE) -> dict[str, Any]:
    rows = session.execute(
        select(Setting.key, Setting.value).where(Setting.clinic_code == clinic_code, Setting.key.in_(names))
    )
    return {key: value for key, value in rows}


def apply_overrides(
    settings: Settings, overrides: dict[str, Any], names: tuple[str, ...] = CLINIC_OVERRIDABLE
) -> Settings:
    """``settings`` with the overrides applied, each section validated again. Raises ValidationError with the
    field's name and reason."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        if name in names:
            section, field = name.split(".")
            sections.setdefault(section, {})[field] = value
    update: dict[str, Any] = {}
    for section, changes in sections.items():
        current = getattr(settings, section)
        try:
            update[section] = type(current).model_validate({**current.model_dump(), **changes})
        except PydanticValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ()))
            raise ValidationError(_problem(f"{section}.{field}", dict(err))) from None
    result = settings.model_copy(update=update)
    if result.links.max_retention_days < result.links.default_retention_days:
        raise ValidationError(
            N_(
                "%(setting)s must be at least %(other_setting)s",
                setting="links.max_retention_days",
                other_setting="links.default_retention_days",
            )
        )
    return result


def _problem(setting: str, err: dict[str, Any]) -> str:
    """What is wrong with a value, in words (the setting is named by its code; interfaces name it in words)."""
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind in ("greater_than_equal", "greater_than"):
        return N_("%(setting)s must be at least %(limit)s", setting=setting, limit=ctx.get("ge", ctx.get("gt")))
    if kind in ("less_than_equal", "less_than"):
        return N_("%(setting)s must be at most %(limit)s", setting=setting, limit=ctx.get("le", ctx.get("lt")))
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return N_("%(setting)s must be a whole number", setting=setting)
    if kind == "string_too_long":
        return N_("%(setting)s must be at most %(limit)s characters", setting=setting, limit=ctx.get("max_length"))
    if kind == "literal_error":
        return N_("%(setting)s must be one of the choices offered", setting=setting)
    return N_("%(setting)s: the value is not valid", setting=setting)


def effective_settings(session: Session, settings: Settings, clinic_code: str | None = None) -> Settings:
    """The clinic's effective settings: what ``studypub.clinics.clinic_context`` resolves (the environment,
    the clinic's row, its overrides), which callers should use directly. Kept for callers that only need the
    settings; an unknown clinic gets the environment's."""
    from studypub.clinics import UnknownClinic, clinic_context

    try:
        return clinic_context(session, settings, clinic_code or settings.default_clinic_code).settings
    except UnknownClinic:
        return settings


def save_overrides(
    session: Session,
    settings: Settings,
    values: dict[str, Any],
    *,
    actor: str,
    clinic_code: str | None = None,
    names: tuple[str, ...] = OVERRIDABLE,
    commit: bool = True,
) -> Settings:
    """Validate and store the administrator's values for ``names`` (an empty value returns the field to its
    default); the clinic's other settings stay as they are."""
    from studypub.clinics import normalise_code
    from studypub.publications import audit

    clinic = normalise_code(clinic_code or settings.default_clinic_code)
    chosen = {name: value for name, value in values.items() if name in names and value not in (None, "", [])}
    result = apply_overrides(settings, chosen, names)  # raises before anything is stored
    existing = {row.key: row for row in session.scalars(select(Setting).where(Setting.clinic_code == clinic))}
    changed: dict[str, Any] = {}
    for name in names:
        row = existing.get(name)
        if name in chosen:
            value = current_values(result, names)[name]
            if row is None:
                session.add(Setting(clinic_code=clinic, key=name, value=value, updated_by=actor))
                changed[name] = value
            elif row.value != value:
                row.value, row.updated_by = value, actor
                changed[name] = value
        elif row is not None:
            session.delete(row)
            changed[name] = None
    if changed:
        audit(session, actor=actor, action="settings.changed", details={"changed": changed}, clinic_code=clinic)
    if commit:
        session.commit()
    clear_cache()
    return result


def clear_cache() -> None:
    """Forget this process's resolved clinic contexts (after a change); other processes within CACHE_SECONDS."""
    from studypub import clinics

    with clinics._lock:
        clinics._contexts.clear()
