"""Every page the service shows, in each of the five languages, on a phone (390×844, touch) and at a desk
(1366×900), in headless Chromium against one ``studypub api`` with publications in every state: the dashboard
as an administrator and as a registrator, its error pages, the patient's link pages in each state.

Each page is photographed into ``tests/artifacts/pages/<lang>/<phone|desktop>/`` for review, and the test
fails when
- a page scrolls sideways on the phone, or a list's status, reason or actions fall outside the screen;
- an identifier breaks over two lines;
- a page shows an untranslated string: in Russian, a Latin word that is neither in the Russian catalog nor
  data the test put there; in Spanish, French and German, a word of the English messages that the language's
  catalog does not use; in any language, a raw code (``link.viewed``, ``task_id``). Text marked as another
  language (``lang=``: the language switch), identifiers (``.id``) and technical details marked
  ``translate="no"`` (a framework's message, folded on an error page) are data, not interface.

At the end, the language switch: chosen on the patient's page, kept on the dashboard, changed there, remembered.
One browser, one server and one seeding for everything: about three minutes on two cores (marked slow).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from studypub.i18n import LANGUAGE_NAMES, LOCALES, N_
from tests.support.api import seed_publication
from tests.support.dashboard import PASSWORD, make_user

ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "pages"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"
WORD = re.compile(r"[^\W\d_]+")
CODE = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b|\b[a-z]+\.[a-z]+(?:_[a-z]+)*\b")
ALWAYS_ALLOWED = {"studypublicator", "gmt", "utc", "c-echo", "mib"}


# The data ------------------------------------------------------------------------------------------------------


@dataclass
class Seeded:
    links: dict[str, str] = field(default_factory=dict)  # state -> link key
    tasks: dict[str, str] = field(default_factory=dict)  # name -> task id
    data: set[str] = field(default_factory=set)  # words the test put on the pages (identifiers, names)


def seed() -> Seeded:
    """Publications in every state, with reasons the domain composes; users; MIS keys; audit events."""
    from sqlalchemy import update

    from studypub.apikeys import create_key, revoke_key
    from studypub.db import get_sessionmaker
    from studypub.errors import PacsUnavailable
    from studypub.lifecycle import Waiting, waiting
    from studypub.links import Client, find_link, record_download, record_view
    from studypub.models import PublishedStudy, Task, TaskStep
    from studypub.overrides import save_overrides
    from studypub.publications import extend, fail, local_time, revoke
    from studypub.settings import get_settings
    from studypub.users import set_role

    settings = get_settings()
    out = Seeded()
    make_user("boss", "administrator")
    desk = make_user("desk", "registrator")
    out.data |= {"boss", "desk", "ORTHANC", "KP125706548L", "STUDYPUB"}

    ready = seed_publication(
        patient_id="1000001158664", accession="KP125706548L", service_title="МРТ коленного сустава"
    )
    running = seed_publication("RUNNING", patient_id="1000001158665", accession="KP125706549L")
    waiting_pacs = seed_publication("QUEUED", patient_id="1000001158666", accession="KP125706550L")
    failed = seed_publication("RUNNING", patient_id="1000001158667", accession="KP125706551L")
    retrying = seed_publication("RUNNING", patient_id="1000001158668", accession="KP125706552L")
    gone = seed_publication(patient_id="1000001158669", accession="KP125706553L")
    out.links = {"ready": ready.link_key, "preparing": running.link_key, "failed": failed.link_key}
    out.links["gone"] = gone.link_key
    out.tasks = {"ready": ready.task_id, "failed": failed.task_id, "retrying": retrying.task_id}
    with get_sessionmaker(settings)() as session:
        session.execute(
            update(PublishedStudy)
            .where(PublishedStudy.task_id == ready.task_id)
            .values(withheld=2, modalities="MR,SR", instances=187, size_bytes=48_200_000)
        )
        session.add(
            TaskStep(task_id=ready.task_id, step="anonymise", data={"withheld_reasons": {"burned_in_annotation": 2}})
        )
        session.execute(
            update(Task)
            .where(Task.id == running.task_id)
            .values(step="retrieve", progress_received=12, progress_expected=40)
        )
        since = local_time(settings, ready_time := _now())
        session.execute(
            update(Task)
            .where(Task.id == waiting_pacs.task_id)
            .values(**waiting(Waiting.PACS, N_("waiting for the PACS, unreachable since %(time)s", time=since)))
        )
        session.execute(update(Task).where(Task.id.in_([failed.task_id, retrying.task_id])).values(step="find"))
        session.commit()
        fail(session, settings, failed.task_id, _study_not_found())
        fail(session, settings, retrying.task_id, PacsUnavailable(_pacs_unreachable(settings)))
        extend(session, settings, ready.task_id, ready_time + timedelta(days=60), actor="boss")
        revoke(session, settings, gone.task_id, actor="boss")
        link = find_link(session, ready.link_key)
        for agent in ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile", "Mozilla/5.0 (Windows NT 10.0)"):
            record_view(session, link, Client("203.0.113.7", agent))
        record_view(session, link, Client("198.51.100.2", "TelegramBot (like TwitterBot)"))
        record_download(session, link, Client("203.0.113.7", "Mozilla/5.0 (Linux; Android 14) Mobile"), via="file")
        create_key(session, "MIS Khimki", clinic_code="f_Khimki", actor="boss")
        create_key(session, "MIS old", clinic_code=None, actor="boss")
        revoke_key(session, "MIS old", actor="boss")
        set_role(session, desk, "registrator", actor="boss")
        save_overrides(session, settings, {"links.default_retention_days": "45"}, actor="boss")
        session.commit()
    out.data |= {"MIS", "Khimki", "f_Khimki", "old"}
    return out


def _now() -> Any:
    from studypub.models import utcnow

    return utcnow()


def _study_not_found() -> Exception:
    from studypub.errors import StudyNotFound

    return StudyNotFound(N_("study not found in PACS"))


def _pacs_unreachable(settings: Any) -> str:
    p = settings.pacs
    return N_("The PACS at %(host)s:%(port)s (%(ae)s) is unreachable", host=p.host, port=p.port, ae=p.called_ae)


# What a page shows -----------------------------------------------------------------------------------------------

_SHOWN = """() => {
  const lang = document.documentElement.lang, out = [];
  const data = "script,style,.id,[translate=no]";
  const skip = (el) => !el || el.closest(data) || (el.closest("[lang]") || {}).lang !== lang;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!skip(node.parentElement) && node.textContent.trim()) out.push(node.textContent.trim());
  }
  const names = ["placeholder", "title", "aria-label", "alt", "data-confirm", "data-copied"];
  document.querySelectorAll("*").forEach((el) => {
    if (skip(el)) return;
    names.forEach((name) => { const v = el.getAttribute(name); if (v) out.push(v); });
  });
  out.push(document.title);
  return out;
}"""

_OVERFLOW = """(width) => {
  const out = [];
  const selectors = ".badge, .reason, .row-actions button, .row-actions a, [data-copy], .card-title";
  document.querySelectorAll(selectors).forEach((el) => {
    const box = el.getBoundingClientRect();
    if (box.width && (box.left < 0 || box.right > width + 0.5)) out.push(el.outerHTML.slice(0, 80));
  });
  document.querySelectorAll(".id").forEach((el) => {
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (el.getBoundingClientRect().height > size * 2.2) out.push("broken identifier: " + el.textContent);
  });
  return out;
}"""


class Vocabulary:
    """The words of each catalog: English message ids, and each language's translations."""

    def __init__(self) -> None:
        from studypub.i18n.catalogs import read

        placeholder = re.compile(r"%\(\w+\)s")
        self.words: dict[str, set[str]] = {}
        for locale in LOCALES:
            words: set[str] = set()
            english: set[str] = set()
            for message in read(locale):
                if not message.id:
                    continue
                for text in message.id if isinstance(message.id, (list, tuple)) else [message.id]:
                    english |= {w.casefold() for w in WORD.findall(placeholder.sub(" ", text))}
                strings = message.string if isinstance(message.string, (list, tuple)) else [message.string]
                for text in strings:
                    words |= {w.casefold() for w in WORD.findall(placeholder.sub(" ", text or ""))}
            self.words[locale] = words
            self.words["en"] = english

    def untranslated(self, locale: str, texts: list[str], data: set[str]) -> list[str]:
        allowed = ALWAYS_ALLOWED | {w.casefold() for d in data for w in WORD.findall(d)}
        allowed |= {w.casefold() for name in LANGUAGE_NAMES.values() for w in WORD.findall(name)}
        found = []
        for text in texts:
            found += [f"code {c!r} in {text!r}" for c in CODE.findall(text) if c.casefold() not in allowed]
            for word in WORD.findall(text):
                w = word.casefold()
                if w in allowed or w in self.words[locale]:
                    continue
                latin_in_russian = locale == "ru" and re.fullmatch(r"[a-z]{2,}", w)
                english = locale not in ("ru", "en") and len(w) >= 3 and w in self.words["en"]
                if latin_in_russian or english:
                    found.append(f"{word!r} in {text!r}")
        return found


# The walk --------------------------------------------------------------------------------------------------------


@pytest.fixture
def service(api_server: Any) -> Iterator[tuple[Any, Seeded]]:
    seeded = seed()
    api = api_server(
        PREFECT_API_URL=UNREACHABLE_PREFECT,
        STUDYPUB_LINKS__PUBLIC_BASE_URL="https://clinic.example/p",
        STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute",  # twenty sign-ins in two minutes
        STUDYPUB_LINKS__RATE_LIMIT="1000/minute",
    )
    yield api, seeded


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/dashboard/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/dashboard/queue")


@pytest.mark.slow
def test_every_page_in_five_languages_on_a_phone_and_a_desk(browser: Any, service: tuple[Any, Seeded]) -> None:
    api, seeded = service
    base = api.base_url
    vocabulary = Vocabulary()
    problems: list[str] = []
    no_task = "00000000-0000-0000-0000-000000000000"
    admin_pages = {
        "queue": "/dashboard/queue",
        "publish": "/dashboard/publish",
        "published": "/dashboard/published?status=all",
        "task-ready": f"/dashboard/tasks/{seeded.tasks['ready']}?done=extended",
        "task-failed": f"/dashboard/tasks/{seeded.tasks['retrying']}",
        "users": "/dashboard/users",
        "api-keys": "/dashboard/api-keys",
        "settings": "/dashboard/settings",
        "audit": "/dashboard/audit",
        "error-404": f"/dashboard/tasks/{no_task}",
        "error-422": "/dashboard/published?upload_from=yesterday",
        "error-404-path": "/dashboard/no-such-page",
        "error-422-query": "/dashboard/published?page=0",  # the framework's own message, folded
    }
    registrator_pages = {"queue-registrator": "/dashboard/queue", "task-registrator": admin_pages["task-ready"]}
    registrator_pages["error-403"] = "/dashboard/users"
    link_pages = {f"link-{state}": f"/s/{key}" for state, key in seeded.links.items()}
    link_pages["link-not-found"] = "/s/no-such-key"

    def visit(page: Any, lang: str, size: str, name: str, path: str, action: Any = None) -> None:
        page.goto(base + path)
        if action is not None:
            action(page)
        if page.evaluate("document.documentElement.lang") != lang:
            problems.append(f"{lang} {name}: the page is in {page.evaluate('document.documentElement.lang')}")
        shots = ARTIFACTS / lang / size
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        if size == "phone":
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > PHONE["width"]:
                problems.append(f"{lang} {name}: scrolls sideways on a phone ({width} px)")
            problems.extend(
                f"{lang} {name}: off-screen on a phone: {o}" for o in page.evaluate(_OVERFLOW, PHONE["width"])
            )
        else:
            found = vocabulary.untranslated(lang, page.evaluate(_SHOWN), seeded.data)
            problems.extend(f"{lang} {name}: untranslated {f}" for f in found)

    def submit_empty(page: Any) -> None:
        page.click("main form button[type=submit]")
        page.wait_for_load_state()

    for lang in LOCALES:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            options = {"viewport": viewport, "locale": lang}
            if size == "phone":
                options.update(is_mobile=True, has_touch=True)
            context = browser.new_context(**options)
            try:
                page = context.new_page()
                visit(page, lang, size, "login", "/dashboard/login")
                for name, path in link_pages.items():
                    visit(page, lang, size, name, path)
                sign_in(page, base, "boss")
                for name, path in admin_pages.items():
                    visit(page, lang, size, name, path)
                visit(page, lang, size, "publish-errors", "/dashboard/publish", submit_empty)
                if size == "phone":  # the folded panels, open
                    visit(page, lang, size, "menu-open", "/dashboard/queue", lambda p: p.click("details.menu summary"))
                    visit(
                        page,
                        lang,
                        size,
                        "filters-open",
                        "/dashboard/published",
                        lambda p: p.click(".filters-panel summary"),
                    )
                    visit(
                        page,
                        lang,
                        size,
                        "language-open",
                        "/s/" + seeded.links["ready"],
                        lambda p: p.click("details.lang summary"),
                    )
                context.clear_cookies()
                sign_in(page, base, "desk")
                for name, path in registrator_pages.items():
                    visit(page, lang, size, name, path)
            finally:
                context.close()
    assert problems == [], "\n".join(problems[:60])
    switch_language_and_see_it_remembered(browser, base, seeded)


def switch_language_and_see_it_remembered(browser: Any, base: str, seeded: Seeded) -> None:
    """On a phone: the patient's page in the browser's English, switched to French; the dashboard then in
    French too; switched there to German, remembered on the next page."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, locale="en-US")
    try:
        page = context.new_page()
        page.goto(f"{base}/s/{seeded.links['ready']}")
        assert page.get_attribute("html", "lang") == "en"
        page.locator("details.lang summary").tap()
        with page.expect_navigation():
            page.locator('details.lang a[hreflang="fr"]').tap()
        assert page.get_attribute("html", "lang") == "fr"
        sign_in(page, base, "desk")  # the dashboard too, in the language chosen on the link page
        assert page.get_attribute("html", "lang") == "fr"
        page.locator("details.lang summary").tap()
        with page.expect_navigation():
            page.locator('details.lang a[hreflang="de"]').tap()
        page.goto(f"{base}/dashboard/published")
        assert page.get_attribute("html", "lang") == "de" and "Veröffentlichte Untersuchungen" in page.content()
    finally:
        context.close()


def test_the_untranslated_check_finds_english_words_latin_words_and_codes() -> None:
    vocabulary = Vocabulary()
    data = {"KP125706548L"}
    assert vocabulary.untranslated("de", ["Warteschlange", "Retry", "Link", "KP125706548L"], data) == [
        "'Retry' in 'Retry'"
    ]
    assert vocabulary.untranslated("es", ["Search: estudio no encontrado en el PACS"], data) == [
        "'Search' in 'Search: estudio no encontrado en el PACS'"
    ]
    assert vocabulary.untranslated("ru", ["Поиск: find", "PID", "Запуск в Prefect"], data) == [
        "'find' in 'Поиск: find'"
    ]
    assert vocabulary.untranslated("en", ["link.viewed", "task_id", "Queue"], data) == [
        "code 'link.viewed' in 'link.viewed'",
        "code 'task_id' in 'task_id'",
    ]
