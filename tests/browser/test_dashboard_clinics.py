"""Two clinics in headless Chromium: a registrator of each clinic signs in and sees only its own clinic's
queue and published list (the page's own polling included), with no clinic column or filter; the superadmin
sees both, each row's clinic, and narrows the queue and the published list to one clinic, on a phone
(390x844, no sideways scrolling) in each of the five languages; the Clinics screen fits a phone too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_dashboard_browser import DESKTOP, PHONE, no_sideways_scroll, shoot, sign_in
from tests.support.api import seed_publication
from tests.support.dashboard import make_user

pytestmark = pytest.mark.slow


def test_each_clinics_registrator_sees_only_its_own_queue(
    browser: Any, isolated_env: Path, api_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing runs: the rows stay as seeded
    pids = {}
    for code in ("f_khimki", "f_other"):
        pids[code] = {
            seed_publication(status="FAILED", clinic_code=code, patient_id=f"QUEUE-{code}").task_id: f"QUEUE-{code}",
            seed_publication(clinic_code=code, patient_id=f"DONE-{code}").task_id: f"DONE-{code}",
        }
        make_user(f"desk-{code}", "registrator", clinic_code=code)
    make_user("root", "superadmin")
    base = api_server().base_url

    for mine, theirs in (("f_khimki", "f_other"), ("f_other", "f_khimki")):
        context = browser.new_context(viewport=DESKTOP, locale="en-US")
        page = context.new_page()
        sign_in(page, base, f"desk-{mine}")
        page.wait_for_timeout(3500)  # one poll of the queue (every 3 s) has replaced the rows
        queue = page.locator("main").inner_text()
        assert f"QUEUE-{mine}" in queue and f"DONE-{mine}" in queue
        assert f"QUEUE-{theirs}" not in queue and f"DONE-{theirs}" not in queue
        assert page.locator("nav.main a", has_text="Clinics").count() == 0
        assert page.locator("[data-col=clinic], select[name=clinic]").count() == 0  # one clinic: no such column
        shoot(page, f"clinics-queue-{mine}-desktop")
        page.goto(f"{base}/dashboard/published")
        listed = page.locator("main").inner_text()
        assert f"DONE-{mine}" in listed and f"DONE-{theirs}" not in listed
        theirs_id = next(iter(pids[theirs]))
        answer = page.goto(f"{base}/dashboard/tasks/{theirs_id}")
        assert answer is not None and answer.status == 404
        context.close()

    context = browser.new_context(viewport=PHONE, locale="en-US")
    page = context.new_page()
    sign_in(page, base, "root")
    page.wait_for_timeout(3500)
    queue = page.locator("main").inner_text()
    assert all(pid in queue for rows in pids.values() for pid in rows.values())
    page.goto(f"{base}/dashboard/clinics")
    assert page.locator("tr[data-clinic=f_other]").count() == 1
    no_sideways_scroll(page)
    shoot(page, "clinics-phone")

    for lang in ("en", "ru", "de", "es", "fr"):
        page.goto(f"{base}/dashboard/queue?lang={lang}")
        cells = page.locator("#queue td[data-col=clinic]")
        assert sorted(cells.evaluate_all("cells => cells.map(c => c.dataset.clinic)")) == sorted(
            ["f_khimki", "f_khimki", "f_other", "f_other"]
        )
        assert all(cell.is_visible() for cell in cells.all())  # on the cards too, with its label
        page.select_option("select[name=clinic]", "f_other")  # the list reloads with one clinic
        page.wait_for_url("**clinic=f_other**")
        page.wait_for_timeout(3500)  # the page's own poll keeps the filter
        shown = page.locator("main").inner_text()
        assert all(pid in shown for pid in pids["f_other"].values()), lang
        assert not any(pid in shown for pid in pids["f_khimki"].values()), lang
        no_sideways_scroll(page)
        shoot(page, f"clinics-queue-filtered-{lang}-phone")

        page.goto(f"{base}/dashboard/published")
        page.click("details.filters-panel summary")  # the filters fold into a panel on a phone
        page.select_option("#filters select[name=clinic]", "f_khimki")
        page.click("#filters button[type=submit]")
        page.wait_for_url("**clinic=f_khimki**")
        rows = page.locator("#published tbody tr[data-task]")
        assert rows.count() == 1 and "DONE-f_khimki" in rows.inner_text(), lang
        assert rows.locator("td[data-col=clinic]").get_attribute("data-clinic") == "f_khimki"
        no_sideways_scroll(page)
        shoot(page, f"clinics-published-filtered-{lang}-phone")
    context.close()
