"""The note in every archive (``README.txt``): what is inside and how to open it, in each interface language,
the clinic's first (``links.default_language``). Written from ``archive_note.txt`` with the same catalogs
as the pages: to add a line, add it to the template with ``_()`` and run ``make i18n``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from studypub.i18n import LANGUAGE_NAMES, LOCALES
from studypub.i18n.labels import WITHHELD
from studypub.i18n.templates import Templates
from studypub.i18n.translator import translator

NOTES_DIR = Path(__file__).parent
_templates = Templates(NOTES_DIR, html=False)


def archive_note(
    *,
    instances: int,
    series: int,
    withheld: int,
    withheld_reasons: Mapping[str, int],
    first_locale: str,
    dates: str = "remove",
    burned_in_text: str | None = None,
) -> str:
    """The note's text: one section per language, ``first_locale`` first. ``dates``: the dates option the
    anonymiser applied (remove, shift or keep); ``burned_in_text``: the policy it applied to text burned into the
    pixels (mask / withhold / off), stated when given."""
    order = [first_locale, *(locale for locale in LOCALES if locale != first_locale)]
    sections = []
    for locale in order:
        t = translator(locale)
        reasons = sorted({t.label(WITHHELD, code) for code, count in withheld_reasons.items() if count})
        sections.append(
            _templates.render(
                "archive_note.txt",
                t,
                language=LANGUAGE_NAMES[locale],
                instances=instances,
                series=series,
                withheld=withheld,
                reasons="; ".join(reasons),
                dates=dates,
                burned_in_text=burned_in_text,
            ).strip()
        )
    return "\n\n" + "\n\n\n".join(sections) + "\n"
