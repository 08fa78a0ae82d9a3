"""The link's second factor in headless Chromium on a phone (390×844, touch): the PIN and the birth date are
asked before anything is shown, a wrong answer says how many attempts are left, a right one opens the page
and the download (remembered by a cookie for that link only), the fifth wrong answer locks the link and says
to contact the clinic, an administrator unlocks it from the dashboard (audited) and the patient gets in.
Screenshots go to tests/artifacts/second-factor/ (not committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from studypub.db import get_sessionmaker, migrate
from studypub.factor import issue_pin
from studypub.models import AuditEvent, Task
from studypub.settings import get_settings
from tests.support.api import seed_publication
from tests.support.dashboard import PASSWORD, make_user

SHOTS = Path(__file__).parents[1] / "artifacts" / "second-factor"
WIDTH, HEIGHT = 390, 844


def phone(browser: Any) -> Any:
    return browser.new_context(
        viewport={"width": WIDTH, "height": HEIGHT}, is_mobile=True, has_touch=True, locale="ru-RU"
    )


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def fits(page: Any) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH, f"{page.url} scrolls sideways"
    for selector in ("#answer", "form.gate button"):
        if page.locator(selector).count():
            box = page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, (selector, box)


def answer(page: Any, value: str) -> None:
    page.fill("#answer", value)
    page.click("form.gate button")
    page.wait_for_load_state()


def pin_for(task_id: str) -> str:
    with get_sessionmaker(get_settings())() as session:
        return issue_pin(session, get_settings(), task_id)


def test_pin_then_lockout_and_unlock(browser: Any, api_server: Any) -> None:
    migrate()
    seeded = seed_publication(second_factor="pin")
    pin = pin_for(seeded.task_id)
    wrong = "000000" if pin != "000000" else "111111"
    api = api_server()
    link = f"{api.base_url}/s/{seeded.link_key}"
    context = phone(browser)
    try:
        page = context.new_page()
        response = page.goto(link)
        assert response is not None and response.status == 200
        assert page.locator("h1").inner_text() == "Введите PIN-код"
        assert "МРТ" not in page.content() and page.locator("#download").count() == 0  # nothing shown before
        fits(page)
        shoot(page, "pin-asked")

        # The download obeys the same check: without the cookie it is the question, not the file.
        direct = httpx.get(f"{link}/download", follow_redirects=False)
        assert direct.status_code == 200 and "Введите PIN-код" in direct.text
        assert direct.headers["content-type"].startswith("text/html")

        for left in (4, 3, 2, 1):
            answer(page, wrong)
            assert page.locator(".gate-error").inner_text().startswith("Неверно"), page.content()
            assert str(left) in page.locator(".gate-error").inner_text()
            fits(page)
        shoot(page, "pin-wrong")
        page.click("details.lang summary")
        page.click("a[hreflang=en]")  # the language switch from a wrong answer's page
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Enter the PIN" and f"/s/{seeded.link_key}?" in page.url
        page.click("details.lang summary")
        page.click("a[hreflang=ru]")
        page.wait_for_load_state()
        answer(page, wrong)  # the fifth wrong answer locks the link
        assert page.locator("h1").inner_text() == "Ссылка заблокирована"
        assert "Обратитесь в клинику" in page.content()
        fits(page)
        shoot(page, "pin-locked")
        page.goto(link)
        assert page.locator("#answer").count() == 0  # locked: nothing to answer, even the right PIN
        locked = httpx.post(f"{link}/verify", data={"answer": pin}, follow_redirects=False)
        assert locked.status_code == 403 and "sp_f_" not in locked.headers.get("set-cookie", "")

        # An administrator unlocks it from the publication's page (on a phone too).
        make_user("boss", role="administrator")
        admin = phone(browser).new_page()
        admin.goto(f"{api.base_url}/dashboard/queue")
        admin.fill("input[name=username]", "boss")
        admin.fill("input[name=password]", PASSWORD)
        admin.click("main button[type=submit]")
        admin.wait_for_url(f"{api.base_url}/dashboard/queue")
        admin.goto(f"{api.base_url}/dashboard/tasks/{seeded.task_id}")
        assert admin.locator("[data-test=factor]").inner_text().endswith("заблокирована после неверных попыток")
        assert admin.evaluate("document.documentElement.scrollWidth") <= WIDTH
        shoot(admin, "dashboard-locked")
        admin.click("[data-test=unlock]")
        admin.wait_for_load_state()
        assert admin.locator("[data-test=unlock]").count() == 0
        with get_sessionmaker(get_settings())() as session:
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "link.unlocked")).one()
            assert event.actor == "boss" and event.task_id == seeded.task_id
            assert session.scalars(select(AuditEvent).where(AuditEvent.action == "link.locked")).one()

        page.goto(link)
        answer(page, pin)
        assert page.locator("#download").is_visible()
        fits(page)
        shoot(page, "pin-passed")
        page.reload()
        assert page.locator("#download").is_visible()  # remembered for this link
        cookies = context.cookies()
        [cookie] = [c for c in cookies if c["name"].startswith("sp_f_")]
        assert cookie["httpOnly"] and cookie["path"] == f"/s/{seeded.link_key}"
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename.endswith(".zip")

        # The cookie is bound to this link: another PIN-protected link still asks.
        other = seed_publication(second_factor="pin")
        pin_for(other.task_id)
        page.goto(f"{api.base_url}/s/{other.link_key}")
        assert page.locator("#answer").is_visible()
    finally:
        context.close()


def test_birth_date_from_the_mis(browser: Any, api_server: Any) -> None:
    migrate()
    seeded = seed_publication(second_factor="birth_date", patient_birth_date="1980-04-21")
    with get_sessionmaker(get_settings())() as session:
        task = session.get(Task, seeded.task_id)
        assert task is not None and task.factor_hash and "1980" not in task.factor_hash  # only a slow hash
    api = api_server()
    context = phone(browser)
    try:
        page = context.new_page()
        page.goto(f"{api.base_url}/s/{seeded.link_key}")
        assert page.locator("h1").inner_text() == "Введите дату рождения"
        assert page.get_attribute("#answer", "type") == "date"
        fits(page)
        shoot(page, "birth-date-asked")
        answer(page, "1980-04-12")
        assert "4" in page.locator(".gate-error").inner_text()
        answer(page, "1980-04-21")
        assert page.locator("#download").is_visible()
        fits(page)
        shoot(page, "birth-date-passed")
    finally:
        context.close()
