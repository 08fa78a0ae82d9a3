"""Five languages, kept complete: every message of the code and templates is in each catalog and translated
(English is the source), translations keep their parameters, the compiled catalogs are fresh, templates hold
no text outside ``_()``, errors that reach a page are raised with ``N_()``, every code has a name, and the
domain's English is translated when shown."""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from studypub.i18n import LOCALES, N_
from studypub.i18n.catalogs import extract, problems
from studypub.i18n.labels import (
    BURNED_IN_POLICIES,
    CHOICES,
    DEVICES,
    MODALITIES,
    ROLES,
    SETTINGS,
    SOURCES,
    STATUSES,
    STEPS,
    WITHHELD,
    modality_names,
)
from studypub.i18n.translator import translator

ROOT = Path(__file__).parents[2]
TEMPLATE_DIRS = [ROOT / "api" / "templates", ROOT / "dashboard" / "templates", ROOT / "studypub" / "notes"]


@pytest.fixture(scope="module")
def template() -> object:
    return extract()


def test_every_message_is_translated_in_every_language(template: object) -> None:
    found = problems(template)  # type: ignore[arg-type]
    assert found == [], "\n".join(found[:40]) + "\n(run `make i18n`, then translate the .po files)"


def test_the_check_notices_a_message_without_a_translation(template: object) -> None:
    from babel.messages.catalog import Catalog

    extra = Catalog()
    for message in template:  # type: ignore[attr-defined]
        if message.id:
            extra.add(message.id, context=message.context)
    extra.add("A message nobody has translated yet")
    found = problems(extra, locales=["ru", "en"])
    assert found == ["ru: not in the catalog (run make i18n): 'A message nobody has translated yet' ()"] or all(
        "A message nobody has translated yet" in line for line in found
    )
    assert len(found) == 2  # missing from both catalogs (English must list it too)


def test_the_check_notices_a_bare_percent_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates format every message, so "100%" must be written "100%%" (else the page fails)."""
    from babel.messages.catalog import Catalog

    import studypub.i18n.catalogs as catalogs

    bad = Catalog(locale="de")
    bad.add("Done", "100% fertig")
    bad.add("Half", "50%% fertig")
    monkeypatch.setattr(catalogs, "read", lambda locale: bad)
    found = [line for line in catalogs.problems(Catalog(), locales=["de"]) if "bare %" in line]
    assert found == ["de: 'Done': a bare % (write %% for a percent sign)"]


# Templates: no text outside _() -------------------------------------------------------------------------------

# Words that are the same in every language: the product, protocols and standards, the arrows of the pager.
SAME_IN_EVERY_LANGUAGE = {"StudyPublicator", "Prefect", "PACS", "DICOM", "ZIP", "C-ECHO"}
VISIBLE_ATTRIBUTES = {"placeholder", "title", "aria-label", "alt", "value", "data-confirm", "data-copied", "content"}
_JINJA = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)
_CLASS_BLOCK = re.compile(r"{% block \w*class %}.*?{% endblock %}", re.DOTALL)  # a class name, not text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        kind = dict(attrs).get("type")
        for name, value in attrs:
            if name == "value" and not (tag == "input" and kind in ("submit", "button")):
                continue  # a form's value, not a label
            if name in VISIBLE_ATTRIBUTES and value and not (tag == "meta" and name == "content"):
                self.found.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.found.append(data)


def literal_text(source: str) -> list[str]:
    """The words a template shows that are not produced by an expression (a ``_()`` call or a value)."""
    parser = _Text()
    parser.feed(_JINJA.sub("\x00", _CLASS_BLOCK.sub("", source)))
    words = []
    for text in parser.found:
        for word in re.findall(r"[^\W\d_][\w'.-]*", text.replace("\x00", " ")):
            if word.strip(".-") not in SAME_IN_EVERY_LANGUAGE:
                words.append(word)
    return words


@pytest.mark.parametrize(
    "path",
    [p for d in TEMPLATE_DIRS for p in sorted(d.iterdir()) if p.suffix in (".html", ".txt")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_templates_show_no_text_outside_gettext(path: Path) -> None:
    source = path.read_text()
    if path.suffix == ".txt":  # plain text: every line outside {{ }} and {# #} is shown as it is
        shown = _JINJA.sub(" ", source)
        words = [w for w in re.findall(r"[^\W\d_][\w'.-]*", shown) if w not in SAME_IN_EVERY_LANGUAGE]
    else:
        words = literal_text(source)
    assert words == [], f"{path}: text outside _(): {words}"


def test_the_template_check_finds_literal_text() -> None:
    assert literal_text('<p>{{ _("Fine") }}</p><p>Retry</p>') == ["Retry"]
    assert literal_text('<input placeholder="publication.">') == ["publication."]
    assert literal_text("<th>task_id</th><td>{{ x }} ≤</td>") == ["task_id"]
    assert literal_text("<a title=\"{{ _('x') }}\">Prefect</a>") == []


# Errors that reach a page carry N_() ---------------------------------------------------------------------------

CHECKED = ["studypub", "tasks", "flows", "dashboard", "api/deps.py"]
# Operators' errors at start-up, and the anonymiser's technical details (tags and rules, shown inside a
# translated sentence: "an instance could not be anonymised safely: %(detail)s").
NOT_SHOWN_ON_PAGES = {"ConfigurationError", "BackupFailed"}


def _error_classes() -> set[str]:
    import studypub.deid.errors
    import studypub.errors

    names = set()
    for module in (studypub.errors, studypub.deid.errors):
        for name, value in vars(module).items():
            is_error = isinstance(value, type) and issubclass(value, studypub.errors.StudyPubError)
            if is_error and not issubclass(value, studypub.deid.errors.DeidError):
                names.add(name)
    return names - NOT_SHOWN_ON_PAGES


def _literal_messages(tree: ast.AST, errors: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            args = node.exc.args
            if name in errors and args and isinstance(args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                found.append((node.lineno, ast.unparse(args[0])[:80]))
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason" and isinstance(value, ast.JoinedStr):
                    found.append((node.lineno, ast.unparse(value)[:80]))
    return found


def test_errors_and_reasons_shown_on_pages_are_marked_for_translation() -> None:
    errors = _error_classes()
    found = []
    for entry in CHECKED:
        path = ROOT / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for line, text in _literal_messages(ast.parse(file.read_text()), errors):
                found.append(f"{file.relative_to(ROOT)}:{line}: {text}")
    assert found == [], "raise these with N_(...) (named parameters), then make i18n:\n" + "\n".join(found)


def test_the_raise_check_finds_a_bare_message() -> None:
    tree = ast.parse('raise NotFound(f"no {x}")\nraise NotFound(N_("no %(x)s", x=x))\nv = {"reason": f"{s}: {r}"}')
    assert [line for line, _ in _literal_messages(tree, {"NotFound"})] == [1, 3]


# Every code has a name ---------------------------------------------------------------------------------------


def test_every_code_of_the_domain_has_a_name() -> None:
    from typing import Literal, get_args, get_origin

    from dashboard.audit import ACTIONS, LINK_STATES
    from studypub.deid import pixels
    from studypub.links import LinkState
    from studypub.models import Step, TaskStatus
    from studypub.overrides import CLINIC_OVERRIDABLE
    from studypub.settings import DeidSettings, Settings
    from studypub.users import Role

    assert {s.value for s in Step} <= set(STEPS.names)
    assert {s.value for s in TaskStatus} == set(STATUSES.names)
    assert {r.value for r in Role} == set(ROLES.names)
    assert {"mis", "manual", "cli"} == set(SOURCES.names)
    assert set(get_args(DeidSettings.model_fields["burned_in_policy"].annotation)) == set(BURNED_IN_POLICIES.names)
    assert set(CLINIC_OVERRIDABLE) == set(SETTINGS.names)
    for name in CLINIC_OVERRIDABLE:  # a setting with choices is shown by their names, every choice named
        section, field = name.split(".")
        annotation = Settings.model_fields[section].annotation.model_fields[field].annotation  # type: ignore[union-attr]
        if get_origin(annotation) is Literal:
            assert name in CHOICES and set(get_args(annotation)) == set(CHOICES[name].names), name
    assert set(pixels.PIXEL_DATA_REASONS) | {"burned_in_annotation", "encapsulated_document"} <= set(WITHHELD.names)
    assert {"mobile", "desktop", "bot", "other"} == set(DEVICES.names)
    assert {s.value for s in LinkState} - {"unknown"} == set(LINK_STATES.names)
    recorded = set()
    for file in [*ROOT.glob("studypub/**/*.py"), *ROOT.glob("dashboard/*.py"), *ROOT.glob("api/**/*.py")]:
        recorded |= set(re.findall(r'action="([a-z_]+\.[a-z_]+)"', file.read_text()))
        recorded |= set(re.findall(r'_ACTION = "([a-z_]+\.[a-z_]+)"', file.read_text()))
        recorded |= set(re.findall(r'_audit\(session, link, "([a-z_]+\.[a-z_]+)"', file.read_text()))
    assert recorded and recorded <= set(ACTIONS.names), recorded - set(ACTIONS.names)


# The domain's English, shown in each language -----------------------------------------------------------------


def test_a_failure_reason_is_translated_with_its_step_and_nested_reason() -> None:
    stored = N_(
        "%(reason)s; tried again automatically at %(time)s",
        reason=N_("%(step)s: %(reason)s", step="find", reason=N_("study not found in PACS")),
        time="14:02",
    )
    assert stored == "find: study not found in PACS; tried again automatically at 14:02"
    assert translator("ru").text(stored) == "Поиск: исследование не найдено в PACS; автоматический повтор в 14:02"
    assert translator("en").text(stored) == "Search: study not found in PACS; tried again automatically at 14:02"
    assert translator("de").text("retrieve: Storage is unreachable: EndpointConnectionError") == (
        "Abruf: Der Speicher ist nicht erreichbar: EndpointConnectionError"
    )


def test_parameters_that_name_settings_and_fields_are_named_in_words() -> None:
    t = translator("fr")
    assert t.text("links.max_retention_days must be at most 36500") == (
        "«\xa0Durée de conservation maximale (jours)\xa0» doit être au plus 36500"
    )
    assert t.text("upload_from: not a date (YYYY-MM-DD)") == (
        "Date de publication, du\xa0: ce n'est pas une date (AAAA-MM-JJ)"
    )


def test_text_that_matches_no_message_is_shown_as_it_is() -> None:
    assert translator("es").text("something the catalogs do not know") == "something the catalogs do not know"
    assert translator("es").text(None) == ""


def test_every_language_names_the_modalities_in_words() -> None:
    names = {locale: modality_names(translator(locale), "MR,CT,US,KO,MR") for locale in LOCALES}
    assert names == {
        "ru": "МРТ, КТ, УЗИ",
        "en": "MRI, CT, Ultrasound",
        "es": "RM, TC, Ecografía",
        "fr": "IRM, Scanner, Échographie",
        "de": "MRT, CT, Ultraschall",
    }
    assert modality_names(translator("ru"), "XYZ") == "XYZ"  # an unknown code as it is
    assert set(MODALITIES.names) >= {"CT", "MR", "US", "CR", "DX", "MG", "PT", "NM", "XA"}


def test_plural_forms_follow_each_language() -> None:
    ru = translator("ru")
    forms = [ru.ngettext("%(num)s image", "%(num)s images", n) for n in (1, 3, 5, 21, 1000)]
    assert forms == ["1 снимок", "3 снимка", "5 снимков", "21 снимок", "1\xa0000 снимков"]
    assert translator("fr").ngettext("%(num)s image", "%(num)s images", 0) == "0 image"
    assert translator("de").ngettext("%(num)s image", "%(num)s images", 2) == "2 Bilder"


def test_sizes_and_dates_follow_the_locale() -> None:
    from datetime import date

    assert translator("ru").size(12_345_678) == "12,3 МБ"
    assert translator("en").size(12_345_678) == "12.3 MB"
    assert translator("de").long_date(date(2025, 2, 1)) == "1. Februar 2025"
    assert translator("es").long_date(date(2025, 2, 1)) == "1 de febrero de 2025"


# The archive's note ----------------------------------------------------------------------------------------------


def test_the_archive_note_speaks_every_language_the_clinics_first() -> None:
    from studypub.notes import archive_note

    note = archive_note(
        instances=21, series=2, withheld=3, withheld_reasons={"burned_in_annotation": 3}, first_locale="de"
    )
    headings = re.findall(r"^== (.+) ==$", note, re.MULTILINE)
    assert headings == ["Deutsch", "Русский", "English", "Español", "Français"]
    assert "21 снимок; 2 серии." in note and "21 images; 2 series." in note
    assert "3 снимка не включены" in note and "(ins Bild eingebrannter Text)" in note
    assert "DICOMDIR" in note and "Как открыть:" in note
    plain = archive_note(instances=1, series=1, withheld=0, withheld_reasons={}, first_locale="ru")
    assert plain.split("==")[1].strip() == "Русский" and "не включ" not in plain
