"""The in-browser viewers on a 500-slice CT: publish it for real (Orthanc → ``studypub publish`` → moto's S3
server), start ``studypub api``, then, in a fresh Chromium each time, over loopback, measure from opening
``/s/<key>/view`` to the first rendered image and to all slices available, and the bytes transferred before
the first image, for the touch viewer (390×844, touch) and OHIF (1366×900). Targets: first image within
1.5 s on the touch viewer, 3 s in OHIF.

    python -m bench.viewer [--slices 500] [--repeat 3]

"All slices available": the touch viewer reports when every image of the series is decoded and cached; for
OHIF, when the browser has received every instance of the series (OHIF decodes them as it displays them).
OHIF's first image: the first frame cornerstone draws after its stack got an image (its events, listened to
from the page's start), then checked not blank on a screenshot (polling screenshots would slow the page).

Each run also reports the CPU time the browser spent (all Chromium processes, user + system, from launch to
the first image): the machine is shared, so wall times move with its load while this does much less; and the
load average. ``--compare-ohif DIR`` also measures OHIF from another assets folder (e.g. a copy of a previous
``viewer/dist``, with ``ohif/`` and ``phone/``), served by a second API on the same archive, runs interleaved:
before and after in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.publish import STUDYPUB, start_prefect
from studypub.demo.net import free_port
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import ct_study_spec, generate_study

CHROMIUM = "/usr/bin/chromium"


def publish(root: Path, slices: int, prefect_api: str, s3: Any) -> tuple[dict[str, str], dict[str, Any]]:
    study = generate_study(root / "ct", ct_study_spec(slices=slices))
    scp_port = free_port()
    pacs = OrthancServer(
        root / "pacs", modalities={"STUDYPUB": ("STUDYPUB", "127.0.0.1", scp_port)}, allow_any_scu=True
    )
    pacs.start()
    try:
        pacs.upload(study.paths)
        bucket = s3.create_bucket()
        env = dict(
            os.environ,
            PREFECT_API_URL=prefect_api,
            STUDYPUB_WORK_DIR=str(root / "work"),
            STUDYPUB_SECRET_KEY="b" * 64,
            STUDYPUB_PACS__PORT=str(pacs.dicom_port),
            STUDYPUB_PACS__CALLED_AE=pacs.aet,
            STUDYPUB_PACS__SCP_PORT=str(scp_port),
            STUDYPUB_PACS__SCP_BIND="127.0.0.1",
            STUDYPUB_STORAGE__URL=f"s3://{bucket}/bench",
            STUDYPUB_STORAGE__ENDPOINT_URL=s3.endpoint_url,
            STUDYPUB_STORAGE__ACCESS_KEY_ID="bench",
            STUDYPUB_STORAGE__SECRET_ACCESS_KEY="bench-secret",
        )
        proc = subprocess.run(
            [str(STUDYPUB), "publish", "--patient-id", study.patient_id, "--accession", study.accession_number],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit("studypub publish failed")
        return env, json.loads(proc.stdout)
    finally:
        pacs.stop()


def start_api(env: dict[str, str], log: Path, assets: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=dict(
            env,
            **({"STUDYPUB_API__VIEWER_ASSETS_DIR": str(assets)} if assets else {}),
            STUDYPUB_API__WORKERS="1",
            STUDYPUB_LINKS__RATE_LIMIT="1000/minute",
            STUDYPUB_LINKS__VIEWER_RATE_LIMIT="20000/10 minutes",  # every run opens the whole study
        ),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("studypub api did not start")


class Traffic:
    """Bytes received by the page (encoded, as on the wire), and when each instance arrived."""

    def __init__(self, page: Any) -> None:
        self.bytes = 0
        self.instances = 0
        self.last_instance = 0.0
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Network.enable")
        self.urls: dict[str, str] = {}
        self.cdp.on("Network.responseReceived", self._response)
        self.cdp.on("Network.loadingFinished", self._finished)

    def _response(self, event: dict[str, Any]) -> None:
        self.urls[event["requestId"]] = event["response"]["url"]

    def _finished(self, event: dict[str, Any]) -> None:
        self.bytes += int(event.get("encodedDataLength", 0))
        if "/view/i/" in self.urls.get(event["requestId"], ""):
            self.instances += 1
            self.last_instance = time.monotonic()


def spread(png: bytes) -> float:
    from PIL import Image, ImageStat

    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).stddev[0])


def browser_cpu_seconds() -> float:
    """User + system CPU seconds of this process's Chromium descendants (Linux /proc; not Playwright's driver)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[tuple[int, float, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        cpu = (int(stat[11]) + int(stat[12])) / tick
        children.setdefault(int(stat[1]), []).append((int(entry), cpu, command))
    total, todo = 0.0, [os.getpid()]
    while todo:
        for pid, cpu, command in children.get(todo.pop(), []):
            total += cpu if "chrom" in command else 0.0
            todo.append(pid)
    return total


def measured(started_cpu: float, first: float, first_bytes: int) -> dict[str, float]:
    return {
        "first_s": first,
        "first_bytes": float(first_bytes),
        "cpu_s": browser_cpu_seconds() - started_cpu,
        "load": os.getloadavg()[0],
    }


def phone_run(playwright: Any, base: str, key: str, slices: int) -> dict[str, float]:
    cpu = browser_cpu_seconds()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page = context.new_page()
        traffic = Traffic(page)
        start = time.monotonic()
        page.goto(f"{base}/s/{key}/view", wait_until="commit")
        first: dict[str, float] | None = None
        all_loaded = float("nan")  # not within the time allowed
        while time.monotonic() - start < 240:
            state = page.evaluate("window.__viewer || {}")
            if state.get("ready") and first is None:
                first = measured(cpu, time.monotonic() - start, traffic.bytes)
            if state.get("allLoadedMs") is not None and state.get("loaded", 0) >= slices:
                all_loaded = time.monotonic() - start
                break
            time.sleep(0.02)
        if first is None:
            raise TimeoutError(f"the touch viewer showed no image: {state}")
        assert spread(page.locator("#v-viewport").screenshot()) > 5, "blank viewport"
        return {**first, "all_s": all_loaded}
    finally:
        browser.close()


# Cornerstone's events reach window in the capture phase (they do not bubble): the first frame drawn after a
# stack received its first image.
FIRST_IMAGE_WATCH = """
window.__bench = {};
addEventListener('CORNERSTONE_STACK_NEW_IMAGE', () => { window.__bench.stack ||= Date.now(); }, true);
addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
  if (window.__bench.stack && !window.__bench.drawn) window.__bench.drawn = Date.now();
}, true);
"""


def ohif_run(playwright: Any, base: str, key: str, slices: int, follow: bool = True) -> dict[str, float]:
    cpu = browser_cpu_seconds()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        context.add_init_script(FIRST_IMAGE_WATCH)
        page = context.new_page()
        traffic = Traffic(page)
        wall_start, start = time.time(), time.monotonic()
        page.goto(f"{base}/s/{key}/view?ui=desk", wait_until="commit")
        first: dict[str, float] | None = None
        while time.monotonic() - start < 240:
            drawn = page.evaluate("(window.__bench || {}).drawn || 0")
            if first is None and drawn:
                first = measured(cpu, drawn / 1000 - wall_start, traffic.bytes)
                canvas = page.locator("canvas.cornerstone-canvas").first
                assert spread(canvas.screenshot()) > 5, "OHIF drew a blank first image"
            if first is not None and (
                not follow or traffic.instances >= slices or time.monotonic() - start > first["first_s"] + 60
            ):
                break  # OHIF fetches what it displays and prefetches: give it a minute after the first image
            time.sleep(0.05)
        if first is None:
            raise TimeoutError(f"OHIF showed no image; {traffic.instances} of {slices} instances received")
        done = traffic.last_instance - start if traffic.instances >= slices else float("nan")
        return {**first, "all_s": done, "instances": float(traffic.instances)}
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-ohif", type=Path, help="another assets folder (ohif/, phone/): OHIF from it too")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.support.s3 import S3Server

    apis: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="studypub-viewer-bench-") as tmp:
        root = Path(tmp)
        prefect, prefect_api = start_prefect(root / "prefect")
        s3 = S3Server(root / "moto").start()
        try:
            env, result = publish(root, args.slices, prefect_api, s3)
            key = result["link"].rsplit("/", 1)[1]
            api, base = start_api(env, root / "api.log")
            apis.append(api)
            other = ""
            if args.compare_ohif:
                api, other = start_api(env, root / "api-compare.log", args.compare_ohif.resolve())
                apis.append(api)
            runs: dict[str, list[dict[str, float]]] = {"phone": [], "ohif": [], "compare": []}
            with sync_playwright() as playwright:
                for _ in range(args.repeat):
                    runs["phone"].append(phone_run(playwright, base, key, result["instances"]))
                    if other:
                        runs["compare"].append(ohif_run(playwright, other, key, result["instances"], follow=False))
                    runs["ohif"].append(ohif_run(playwright, base, key, result["instances"]))
        finally:
            for api in apis:
                api.terminate()
                api.wait(15)
            s3.stop()
            prefect.terminate()
            prefect.wait(30)
    print(f"\nViewer benchmark: CT {result['instances']} slices, archive {result['size_bytes'] / 2**20:.0f} MiB, ")
    print(f"fresh Chromium per run, loopback, {os.cpu_count()} cores; medians of {args.repeat} (min-max)\n")
    labels = {"phone": "touch viewer", "ohif": "OHIF", "compare": f"OHIF from {args.compare_ohif}"}
    for name, target in (("phone", 1.5), ("compare", 3.0), ("ohif", 3.0)):
        rows = runs[name]
        if not rows:
            continue

        def stat(field: str, rows: list[dict[str, float]] = rows) -> str:
            values = [r[field] for r in rows]
            return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"

        mib = statistics.median(r["first_bytes"] for r in rows) / 2**20
        print(f"{labels[name]} (target first image <= {target} s)")
        print(f"  first image, s:        {stat('first_s')}")
        print(f"  browser CPU to it, s:  {stat('cpu_s')}")
        print(f"  load average then:     {stat('load')}")
        if name != "compare":
            print(f"  all slices, s:         {stat('all_s')}")
        print(f"  bytes before first:    {mib:6.2f} MiB")
        if name == "ohif":
            got = statistics.median(r["instances"] for r in rows)
            print(f"  images fetched within a minute of the first: {got:.0f} of {result['instances']}")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
