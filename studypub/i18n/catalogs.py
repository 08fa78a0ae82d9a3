"""Keeping the catalogs in step with the code: ``python -m studypub.i18n.catalogs`` (``make i18n``).

``update`` extracts every message from the code and the templates (the sources and keywords are in
``babel.cfg`` and :data:`KEYWORDS`), merges them into the five ``.po`` files (new ones empty, changed ones
fuzzy, gone ones dropped), compiles the ``.mo`` files and lists what still needs a translation. ``check``
only lists the problems (exit status 1 when there are any); the unit tests run the same check.

The ``.po`` files are written sorted, unwrapped and without line numbers, so that two people adding
messages rarely touch the same lines.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from babel import Locale
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from studypub.i18n import LOCALES, SOURCE_LOCALE
from studypub.i18n.translator import DOMAIN, LOCALE_DIR

ROOT = Path(__file__).parents[2]
MAPPING = Path(__file__).parent / "babel.cfg"
KEYWORDS = {**DEFAULT_KEYWORDS, "N_": None, "pN_": ((1, "c"), 2)}
COMMENT_TAGS = ["TRANSLATORS:"]
PROJECT = "StudyPublicator"


def po_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(locale: str) -> Path:
    return po_path(locale).with_suffix(".mo")


def extract() -> Catalog:
    """Every message of the code and templates, as a template catalog."""
    with MAPPING.open() as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    template = Catalog(project=PROJECT, fuzzy=False)
    for filename, lineno, message, comments, context in extract_from_dir(
        str(ROOT),
        method_map,
        options_map,
        keywords=KEYWORDS,
        comment_tags=COMMENT_TAGS,
        strip_comment_tags=True,
    ):
        template.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return template


def read(locale: str) -> Catalog:
    with po_path(locale).open("rb") as fh:
        return read_po(fh, locale=locale, domain=DOMAIN)


def _write_po(catalog: Catalog, path: Path) -> None:
    out = io.BytesIO()
    write_po(out, catalog, width=0, sort_output=True, ignore_obsolete=True, include_lineno=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())


def compiled(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


def update() -> None:
    template = extract()
    for locale in LOCALES:
        path = po_path(locale)
        if path.is_file():
            catalog = read(locale)
        else:
            catalog = Catalog(locale=Locale.parse(locale), domain=DOMAIN, project=PROJECT, fuzzy=False)
        catalog.update(template, update_creation_date=False)
        _write_po(catalog, path)
        mo_path(locale).write_bytes(compiled(read(locale)))


# Templates format every message (new-style gettext), so a percent sign outside a %(name)s must be %%.
_BARE_PERCENT = re.compile(r"%\(\w+\)s|%%")


def _strings(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return [value] if isinstance(value, str) else []


def _untranslated(message: Message) -> bool:
    strings = message.string if isinstance(message.string, (list, tuple)) else [message.string]
    return message.fuzzy or not all(strings)


def _key(message: Message) -> tuple[str | None, str]:
    msgid = message.id if isinstance(message.id, str) else message.id[0]
    return message.context, msgid


def problems(template: Catalog | None = None, locales: Iterable[str] = LOCALES) -> list[str]:
    """What keeps the catalogs from being complete: messages missing, untranslated or fuzzy, translations
    that lose a parameter, ``.mo`` files not compiled from their ``.po``."""
    template = template or extract()
    wanted = {_key(m): m for m in template if m.id}
    found: list[str] = []
    for locale in locales:
        if not po_path(locale).is_file():
            found.append(f"{locale}: no catalog (run make i18n)")
            continue
        catalog = read(locale)
        have = {_key(m): m for m in catalog if m.id}
        for key, message in sorted(wanted.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            where = ", ".join(sorted({f for f, _ in message.locations}))
            mine = have.get(key)
            if mine is None:
                found.append(f"{locale}: not in the catalog (run make i18n): {key[1]!r} ({where})")
            elif locale != SOURCE_LOCALE and _untranslated(mine):
                found.append(f"{locale}: no translation: {key[1]!r} ({where})")
        for message, errors in catalog.check():
            found.extend(f"{locale}: {message.id!r}: {error}" for error in errors)
        for message in catalog:
            texts = [*_strings(message.id), *_strings(message.string)]
            if message.id and any("%" in _BARE_PERCENT.sub("", text) for text in texts):
                found.append(f"{locale}: {message.id!r}: a bare % (write %% for a percent sign)")
        mo = mo_path(locale)
        if not mo.is_file() or mo.read_bytes() != compiled(catalog):
            found.append(f"{locale}: {mo.name} is not compiled from {po_path(locale).name} (run make i18n)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "update"
    if command not in ("update", "check"):
        print("usage: python -m studypub.i18n.catalogs [update|check]", file=sys.stderr)
        return 2
    if command == "update":
        update()
    listed = problems()
    for line in listed:
        print(line)
    if listed:
        print(f"{len(listed)} problem(s): translate in {LOCALE_DIR}/<lang>/LC_MESSAGES/{DOMAIN}.po", file=sys.stderr)
    return 1 if listed else 0


if __name__ == "__main__":
    raise SystemExit(main())
