"""Jinja templates that speak a language: one environment per locale, with that locale's catalog installed,
so ``_()``, ``ngettext()`` and ``pgettext()`` in a template translate (new-style: named ``%(x)s``
parameters, escaped in HTML), and ``t`` is the locale's :class:`~studypub.i18n.translator.Translator`.
Every page of the service and the archive's note are rendered this way; an undefined name is an error."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from studypub.i18n.translator import Translator, translator


def sentence(text: str) -> str:
    """A message shown on its own, as a sentence: its first letter capitalised ("study not found..." -> "Study
    not found..."); the domain's messages start in lower case because they are also parts of others."""
    return text[:1].upper() + text[1:]


class Templates:
    def __init__(self, directory: Path, *, html: bool = True) -> None:
        self.directory = directory
        self.html = html
        self._environments: dict[str, Environment] = {}
        self._lock = threading.Lock()

    def environment(self, locale: str) -> Environment:
        env = self._environments.get(locale)
        if env is None:
            with self._lock:
                env = self._environments.get(locale)
                if env is None:
                    env = Environment(
                        loader=FileSystemLoader(self.directory),
                        # The archive's note is plain text, never HTML: nothing there to escape.
                        autoescape=select_autoescape(("html",), default=True) if self.html else False,  # noqa: S701
                        undefined=StrictUndefined,
                        trim_blocks=True,
                        lstrip_blocks=True,
                        keep_trailing_newline=not self.html,
                        extensions=["jinja2.ext.i18n"],
                    )
                    env.install_gettext_translations(  # type: ignore[attr-defined]
                        translator(locale).translations, newstyle=True
                    )
                    env.filters["sentence"] = sentence
                    self._environments[locale] = env
        return env

    def render(self, name: str, t: Translator, **context: Any) -> str:
        return self.environment(t.locale).get_template(name).render(t=t, **context)
