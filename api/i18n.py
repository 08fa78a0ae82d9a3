"""Interface languages: a small message catalogue (ru, en), the choice of a locale for a request, and
locale-aware formatting (dates, sizes, numbers) through babel.

The choice, in order: a ``?lang=xx`` switch (remembered in a cookie), the cookie, the browser's
``Accept-Language``, then :data:`DEFAULT_LOCALE`. Used by the patient's link pages; the dashboard reuses it
(add its messages to :data:`MESSAGES` under its own prefix).

Messages are looked up by id; a missing translation falls back to English, then to the id itself. A message
with plural forms is a dict of CLDR plural categories (``one``, ``few``, ``many``, ``other``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.core import negotiate_locale
from babel.dates import format_date, format_time, get_timezone_gmt
from babel.numbers import format_decimal
from babel.units import format_unit
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import Response

from dashboard.messages import MESSAGES as DASHBOARD_MESSAGES

SUPPORTED_LOCALES: tuple[str, ...] = ("ru", "en")
DEFAULT_LOCALE = "ru"  # the customer's clinics are Russian; a browser that says nothing gets Russian
LANG_PARAM = "lang"
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600

# Each language named in itself, for the switch.
LANGUAGE_NAMES: dict[str, str] = {"ru": "Русский", "en": "English"}

Message = str | dict[str, str]

MESSAGES: dict[str, dict[str, Message]] = {
    "en": {
        # Shared
        "brand": "Imaging study",
        "language": "Language",
        "footer.private": "This page is private: it is not indexed by search engines.",
        # The patient's link: ready
        "link.ready.title": "Your study is ready",
        "link.untitled": "Imaging study",
        "link.field.study_date": "Study date",
        "link.field.modalities": "Type",
        "link.field.images": "Images",
        "link.field.size": "Archive size",
        "link.field.kept_until": "Available until",
        "link.download": "Download the study",
        "link.download.hint": "A ZIP archive, {size}.",
        "link.withheld": {
            "one": (
                "{count} image was not included to protect privacy: it may show personal data in the picture "
                "itself. If your doctor needs it, contact the clinic."
            ),
            "other": (
                "{count} images were not included to protect privacy: they may show personal data in the "
                "picture itself. If your doctor needs them, contact the clinic."
            ),
        },
        "link.share": (
            "Names and identifiers have been removed from the images. Share this link only with people you "
            "trust, such as your doctor: until {date}, anyone who has it can download the study."
        ),
        "link.help.title": "How to open the study",
        "link.help.unzip": (
            "Download the archive (a ZIP file) and unzip it: on Windows, right-click it and choose "
            "“Extract All”; on a Mac, double-click it."
        ),
        "link.help.viewer": (
            "The folder holds the images in DICOM format and a DICOMDIR file that lists them. Open it in a "
            "free DICOM viewer, for example MicroDicom (Windows), Weasis (Windows, macOS, Linux), Horos or "
            "OsiriX Lite (macOS)."
        ),
        "link.help.phone": (
            "On a phone: the images are best viewed on a computer. You can also send this link to your "
            "doctor: it opens on any device."
        ),
        # Being prepared
        "link.preparing.title": "Your study is being prepared",
        "link.preparing.text": (
            "The images are being collected and made anonymous. This usually takes a few minutes. This page "
            "refreshes by itself; you can also come back to the same link later."
        ),
        "link.preparing.progress": "Images received: {received} of {expected}",
        "link.preparing.refresh": "Refresh now",
        # Failed
        "link.failed.title": "The study could not be prepared",
        "link.failed.text": "Please contact the clinic: the staff can see what went wrong and publish it again.",
        # Misses
        "link.not_found.title": "Link not found",
        "link.not_found.text": (
            "Check that the link was copied completely. If it still does not open, ask the clinic for the link again."
        ),
        "link.gone.title": "This link has expired",
        "link.gone.text": (
            "The study was available for a limited time and has been deleted. If you still need it, contact the clinic."
        ),
        "link.too_many.title": "Too many requests",
        "link.too_many.text": "Please wait a minute and try again.",
        "link.unavailable.title": "Temporarily unavailable",
        "link.unavailable.text": "The service cannot answer right now. Please try again in a few minutes.",
    },
    "ru": {
        "brand": "Результаты исследования",
        "language": "Язык",
        "footer.private": "Это личная страница: поисковые системы её не индексируют.",
        "link.ready.title": "Ваше исследование готово",
        "link.untitled": "Медицинское исследование",
        "link.field.study_date": "Дата исследования",
        "link.field.modalities": "Вид",
        "link.field.images": "Количество снимков",
        "link.field.size": "Размер архива",
        "link.field.kept_until": "Доступно до",
        "link.download": "Скачать исследование",
        "link.download.hint": "ZIP-архив, {size}.",
        "link.withheld": {
            "one": (
                "{count} снимок не включён в архив для защиты личных данных: на самом изображении могут быть "
                "видны персональные сведения. Если он нужен врачу, обратитесь в клинику."
            ),
            "few": (
                "{count} снимка не включены в архив для защиты личных данных: на самих изображениях могут быть "
                "видны персональные сведения. Если они нужны врачу, обратитесь в клинику."
            ),
            "many": (
                "{count} снимков не включены в архив для защиты личных данных: на самих изображениях могут быть "
                "видны персональные сведения. Если они нужны врачу, обратитесь в клинику."
            ),
            "other": (
                "Не включено в архив снимков: {count}. На самих изображениях могут быть видны персональные "
                "сведения. Если они нужны врачу, обратитесь в клинику."
            ),
        },
        "link.share": (
            "Имена и идентификаторы из снимков удалены. Передавайте ссылку только тем, кому доверяете, например "
            "врачу: до {date} любой, у кого она есть, может скачать исследование."
        ),
        "link.help.title": "Как открыть исследование",
        "link.help.unzip": (
            "Скачайте архив (ZIP-файл) и распакуйте его: в Windows — правой кнопкой мыши, «Извлечь все»; "
            "на Mac — двойным щелчком."
        ),
        "link.help.viewer": (
            "В папке — снимки в формате DICOM и файл DICOMDIR с их списком. Откройте её в бесплатной программе "
            "для просмотра DICOM, например MicroDicom (Windows), Weasis (Windows, macOS, Linux), Horos или "
            "OsiriX Lite (macOS)."
        ),
        "link.help.phone": (
            "На телефоне: снимки удобнее смотреть на компьютере. Можно также отправить эту ссылку врачу — она "
            "открывается на любом устройстве."
        ),
        "link.preparing.title": "Исследование готовится",
        "link.preparing.text": (
            "Снимки собираются и обезличиваются. Обычно это занимает несколько минут. Страница обновится сама; "
            "можно также вернуться к этой ссылке позже."
        ),
        "link.preparing.progress": "Получено снимков: {received} из {expected}",
        "link.preparing.refresh": "Обновить",
        "link.failed.title": "Не удалось подготовить исследование",
        "link.failed.text": (
            "Пожалуйста, обратитесь в клинику: сотрудники видят причину и могут опубликовать его снова."
        ),
        "link.not_found.title": "Ссылка не найдена",
        "link.not_found.text": (
            "Проверьте, что ссылка скопирована полностью. Если она всё равно не открывается, попросите ссылку "
            "в клинике ещё раз."
        ),
        "link.gone.title": "Срок действия ссылки истёк",
        "link.gone.text": (
            "Исследование было доступно ограниченное время и удалено. Если оно всё ещё нужно, обратитесь в клинику."
        ),
        "link.too_many.title": "Слишком много запросов",
        "link.too_many.text": "Подождите минуту и попробуйте снова.",
        "link.unavailable.title": "Временно недоступно",
        "link.unavailable.text": "Сервис сейчас не может ответить. Попробуйте через несколько минут.",
    },
}


def _merge(extra: dict[str, dict[str, Message]]) -> None:
    for locale, messages in extra.items():
        MESSAGES.setdefault(locale, {}).update(messages)


_merge(DASHBOARD_MESSAGES)

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


def supported(value: str | None, locales: tuple[str, ...] = SUPPORTED_LOCALES) -> str | None:
    """``value`` when it names a supported locale (case-insensitive), else None."""
    value = (value or "").strip().lower()
    return value if value in locales else None


def negotiate(
    accept_language: str | None, locales: tuple[str, ...] = SUPPORTED_LOCALES, default: str = DEFAULT_LOCALE
) -> str:
    """The supported locale the browser prefers (``ru-RU`` matches ``ru``), else ``default``."""
    preferred = [tag for tag in parse_accept_language(accept_language) if tag != "*"]
    found = negotiate_locale(preferred, list(locales), sep="-") if preferred else None
    return found.lower() if found else default


@dataclass(frozen=True)
class LocaleChoice:
    locale: str
    remember: bool  # the ``?lang=`` switch was used: set the cookie


def choose_locale(request: Request) -> LocaleChoice:
    """The request's locale: ``?lang=`` (remembered), the cookie, ``Accept-Language``, the default."""
    switched = supported(request.query_params.get(LANG_PARAM))
    if switched:
        return LocaleChoice(switched, remember=switched != supported(request.cookies.get(LANG_COOKIE)))
    remembered = supported(request.cookies.get(LANG_COOKIE))
    if remembered:
        return LocaleChoice(remembered, remember=False)
    return LocaleChoice(negotiate(request.headers.get("accept-language")), remember=False)


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


class Translator:
    """Messages and formatting for one locale (``translator(locale)``)."""

    def __init__(self, locale: str) -> None:
        self.locale = locale
        self._babel = Locale.parse(locale)
        self._messages = MESSAGES.get(locale, {})
        self._fallback = MESSAGES["en"]

    def _lookup(self, msgid: str) -> Message:
        return self._messages.get(msgid) or self._fallback.get(msgid) or msgid

    def gettext(self, msgid: str, **params: Any) -> str:
        message = self._lookup(msgid)
        if isinstance(message, dict):
            message = message.get("other") or next(iter(message.values()))
        return message.format(**params) if params else message

    __call__ = gettext

    def ngettext(self, msgid: str, count: int, **params: Any) -> str:
        """A message with plural forms; ``{count}`` is formatted for the locale."""
        message = self._lookup(msgid)
        if isinstance(message, dict):
            form = self._babel.plural_form(count)
            message = message.get(form) or message.get("other") or next(iter(message.values()))
        return message.format(count=self.number(count), **params)

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self._babel)

    def long_date(self, value: date | datetime, tz: tzinfo | None = None) -> str:
        """A long date ("1 February 2025", "1 февраля 2025 г."); datetimes are shown in ``tz``."""
        if isinstance(value, datetime):
            value = (value.astimezone(tz) if tz is not None else value).date()
        return format_date(value, "long", locale=self._babel)

    def date_time(self, value: datetime, tz: tzinfo) -> str:
        """Date, time and UTC offset: "1 March 2025, 00:00 (GMT+03:00)", "…, 21:00 (UTC)"."""
        local = value.astimezone(tz)
        time = format_time(local, "HH:mm", locale=self._babel)
        offset = local.utcoffset()
        zone = "UTC" if not offset else get_timezone_gmt(local, width="long", locale=self._babel)
        return f"{self.long_date(local)}, {time} ({zone})"

    def size(self, num_bytes: int) -> str:
        """A size in decimal units (as phones and file managers show them): "12.3 MB", "12,3 МБ"."""
        value = float(num_bytes)
        for unit in ("byte", "kilobyte", "megabyte", "gigabyte"):
            if value < 1000 or unit == "gigabyte":
                break
            value /= 1000
        pattern = "#,##0" if unit == "byte" else "#,##0.#"
        return format_unit(value, f"digital-{unit}", length="short", format=pattern, locale=self._babel)

    def languages(self) -> list[tuple[str, str, bool]]:
        """The switch: (code, name in its own language, is this one)."""
        return [(code, LANGUAGE_NAMES.get(code, code), code == self.locale) for code in SUPPORTED_LOCALES]


def template_environment(directory: Path) -> Environment:
    """Jinja templates as every page here uses them: autoescaped HTML, undefined names are errors."""
    return Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(("html",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=16)
def translator(locale: str) -> Translator:
    return Translator(supported(locale) or DEFAULT_LOCALE)
