"""Translating a message the domain composed in English (``N_(msgid, **params)``) when it is shown.

The stored English is matched against the catalogs' message ids: exactly, or as a pattern in which each
``%(name)s`` is a named group. The most specific pattern wins (the most literal characters). The recovered
parameters are translated in turn by their name:

- ``step``: a step code (``find``, ``retrieve``...), shown as the step's name;
- ``setting`` or ``*_setting``: a setting's code (``links.max_retention_days``), shown as its name;
- ``field``: a form or filter field's code (``upload_from``), shown as its name;
- ``reason``: a nested message (a failure reason inside "tried again automatically at..."), recursively;
- anything else (numbers, times, AE titles, technical details): as it is.

A text that matches nothing is shown as it is (in English): the catalog tests and the browser test make
sure that no message the interface shows gets there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from babel.messages.mofile import read_mo

from studypub.i18n import LOCALES

if TYPE_CHECKING:
    from studypub.i18n.translator import Translator

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
STEP_CODES = ("find", "retrieve", "anonymise", "zip", "upload", "link", "start")
_PARAM_PATTERNS = {
    "step": "|".join(STEP_CODES),
    "time": r"\d{1,2}:\d{2}",
}
NESTED = frozenset({"reason"})
MAX_DEPTH = 4


@dataclass(frozen=True)
class Pattern:
    msgid: str
    regex: re.Pattern[str]
    literal: int  # characters outside the placeholders: the more, the more specific


def compile_pattern(msgid: str) -> Pattern:
    parts: list[str] = []
    seen: set[str] = set()
    position = literal = 0
    for found in PLACEHOLDER.finditer(msgid):
        text = msgid[position : found.start()].replace("%%", "%")
        parts.append(re.escape(text))
        literal += len(text)
        name = found.group(1)
        if name in seen:
            parts.append(f"(?P={name})")
        else:
            parts.append(f"(?P<{name}>{_PARAM_PATTERNS.get(name, '.+?')})")
            seen.add(name)
        position = found.end()
    tail = msgid[position:].replace("%%", "%")
    parts.append(re.escape(tail))
    literal += len(tail)
    return Pattern(msgid, re.compile("".join(parts), re.DOTALL), literal)


class Matcher:
    """The catalogs' context-free, singular message ids: exact ones, and patterns with parameters."""

    def __init__(self, msgids: set[str]) -> None:
        self.exact = {m for m in msgids if not PLACEHOLDER.search(m)}
        patterns = [compile_pattern(m) for m in msgids if PLACEHOLDER.search(m)]
        self.patterns = sorted(patterns, key=lambda p: (-p.literal, p.msgid))

    def match(self, text: str) -> tuple[str, dict[str, str]] | None:
        if text in self.exact:
            return text, {}
        for pattern in self.patterns:
            found = pattern.regex.fullmatch(text)
            if found:
                return pattern.msgid, found.groupdict()
        return None


@lru_cache(maxsize=1)
def matcher() -> Matcher:
    """From every compiled catalog (each holds the ids it translates; the catalog test keeps them complete)."""
    from studypub.i18n.translator import DOMAIN, LOCALE_DIR

    msgids: set[str] = set()
    for locale in LOCALES:
        path = LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            for message in read_mo(fh):
                if message.id and message.context is None and isinstance(message.id, str):
                    msgids.add(message.id)
    return Matcher(msgids)


def known(english: str) -> bool:
    """Whether ``english`` is a message of the catalogs (so :func:`translate` can put it in words)."""
    return matcher().match(english) is not None


def translate(t: Translator, english: str, depth: int = 0) -> str:
    return _translate(t.locale, english, depth)


@lru_cache(maxsize=4096)
def _translate(locale: str, english: str, depth: int) -> str:
    from studypub.i18n.labels import FIELDS, SETTINGS, STEPS
    from studypub.i18n.translator import translator

    t = translator(locale)
    found = matcher().match(english) if depth <= MAX_DEPTH else None
    if found is None:
        return english
    msgid, params = found
    if not params:
        return t.gettext(msgid)
    shown: dict[str, str] = {}
    for name, value in params.items():
        if name == "step":
            shown[name] = t.label(STEPS, value)
        elif name == "setting" or name.endswith("_setting"):
            shown[name] = t.label(SETTINGS, value)
        elif name == "field":
            shown[name] = t.label(FIELDS, value)
        elif name in NESTED:
            shown[name] = _translate(locale, value, depth + 1)
        else:
            shown[name] = value
    return t.gettext(msgid, **shown)
