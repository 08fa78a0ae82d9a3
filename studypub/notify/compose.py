"""What a message to the patient says, in the patient's language: the clinic's name, the link, the storage
date, and nothing about the study's content unless the clinic allows it (the service title; never in an SMS
unless allowed separately). Templates are in ``templates/`` (gettext, five languages); a folder of the same
file names in ``STUDYPUB_NOTIFY__TEMPLATE_DIR`` replaces them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

from studypub.i18n.templates import Templates
from studypub.i18n.translator import translator
from studypub.settings import Settings

TEMPLATES_DIR = Path(__file__).parent / "templates"
_text = Templates(TEMPLATES_DIR, html=False)
_html = Templates(TEMPLATES_DIR, html=True)
_custom: dict[str, tuple[Templates, Templates]] = {}


def _templates(settings: Settings) -> tuple[Templates, Templates]:
    folder = settings.notify.template_dir
    if not folder:
        return _text, _html
    if folder not in _custom:
        # FileSystemLoader looks in each folder in turn: the clinic's files first, the built-in ones for the rest.
        search = cast(Path, [Path(folder), TEMPLATES_DIR])
        _custom[folder] = (Templates(search, html=False), Templates(search, html=True))
    return _custom[folder]


@dataclass(frozen=True)
class Email:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Facts:
    """What a message may say (no identifiers)."""

    clinic: str
    link: str
    kept_until: datetime
    locale: str
    service_title: str | None = None
    factor: str | None = None  # what the link asks for (pin, birth_date)
    extended: bool = False


def _context(settings: Settings, facts: Facts, *, service_allowed: bool) -> dict[str, object]:
    t = translator(facts.locale)
    return {
        "clinic": facts.clinic,
        "link": facts.link,
        "kept_until": t.long_date(facts.kept_until, ZoneInfo(settings.links.time_zone)),
        "service": facts.service_title if service_allowed and facts.service_title else None,
        "factor": facts.factor,
        "extended": facts.extended,
    }


def email(settings: Settings, facts: Facts) -> Email:
    text_t, html_t = _templates(settings)
    t = translator(facts.locale)
    context = _context(settings, facts, service_allowed=settings.notify.include_service_title)
    subject = " ".join(text_t.render("email_subject.txt", t, **context).split())
    return Email(
        subject=subject,
        text=text_t.render("email.txt", t, **context),
        html=html_t.render("email.html", t, subject=subject, **context),
    )


def sms_link(settings: Settings, facts: Facts) -> str:
    text_t, _ = _templates(settings)
    context = _context(settings, facts, service_allowed=settings.notify.sms_include_service_title)
    return " ".join(text_t.render("sms_link.txt", translator(facts.locale), **context).split())


def sms_pin(settings: Settings, facts: Facts, pin: str) -> str:
    text_t, _ = _templates(settings)
    context = _context(settings, facts, service_allowed=False)
    return " ".join(text_t.render("sms_pin.txt", translator(facts.locale), pin=pin, **context).split())
