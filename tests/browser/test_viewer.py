"""The study in the browser, through the real path: studies in Orthanc → ``studypub publish`` (real Prefect
server) → the archive in S3 (moto's server over HTTP) → the patient's link → Chromium.

At 390×844 with touch: the touch viewer opens a CT, an MR, a multi-frame US and a JPEG 2000 study, shows an
image (the viewport's pixels vary), moves through slices by a swipe, changes the contrast (a preset and a
drag), plays the US frames; after revocation the viewer, its manifests and an instance answer 410. At
1366×900, the same CT opens in OHIF (under /ohif/, its base path rewritten at set-up) and renders. Screenshots
in tests/artifacts/viewer-*.png.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.routes.viewer import DEFAULT_ASSETS
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.integration.test_publish_e2e import base_env, orthanc_env, run_publish, s3_env  # noqa: F401
from tests.support.worker import STUDYPUB

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
PHONE = {"width": 390, "height": 844}
DESK = {"width": 1366, "height": 900}


def _need_assets() -> None:
    if not (DEFAULT_ASSETS / "phone" / "viewer.js").is_file() or not (DEFAULT_ASSETS / "ohif" / "index.html").is_file():
        pytest.fail("the viewers are not built: run deployments/setup.sh test")


def pixel_spread(png: bytes) -> float:
    """Standard deviation of the grey levels of a screenshot (0 for a blank one)."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    return float(ImageStat.Stat(image).stddev[0])


def differs(a: bytes, b: bytes) -> float:
    from PIL import Image, ImageChops, ImageStat

    one = Image.open(io.BytesIO(a)).convert("L")
    two = Image.open(io.BytesIO(b)).convert("L")
    return float(ImageStat.Stat(ImageChops.difference(one, two)).mean[0])


def swipe(page: Any, box: dict[str, float], dy: float) -> None:
    """A one-finger vertical swipe on the viewport (Chrome's touch events, as a phone sends them)."""
    cdp = page.context.new_cdp_session(page)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    points = [{"x": x, "y": y}]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": points})
    for step in range(1, 11):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y + dy * step / 10}]})
        time.sleep(0.03)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def wait_state(page: Any, expression: str, timeout: float = 30) -> Any:
    """Poll the page (its CSP forbids eval, so no wait_for_function) until ``expression`` is true."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{expression} stayed false: {page.evaluate('window.__viewer')}, "
                f"message {page.text_content('#v-message')!r}"
            )
        page.wait_for_timeout(100)
    return page.evaluate("window.__viewer")


def key_absent(log: str, keys: Any) -> bool:
    return not any(key in log for key in keys)


def publish(env: dict[str, str], orthanc: OrthancServer, study: GeneratedStudy) -> dict[str, Any]:
    orthanc.upload(study.paths)
    code, result, stderr = run_publish(env, study)
    assert code == 0, (result, stderr[-3000:])
    return result


def test_phone_viewer_and_ohif(
    orthanc_env: dict[str, str],  # noqa: F811 (the e2e module's fixture)
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    study_factory: Callable[..., GeneratedStudy],
    browser: Any,
    api_server: Any,
) -> None:
    _need_assets()
    env = s3_env(orthanc_env, s3_server, s3_bucket)
    studies = {
        "ct": study_factory(
            modality="CT",
            series=[
                SeriesSpec(images=12, rows=256, cols=256, transfer_syntax="explicit", description="Axial"),
                SeriesSpec(images=4, rows=128, cols=128, transfer_syntax="jpeg-lossless", description="Thick"),
            ],
        ),
        "mr": study_factory(
            modality="MR",
            series=[SeriesSpec(images=8, rows=192, cols=192, transfer_syntax="jpeg-ls", description="T2")],
        ),
        "us": study_factory(
            modality="US",
            series=[
                SeriesSpec(images=1, rows=160, cols=200, frames=12, color=True, transfer_syntax="rle"),
                SeriesSpec(images=2, rows=160, cols=200, color=True, transfer_syntax="jpeg-baseline"),
                SeriesSpec(images=2, rows=96, cols=96, modality="OT", transfer_syntax="deflated"),
            ],
        ),
        "j2k": study_factory(
            modality="CT",
            series=[SeriesSpec(images=6, rows=192, cols=192, transfer_syntax="jpeg2000", description="J2K")],
        ),
    }
    published = {name: publish(env, orthanc, study) for name, study in studies.items()}
    keys = {name: result["link"].rsplit("/", 1)[1] for name, result in published.items()}
    api = api_server(**{k: v for k, v in env.items() if k.startswith(("STUDYPUB_", "PREFECT_"))})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, locale="en-US")
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(msg.text) if "Refused to" in msg.text else None)

        # The link page offers the viewer beside the download.
        page.goto(f"{api.base_url}/s/{keys['ct']}")
        view = page.locator("#view")
        assert view.is_visible() and page.locator("#download").is_visible()
        view.click()
        page.wait_for_url(f"**/s/{keys['ct']}/view")

        for name in ("ct", "mr", "us", "j2k"):
            if name != "ct":
                page.goto(f"{api.base_url}/s/{keys[name]}/view")
            state = wait_state(page, "window.__viewer && window.__viewer.ready")
            assert state["failed"] == 0, (name, state)
            expected = 12 if name == "us" else studies[name].spec.series[0].images
            assert state["count"] == expected, (name, state)
            viewport = page.locator("#v-viewport")
            box = viewport.bounding_box()
            assert box is not None and box["width"] >= 380 and box["height"] > 400, box
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            first = viewport.screenshot()
            assert pixel_spread(first) > 5, f"{name}: the viewport is blank"
            page.screenshot(path=str(ARTIFACTS / f"viewer-phone-{name}.png"))

            # A swipe moves through the slices (frames for the US).
            swipe(page, box, -200)
            state = wait_state(page, "window.__viewer.index > 0")
            page.wait_for_timeout(300)
            moved = viewport.screenshot()
            assert differs(first, moved) > 0.5, f"{name}: the image did not change after a swipe"

            # Contrast: a preset, then a drag in contrast mode.
            voi_before = state["voi"]
            page.click("#v-mode-window")
            page.click("[data-preset=bone]")
            state = page.evaluate("window.__viewer")
            assert state["voi"] != voi_before, (name, state)
            page.wait_for_timeout(200)
            assert differs(moved, viewport.screenshot()) > 0.5, f"{name}: the preset changed nothing on screen"
            voi_preset = state["voi"]
            swipe(page, box, 120)
            state = page.evaluate("window.__viewer")
            assert state["voi"] != voi_preset, (name, state)
            page.screenshot(path=str(ARTIFACTS / f"viewer-phone-{name}-contrast.png"))
            page.click("#v-mode-scroll")

            # Every series of the study shows (each transfer syntax decodes), then back to the first.
            strip = page.locator("#v-strip button")
            for position in range(strip.count() - 1, -1, -1):
                strip.nth(position).click()
                state = wait_state(page, f"window.__viewer.series === {position} && window.__viewer.ready")
                assert state["failed"] == 0 and pixel_spread(viewport.screenshot()) > 5, (name, position, state)

            if name == "us":  # cine
                assert page.locator("#v-play").is_visible()
                page.click("#v-play")
                seen = set()
                for _ in range(20):
                    seen.add(page.evaluate("window.__viewer.index"))
                    page.wait_for_timeout(70)
                page.click("#v-play")
                assert len(seen) > 3, f"cine showed frames {sorted(seen)}"

        # Landscape: the viewport still fills the screen without sideways scrolling.
        page.set_viewport_size({"width": 844, "height": 390})
        page.goto(f"{api.base_url}/s/{keys['ct']}/view")
        wait_state(page, "window.__viewer && window.__viewer.ready")
        assert page.evaluate("document.documentElement.scrollWidth") <= 844
        page.screenshot(path=str(ARTIFACTS / "viewer-phone-landscape.png"))
        page.set_viewport_size(PHONE)
        assert not problems, problems
    finally:
        context.close()

    # OHIF on a desk: the same link, a wide screen with a mouse.
    desk = browser.new_context(viewport=DESK, locale="en-US")
    try:
        page = desk.new_page()
        cdp = desk.new_cdp_session(page)
        cdp.send("Network.enable")
        sent: dict[str, str] = {}
        failed_assets: list[str] = []
        cdp.on("Network.requestWillBeSent", lambda e: sent.__setitem__(e["requestId"], e["request"]["url"]))
        cdp.on(
            "Network.responseReceived",
            lambda e: failed_assets.append(e["response"]["url"]) if e["response"]["status"] >= 400 else None,
        )
        page.goto(f"{api.base_url}/s/{keys['ct']}/view")
        page.wait_for_url("**/ohif/viewer/dicomjson?url=*&lng=en-US", timeout=30000)
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for(state="visible", timeout=60000)
        deadline = time.monotonic() + 60
        spread = 0.0
        while time.monotonic() < deadline:
            spread = pixel_spread(canvas.screenshot())
            if spread > 5:
                break
            page.wait_for_timeout(500)
        manifest_fetches = sum("/view/manifest.json" in url for url in sent.values())
        page.screenshot(path=str(ARTIFACTS / "viewer-ohif-ct.png"))
        assert spread > 5, "OHIF's viewport stayed blank"
        assert not failed_assets, failed_assets  # fonts and chunks found under /ohif/
        assert manifest_fetches == 1, manifest_fetches  # OHIF took the preloaded manifest
        # No OHIF branding or link out; OHIF speaks the link page's language (?lang= there, ?lng= here).
        assert page.locator("[data-cy=studypub-logo]").count() == 1
        assert page.locator("a[href*='ohif.org'], a[href*='github.com']").count() == 0
        page.goto(f"{api.base_url}/s/{keys['ct']}/view?ui=desk&lang=ru")
        page.wait_for_url("**/ohif/viewer/dicomjson?url=*&lng=ru", timeout=30000)
        page.get_by_text("Исследования").first.wait_for(timeout=60000)
        page.screenshot(path=str(ARTIFACTS / "viewer-ohif-ct-ru.png"))
    finally:
        desk.close()

    # Opening the viewer was audited and counted like a download.
    from sqlalchemy import select

    from studypub.db import get_sessionmaker
    from studypub.models import AuditEvent, PublishedStudy
    from studypub.settings import get_settings

    with get_sessionmaker(get_settings())() as session:
        ct_task = published["ct"]["task_id"]
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.task_id == ct_task, AuditEvent.action == "link.viewed_in_browser")
        ).all()
        assert len(events) >= 3 and all(e.details["key"] == keys["ct"][:6] for e in events)
        downloads = session.scalar(select(PublishedStudy.downloads).where(PublishedStudy.task_id == ct_task))
        assert downloads == len(events)

    # Caching and hygiene; then revoked: the viewer, both manifests and an instance answer 410.
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        manifest = http.get(f"/s/{keys['ct']}/view/manifest.json")
        assert manifest.status_code == 200 and manifest.headers["cache-control"] == "no-store"
        assert manifest.headers["referrer-policy"] == "no-referrer" and "noindex" in manifest.headers["x-robots-tag"]
        ohif_study = manifest.json()["studies"][0]
        assert ohif_study["NumInstances"] == published["ct"]["instances"] == 16
        assert all(i["url"].startswith("dicomweb:http") for s in ohif_study["series"] for i in s["instances"])
        for asset in ("/viewer/viewer.js", "/viewer/openjpegwasm_decode.wasm"):
            packed = http.get(asset, headers={"Accept-Encoding": "gzip"})
            assert packed.headers["content-encoding"] == "gzip" and len(packed.content) > 1000, asset
        study_json = http.get(f"/s/{keys['ct']}/view/study.json").json()
        instance_url = study_json["series"][0]["instances"][0]["url"]
        instance = http.get(instance_url)
        assert instance.status_code == 200 and instance.headers["content-type"] == "application/dicom"
        assert instance.content[128:132] == b"DICM"
        cache = instance.headers["cache-control"]
        assert cache.startswith("private, max-age=") and 0 < int(cache.split("=")[1].split(",")[0]) <= 3600, cache
        position = int(instance_url.split("/i/")[1].split("?")[0])
        tampered = instance_url.replace(f"/i/{position}?", f"/i/{position + 1}?")
        assert tampered != instance_url
        assert http.get(tampered).status_code == 403  # a signature is for one instance only
        assert key_absent(api.log_text(), keys.values())
        subprocess.run(
            [str(STUDYPUB), "revoke", published["ct"]["task_id"]], env=env, check=True, capture_output=True, timeout=120
        )
        for path in (
            f"/s/{keys['ct']}/view",
            f"/s/{keys['ct']}/view/manifest.json",
            f"/s/{keys['ct']}/view/study.json",
        ):
            assert http.get(path).status_code == 410, path
        assert http.get(instance_url).status_code == 410
    gone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, locale="en-US")
    try:
        page = gone.new_page()
        response = page.goto(f"{api.base_url}/s/{keys['ct']}/view")
        assert response is not None and response.status == 410
        page.screenshot(path=str(ARTIFACTS / "viewer-phone-revoked.png"))
    finally:
        gone.close()
    assert os.environ.get("STUDYPUB_WORK_DIR")


def test_phone_viewer_big_endian(
    orthanc_env: dict[str, str],  # noqa: F811 (the e2e module's fixture)
    orthanc: OrthancServer,
    s3_server: Any,
    s3_bucket: str,
    study_factory: Callable[..., GeneratedStudy],
    browser: Any,
    api_server: Any,
) -> None:
    """A syntax the first test's studies lack: explicit VR big endian (retired, still sent by old modalities)
    reaches the browser as it is (the study manifest says so) and the touch viewer shows and scrolls it.

    HTJ2K cannot take this path here: the test PACS, Debian 12's Orthanc 1.10.1 (DCMTK 3.6.7), stores an
    HTJ2K file but cannot send it ("Unsupported transfer syntax: 1.2.840.10008.1.2.4.201" on C-STORE), so
    the C-MOVE fails; the generator writes HTJ2K (``transfer_syntax="htj2k"``, OpenJPH) for a newer PACS."""
    from studypub.demo.studies import transfer_syntax_unavailable_reason

    _need_assets()
    if (reason := transfer_syntax_unavailable_reason("big-endian")) is not None:
        pytest.fail(f"{reason}: run deployments/setup.sh test")
    env = s3_env(orthanc_env, s3_server, s3_bucket)
    study = study_factory(
        modality="CT",
        series=[SeriesSpec(images=6, rows=192, cols=192, transfer_syntax="big-endian", description="Big endian")],
    )
    key = publish(env, orthanc, study)["link"].rsplit("/", 1)[1]
    api = api_server(**{k: v for k, v in env.items() if k.startswith(("STUDYPUB_", "PREFECT_"))})
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        series = http.get(f"/s/{key}/view/study.json").json()["series"]
    syntaxes = [{i["syntax"] for i in s["instances"]} for s in series]
    assert syntaxes == [{"1.2.840.10008.1.2.2"}], syntaxes  # stored and served as sent, not transcoded

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, locale="en-US")
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(f"{api.base_url}/s/{key}/view")
        state = wait_state(page, "window.__viewer && window.__viewer.ready")
        assert state["failed"] == 0 and state["count"] == 6, state
        viewport = page.locator("#v-viewport")
        box = viewport.bounding_box()
        assert box is not None
        first = viewport.screenshot()
        assert pixel_spread(first) > 5, "the viewport is blank"
        page.screenshot(path=str(ARTIFACTS / "viewer-phone-big-endian.png"))
        swipe(page, box, -200)
        wait_state(page, "window.__viewer.index > 0")
        page.wait_for_timeout(300)
        moved = viewport.screenshot()
        assert pixel_spread(moved) > 5 and differs(first, moved) > 0.5, "no other slice after a swipe"
        assert page.evaluate("window.__viewer.failed") == 0
        assert not problems, problems
    finally:
        context.close()
