"""Interface languages: Russian, English, Spanish, French and German, from gettext catalogs.

Every text a person reads (the patient's link pages, the dashboard, error pages, the archive's note, failure
and waiting reasons, step and status names, audit sentences) is an English message id looked up in the
catalogs ``studypub/i18n/locale/<lang>/LC_MESSAGES/messages.po``, compiled to ``.mo`` files beside them and
committed (``make i18n`` extracts, updates and compiles; a unit test fails when they are stale or a message
lacks a translation). English is the source language: its catalog may stay empty.

Two kinds of messages:

- Interface text, translated where it is rendered: ``_("Sign in")`` in templates, ``t.gettext(...)`` in code,
  and ``N_("...")`` / ``pN_(context, "...")`` to mark constants (label tables) for extraction.
- Messages the domain composes in English and stores or raises (a failure reason, a waiting reason, an
  error's detail): ``N_("study not found in PACS (looked for since %(time)s)", time=...)`` returns the English
  text, which goes to the database, the logs and the MIS API unchanged. The interface translates the stored
  text when it shows it (:meth:`studypub.i18n.translator.Translator.text`): the English is matched back
  against the catalogs' message ids, and their named parameters are recovered and translated in turn where
  they are messages too (a nested reason, a step name). The domain never needs to know who reads it.

Parameters are always named (``%(name)s``): translators may reorder them, and the catalog checks verify that
each translation keeps them. This module imports nothing heavy: domain modules import the markers from it.
"""

from __future__ import annotations

from typing import Any

LOCALES: tuple[str, ...] = ("ru", "en", "es", "fr", "de")
SOURCE_LOCALE = "en"  # the language of the message ids
DEFAULT_LOCALE = "ru"  # when the browser asks for none of LOCALES (settings: links.default_language)
LANGUAGE_NAMES: dict[str, str] = {  # each language named in itself, for the switch
    "ru": "Русский",
    "en": "English",
    "es": "Español",
    "fr": "Français",
    "de": "Deutsch",
}


def N_(msgid: str, /, **params: Any) -> str:
    """Mark an English message for translation; with parameters, the English text (``msgid % params``).

    What it returns is what the domain stores and logs; interfaces translate it when they show it."""
    return msgid % params if params else msgid


def pN_(context: str, msgid: str, /) -> str:
    """Mark a message with a context (a label: ``pN_("step", "Search")``) for extraction; returns ``msgid``."""
    return msgid


def supported(value: str | None) -> str | None:
    """``value`` when it names one of :data:`LOCALES` (case-insensitive), else None."""
    value = (value or "").strip().lower()
    return value if value in LOCALES else None
