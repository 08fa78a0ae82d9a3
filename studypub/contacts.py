"""The patient's contact for sending the link (email, phone in E.164, language) and the birth date a link
may ask for. Personal data: checked here, stored on the publication only, erased by retention with the
identifiers; error messages never repeat the value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from studypub.errors import ValidationError
from studypub.i18n import LOCALES, N_

# A practical address check (RFC 5321 lengths, one @, a dotted domain, no spaces or control characters).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f<>(),;:\"\[\]]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")+$")


@dataclass(frozen=True)
class Contact:
    email: str | None = None
    phone: str | None = None  # E.164
    language: str | None = None

    @property
    def channels(self) -> list[str]:
        return [name for name, value in (("email", self.email), ("sms", self.phone)) if value]


def normalise_email(value: str | None) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValidationError(N_("%(field)s is not an email address", field="patient_email"))
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(value: str | None) -> str | None:
    """A phone number in E.164 (``+79161234567``), checked as a valid number by ``phonenumbers``."""
    import phonenumbers

    value = (value or "").strip()
    if not value:
        return None
    if not value.startswith("+"):
        raise ValidationError(
            N_("%(field)s must be in international format (E.164), e.g. +79161234567", field="patient_phone")
        )
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise ValidationError(N_("%(field)s is not a valid phone number", field="patient_phone"))
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_language(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    if not value:
        return None
    if value not in LOCALES:
        raise ValidationError(
            N_("%(field)s must be one of %(choices)s", field="notify_language", choices=", ".join(LOCALES))
        )
    return value


def contact(email: str | None, phone: str | None, language: str | None) -> Contact:
    return Contact(normalise_email(email), normalise_phone(phone), normalise_language(language))


def birth_date_text(value: date | str | None) -> str | None:
    """The canonical text of a birth date (``YYYY-MM-DD``) from a date, an ISO date or a DICOM DA value."""
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    if re.fullmatch(r"\d{8}", text):
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def mask_phone(phone: str | None) -> str:
    """For logs and staff screens: the country code and the last two digits only."""
    if not phone:
        return "—"
    return f"{phone[:2]}{'•' * max(0, len(phone) - 4)}{phone[-2:]}"


def mask_email(email: str | None) -> str:
    if not email:
        return "—"
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"
