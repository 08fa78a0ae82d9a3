"""The patient's link page in headless Chromium at a phone's viewport (390×844, touch): the download button is
visible and fits, nothing scrolls sideways, the stylesheet loads under the page's CSP, the language switch
works. Screenshots go to tests/artifacts/ (not committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from studypub.db import migrate
from studypub.models import PublishedStudy, TaskStatus
from tests.support.api import seed_publication

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
WIDTH, HEIGHT = 390, 844
LOCALES = {"ru": "ru-RU", "en": "en-US"}
LONG_TITLE = (
    "Магнитно-резонансная томография коленного сустава с внутривенным контрастированием "
    "(исследование_с_очень_длинным_неразрывным_названием_из_медицинской_информационной_системы) "
) * 2


def phone(browser: Any, lang: str) -> Any:
    return browser.new_context(
        viewport={"width": WIDTH, "height": HEIGHT},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        locale=LOCALES[lang],
    )


def no_sideways_scroll(page: Any) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= WIDTH, f"the page scrolls sideways: {scroll_width} > {WIDTH}"


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_link_page_on_a_phone(lang: str, browser: Any, api_server: Any) -> None:
    migrate()
    ready = seed_publication()
    long = seed_publication(service_title=LONG_TITLE)
    preparing = seed_publication(TaskStatus.QUEUED)
    from sqlalchemy import update

    from studypub.db import get_sessionmaker
    from studypub.settings import get_settings

    with get_sessionmaker(get_settings())() as session:
        session.execute(update(PublishedStudy).where(PublishedStudy.task_id == long.task_id).values(withheld=1))
        session.commit()
    api = api_server()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = phone(browser, lang)
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda msg: problems.append(msg.text) if "Refused to" in msg.text else None)  # CSP
        page.on(
            "response",
            lambda r: (
                problems.append(f"{r.status} {r.url}")
                if r.status >= 400 and r.request.resource_type != "document"
                else None
            ),
        )

        for name, seed in (("ready", ready), ("long-title", long)):
            response = page.goto(f"{api.base_url}/s/{seed.link_key}")
            assert response is not None and response.status == 200
            assert page.get_attribute("html", "lang") == lang
            button = page.locator("#download")
            assert button.is_visible()
            box = button.bounding_box()
            assert box is not None
            assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, box
            assert box["height"] >= 44, box  # a comfortable touch target
            if name == "ready":
                assert box["y"] + box["height"] <= HEIGHT, box  # on the first screen, no scrolling needed
            # the stylesheet loaded (a CSP refusal would leave an inline link)
            assert page.evaluate("getComputedStyle(document.getElementById('download')).display") == "block"
            no_sideways_scroll(page)
            page.screenshot(path=str(ARTIFACTS / f"link-{name}-{lang}.png"), full_page=True)

        response = page.goto(f"{api.base_url}/s/{preparing.link_key}")
        assert response is not None and response.status == 200
        assert page.locator("#download").count() == 0
        assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "10"
        no_sideways_scroll(page)
        page.screenshot(path=str(ARTIFACTS / f"link-preparing-{lang}.png"), full_page=True)

        response = page.goto(f"{api.base_url}/s/not-a-key")
        assert response is not None and response.status == 404
        no_sideways_scroll(page)
        page.screenshot(path=str(ARTIFACTS / f"link-not-found-{lang}.png"), full_page=True)

        # The visible switch: tap the other language, it sticks for the next page
        other = "en" if lang == "ru" else "ru"
        page.goto(f"{api.base_url}/s/{ready.link_key}")
        page.locator("details.lang summary").tap()
        with page.expect_navigation():
            page.locator(f'details.lang a[hreflang="{other}"]').tap()
        assert page.get_attribute("html", "lang") == other
        page.goto(f"{api.base_url}/s/{ready.link_key}")
        assert page.get_attribute("html", "lang") == other
        assert page.locator("#download").is_visible()
    finally:
        context.close()
    assert problems == [], problems  # no CSP refusals, no script errors, every stylesheet/icon loaded
