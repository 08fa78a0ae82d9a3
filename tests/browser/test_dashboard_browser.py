"""The dashboard in headless Chromium, end to end: a registrator signs in, publishes a study by hand, watches
its row go to COMPLETED in the queue without reloading (a real worker retrieves it from Orthanc through
Prefect), copies the link, filters and sorts the published list, and signs out; an administrator extends the
storage period and opens every administrator page. Every page is photographed at desktop and phone size
into tests/artifacts/dashboard/ for review, and no page scrolls sideways on the phone."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy
from studypub.settings import get_settings
from studypub.storage import open_storage
from tests.support.dashboard import PASSWORD, make_user
from tests.support.net import LOOPBACK
from tests.support.worker import ARTIFACTS, running_worker

pytestmark = pytest.mark.slow

SHOTS = ARTIFACTS / "dashboard"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def task_row(task_id: str) -> Any:
    from studypub.db import get_sessionmaker
    from studypub.publications import get_task

    with get_sessionmaker()() as session:
        return get_task(session, task_id)


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/dashboard/queue")
    assert "/dashboard/login" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/dashboard/queue")


def no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} scrolls sideways on a phone: {width}px"


@pytest.fixture
def service(
    isolated_env: Path,
    prefect_api_url: str,
    studypub_scp_port: int,
    orthanc: OrthancServer,
    api_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Any]:
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_api_url,
        STUDYPUB_PACS__SCP_PORT=str(studypub_scp_port),
        STUDYPUB_PACS__SCP_BIND=LOOPBACK,
        STUDYPUB_PACS__CALLING_AE="STUDYPUB",
        STUDYPUB_PACS__HOST=LOOPBACK,
        STUDYPUB_PACS__PORT=str(orthanc.dicom_port),
        STUDYPUB_PACS__CALLED_AE=orthanc.aet,
        STUDYPUB_RUNS__STUDY_WAIT_HOURS="0",
        STUDYPUB_API__DISPATCH_INTERVAL="1",
    )
    for name, value in env.items():
        if name.startswith(("STUDYPUB_", "PREFECT_API_URL")):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    make_user("desk", "registrator")
    make_user("boss", "administrator")
    api = api_server()
    with running_worker(env, tmp_path / "worker.log", "worker-dashboard-browser.log"):
        yield api


def test_registrator_and_administrator_in_chromium(
    browser: Any, service: Any, orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]
) -> None:
    study = study_factory()
    orthanc.upload(study.paths)
    base = service.base_url

    desk = browser.new_context(viewport=DESKTOP, locale="en-US")
    desk.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = desk.new_page()
    page.goto(f"{base}/dashboard/login")
    shoot(page, "login-desktop")
    sign_in(page, base, "desk")
    assert page.locator("nav.main a", has_text="Users").count() == 0  # not an administrator's menu

    # Manual publication: the form explains what is wrong, then records the request.
    page.goto(f"{base}/dashboard/publish")
    page.click("main button[type=submit]")
    assert page.locator("p.error[data-field=patient_id]").is_visible()
    shoot(page, "publish-errors-desktop")
    page.fill("input[name=patient_id]", study.patient_id)
    page.fill("input[name=accession_number]", study.accession_number)
    page.click("main button[type=submit]")
    page.wait_for_url("**/dashboard/tasks/**")
    task_id = page.url.split("/tasks/", 1)[1].split("?", 1)[0]
    link = page.input_value("#link")
    assert "/s/" in link
    shoot(page, "task-queued-desktop")

    # The queue follows the run without a reload.
    page.goto(f"{base}/dashboard/queue")
    page.evaluate("window.__notReloaded = true")
    row = page.locator(f"tr[data-task='{task_id}']")
    row.wait_for()
    page.locator(f"tr[data-task='{task_id}'][data-status='COMPLETED']").wait_for(timeout=180_000)
    assert page.evaluate("window.__notReloaded") is True
    assert row.locator("[data-col=size]").inner_text().strip() != ""
    shoot(page, "queue-desktop")

    # Copy the link for the patient.
    page.goto(f"{base}/dashboard/tasks/{task_id}")
    page.click("button[data-copy='#link']")
    assert page.evaluate("navigator.clipboard.readText()") == link
    shoot(page, "task-completed-desktop")

    # The published list: filter by PID, sort by a column.
    page.goto(f"{base}/dashboard/published")
    page.fill("#filters input[name=pid]", study.patient_id)
    page.click("#filters button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("#published tbody tr[data-task]").count() == 1
    page.click("a[data-sort=size]")
    page.wait_for_load_state()
    assert page.get_attribute("a[data-sort=size]", "aria-sort") in ("ascending", "descending")
    assert page.locator(f"#published tr[data-task='{task_id}']").count() == 1
    shoot(page, "published-desktop")

    page.click("[data-test=logout]")
    page.wait_for_url("**/dashboard/login")
    page.goto(f"{base}/dashboard/queue")
    assert "/dashboard/login" in page.url
    desk.close()

    # The administrator: extend, and every page at both sizes.
    boss = browser.new_context(viewport=DESKTOP, locale="ru-RU")
    page = boss.new_page()
    sign_in(page, base, "boss")
    page.goto(f"{base}/dashboard/tasks/{task_id}")
    later = (date.today() + timedelta(days=45)).isoformat()
    page.fill("input[name=save_till]", later)
    page.click("form[action$='/extend'] button")
    page.wait_for_url("**done=extended")
    assert page.locator("p.notice").is_visible()
    shoot(page, "task-extended-desktop")

    # Publish again (images came late): a new archive under the same link, the old object removed.
    before = task_row(task_id)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("form[action$='/republish'] button")
    page.wait_for_url("**done=republished")
    page.goto(f"{base}/dashboard/queue")
    page.locator(f"tr[data-task='{task_id}'][data-status='COMPLETED']").wait_for(timeout=180_000)
    after = task_row(task_id)
    assert after.link_key == before.link_key and after.object_key != before.object_key
    storage = open_storage(get_settings())
    assert storage.exists(after.object_key) and not storage.exists(before.object_key)
    page.goto(f"{base}/dashboard/audit?action=publication.republished")
    assert page.locator("#audit tbody tr").count() == 1
    pages = ["queue", "publish", "published", f"tasks/{task_id}", "users", "api-keys", "settings", "audit"]
    for name in pages:
        page.goto(f"{base}/dashboard/{name}")
        assert page.locator("main h1").count() >= 1 or name.startswith("tasks/")
        shoot(page, f"{name.split('/')[0]}-admin-desktop")
    boss.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, locale="ru-RU")
    page = phone.new_page()
    page.goto(f"{base}/dashboard/login")
    no_sideways_scroll(page)
    shoot(page, "login-phone")
    sign_in(page, base, "boss")
    for name in pages:
        page.goto(f"{base}/dashboard/{name}")
        no_sideways_scroll(page)
        shoot(page, f"{name.split('/')[0]}-phone")
    phone.close()
