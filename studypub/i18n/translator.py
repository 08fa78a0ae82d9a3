"""One language's messages and formats: :func:`translator` gives a :class:`Translator` for a locale.

Catalogs are read on first use (never at import) from the compiled ``.mo`` files, once per process. Dates,
times, numbers and sizes are formatted by Babel from CLDR data, so every language gets its own conventions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date, format_skeleton, format_time, get_timezone_gmt, get_timezone_location
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from babel.units import format_unit

from studypub.i18n import DEFAULT_LOCALE, LANGUAGE_NAMES, LOCALES, supported

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"


@dataclass(frozen=True)
class Labels:
    """Names of codes (step, status, modality...) in words: ``{code: English msgid}`` under one context.

    Write the table with ``pN_(context, "...")`` values, so extraction sees each message with its context."""

    context: str
    names: Mapping[str, str]

    def __contains__(self, code: object) -> bool:
        return code in self.names


_load_lock = threading.Lock()


@lru_cache(maxsize=len(LOCALES))
def catalog(locale: str) -> NullTranslations:
    """The compiled catalog of ``locale`` (an empty one for English when it has no overrides)."""
    with _load_lock:
        found = Translations.load(str(LOCALE_DIR), [locale], DOMAIN)
    return found


class Translator:
    """Messages and formats for one locale."""

    def __init__(self, locale: str) -> None:
        self.locale = locale
        self.babel = Locale.parse(locale)
        self.translations = catalog(locale)

    # Messages ------------------------------------------------------------------------------------------------

    def gettext(self, msgid: str, /, **params: Any) -> str:
        message = self.translations.gettext(msgid)
        return message % params if params else message

    __call__ = gettext

    def ngettext(self, singular: str, plural: str, count: int, /, **params: Any) -> str:
        """A message with plural forms; ``%(num)s`` is the count, formatted for the locale."""
        message = self.translations.ngettext(singular, plural, count)
        return message % {"num": self.number(count), **params}

    def pgettext(self, context: str, msgid: str, /, **params: Any) -> str:
        message = str(self.translations.pgettext(context, msgid))
        return message % params if params else message

    def label(self, labels: Labels, code: str | None) -> str:
        """A code in words (``t.label(STEPS, "find")``); an unknown code is shown as it is."""
        if code is None:
            return ""
        msgid = labels.names.get(code)
        return self.pgettext(labels.context, msgid) if msgid is not None else code

    def text(self, english: str | None) -> str:
        """A message the domain composed in English (a stored reason, an error's detail), in this language."""
        from studypub.i18n.text import translate

        return translate(self, english) if english else ""

    def knows(self, english: str | None) -> bool:
        """Whether :meth:`text` can translate ``english`` (it is one of the catalogs' messages)."""
        from studypub.i18n.text import known

        return bool(english) and known(english or "")

    # Formats ---------------------------------------------------------------------------------------------------

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self.babel)

    def long_date(self, value: date | datetime, tz: tzinfo | None = None) -> str:
        """A long date ("1 February 2025", "1 февраля 2025 г."); datetimes are shown in ``tz``."""
        if isinstance(value, datetime):
            value = (value.astimezone(tz) if tz is not None else value).date()
        return format_date(value, "long", locale=self.babel)

    def short_date(self, value: date | datetime, tz: tzinfo | None = None) -> str:
        """A date in figures, with the whole year ("01.02.2025", "2/1/2025")."""
        if isinstance(value, datetime):
            value = (value.astimezone(tz) if tz is not None else value).date()
        return format_skeleton("yMd", value, locale=self.babel)

    def date_time(self, value: datetime, tz: tzinfo) -> str:
        """Date, time and UTC offset: "1 March 2025, 00:00 (GMT+03:00)", "…, 21:00 (UTC)"."""
        local = value.astimezone(tz)
        time = format_time(local, "HH:mm", locale=self.babel)
        offset = local.utcoffset()
        zone = "UTC" if not offset else get_timezone_gmt(local, width="long", locale=self.babel)
        return f"{self.long_date(local)}, {time} ({zone})"

    def short_datetime(self, value: datetime | str | None, tz: tzinfo) -> str:
        """A table's date and time ("01.02.2025, 16:18", "2/1/2025, 4:18 PM") in ``tz``."""
        if value is None:
            return ""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        local = value.astimezone(tz)
        glue = str(self.babel.datetime_formats["short"])
        return glue.format(format_time(local, "short", locale=self.babel), self.short_date(local))

    def time(self, value: datetime, tz: tzinfo) -> str:
        return format_time(value.astimezone(tz), "short", locale=self.babel)

    def zone_name(self, tz: tzinfo) -> str:
        """Where the clock is ("Moscow", "Москва"): how times on a page are meant."""
        return get_timezone_location(tz, locale=self.babel, return_city=True)

    def size(self, num_bytes: int) -> str:
        """A size in decimal units (as phones and file managers show them): "12.3 MB", "12,3 МБ"."""
        value = float(num_bytes)
        unit = "byte"
        for unit in ("byte", "kilobyte", "megabyte", "gigabyte"):
            if value < 1000 or unit == "gigabyte":
                break
            value /= 1000
        pattern = "#,##0" if unit == "byte" else "#,##0.#"
        return format_unit(value, f"digital-{unit}", length="short", format=pattern, locale=self.babel)

    def languages(self) -> list[tuple[str, str, bool]]:
        """The switch: (code, name in its own language, is this one)."""
        return [(code, LANGUAGE_NAMES[code], code == self.locale) for code in LOCALES]


@lru_cache(maxsize=len(LOCALES) + 1)
def translator(locale: str | None) -> Translator:
    return Translator(supported(locale) or DEFAULT_LOCALE)
