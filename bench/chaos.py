"""Chaos benchmark: does every publication heal by itself, and how fast (prints numbers; not a test).

Starts a whole stack in a temporary folder (tests/support/chaos.py: its own Prefect server, a fresh PostgreSQL
database, ``studypub worker`` with the product's default lease/watchdog/dispatch settings, a private Orthanc as
the PACS, the moto S3 server behind a proxy) and measures, in the same run:

- **reference**: publications of the same study with no fault (request to COMPLETED);
- **faults**, ``--trials`` of each, each on a fresh publication of a ``--images`` × 256×256 study, the fault
  landing at the moment named: the worker's whole process group SIGKILLed during retrieve, anonymise/zip and
  upload and started again ``--restart-delay`` s later; the Prefect server restarted during a retrieve; the
  PACS stopped for ``--outage`` s during a retrieve; S3 unreachable for ``--outage`` s during an upload.
  Per fault: how many completed by themselves (no operator) within ``--heal-timeout`` s of the recovery, the
  time from the recovery (worker/server/PACS/S3 back) to COMPLETED (median, max), how many left the storage and
  the disk clean (one object, no orphan object, no pending multipart upload, no raw file), and what
  ``waiting_for`` said meanwhile;
- **load**: ``--requests`` simultaneous distinct ``POST /publish`` (``studypub api``, one connection each) of
  small studies in the PACS, with the worker running: the answers' p50/p95/max (reference: as many
  simultaneous ``GET /health``), the worker's peak memory (RSS of its whole process tree, sampled every
  0.2 s; reference: idle), and the time until all of them completed (reference: one small publication alone).

Usage: ``python -m bench.chaos [--trials 3] [--outage 90] [--requests 100] [--faults kill@retrieve,pacs-down]``.
Logs (worker, Prefect server, the timeline of every publication) go to tests/artifacts/bench-chaos-*.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api_latency import drop_pg_database, percentiles, pg_database
from studypub.demo.net import free_port
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec, generate_study
from tests.support.chaos import MOMENTS, ChaosStack, Moment, StackConfig
from tests.support.fixtures import small_study_spec
from tests.support.s3 import S3Server

FAULTS: dict[str, str] = {  # fault -> the moment it lands at
    "kill@retrieve": "retrieve",
    "kill@anonymise-zip": "anonymise-zip",
    "kill@upload": "upload",
    "prefect-restart@retrieve": "retrieve-slow",
    "pacs-down@retrieve": "retrieve-slow",
    "s3-down@upload": "upload",
}


@dataclass
class Trial:
    fault: str
    reached: bool = False  # the fault landed at its moment
    final: str | None = None  # the status at the end (None: still not final at the deadline)
    reason: str | None = None
    recovery_to_done: float | None = None
    request_to_done: float | None = None
    problems: list[str] = field(default_factory=list)  # what was not clean
    waiting_for: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)

    @property
    def healed(self) -> bool:
        return self.final == "COMPLETED"


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.scp_port = free_port()
        self.orthanc = OrthancServer(
            root / "pacs", aet="ORTHANC", modalities={"STUDYPUB": ("STUDYPUB", "127.0.0.1", self.scp_port)}
        )
        self.s3 = S3Server(root / "moto")
        self.db_url = ""
        self.stack: ChaosStack | None = None
        self.counter = 0

    def start(self) -> ChaosStack:
        self.orthanc.start()
        self.s3.start()
        self.db_url = pg_database()
        a = self.args
        self.stack = ChaosStack(
            self.root / "stack",
            orthanc=self.orthanc,
            s3_server=self.s3,
            scp_port=self.scp_port,
            db_url=self.db_url,
            name="bench-chaos",
            config=StackConfig(
                lease_seconds=a.lease, watchdog_seconds=a.watchdog, dispatch_interval=a.dispatch_interval
            ),
        )
        return self.stack.start()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.orthanc.stop()
        self.s3.stop()
        if self.db_url:
            drop_pg_database(self.db_url)

    # ------------------------------------------------------------------------------------------- studies

    def study(self, images: int | None = None) -> GeneratedStudy:
        """A fresh study with unique identifiers, loaded into the PACS (``images`` × 256×256; None: small)."""
        self.counter += 1
        out = self.root / "studies" / f"s{self.counter}"
        if images:
            spec = small_study_spec(series=[SeriesSpec(images=images, rows=256, cols=256, description="Axial")])
        else:
            spec = small_study_spec()
        study = generate_study(out, spec)
        self.orthanc.upload(study.paths)
        return study

    # ------------------------------------------------------------------------------------------- one run

    def publish_plain(self, study: GeneratedStudy, label: str) -> float | None:
        """Request to COMPLETED with no fault, in seconds (None: it did not complete)."""
        stack = self.stack
        assert stack is not None and stack.db is not None
        stack.healthy()
        started = time.monotonic()
        task_id = stack.publish(study, label)
        row = _wait_final(stack, task_id, self.args.heal_timeout)
        return time.monotonic() - started if row and row["status"] == "COMPLETED" else None

    def trial(self, fault: str, n: int) -> Trial:
        stack = self.stack
        assert stack is not None and stack.db is not None and stack.timeline is not None
        a = self.args
        trial = Trial(fault)
        stack.healthy()
        moment: Moment = MOMENTS[FAULTS[fault]]
        study = self.study(a.images)
        before_orphans = set(stack.leftovers([])["orphans"])
        before_uploads = {u["UploadId"] for u in stack.bucket.pending_uploads()}
        stack.slow_down(moment)
        requested = time.monotonic()
        task_id = stack.publish(study, f"{fault}#{n}")
        try:
            stack.wait_moment(task_id, moment, 300)
            trial.reached = True
        except AssertionError as exc:
            print(f"  {fault}#{n}: the moment was missed ({exc})", file=sys.stderr)
            stack.full_speed()
            _wait_final(stack, task_id, a.heal_timeout)
            return trial
        recovered = self.inflict(fault, task_id)
        row = _wait_final(stack, task_id, a.heal_timeout)
        done = time.monotonic()
        trial.final = row["status"] if row and row["status"] in ("COMPLETED", "FAILED") else None
        trial.reason = (row or {}).get("reason")
        if trial.healed:
            trial.recovery_to_done = done - recovered
            trial.request_to_done = done - requested
        trial.waiting_for = [v for v in stack.timeline.values(task_id, "waiting_for") if v]
        trial.statuses = stack.timeline.values(task_id, "status")
        left = stack.leftovers([task_id])
        if trial.healed and len(left["objects"][task_id]) != 1:
            trial.problems.append(f"objects {sorted(left['objects'][task_id])}")
        if orphans := sorted(set(left["orphans"]) - before_orphans):
            trial.problems.append(f"{len(orphans)} orphan object(s)")
        if uploads := [u for u in left["pending_uploads"] if u["UploadId"] not in before_uploads]:
            trial.problems.append(f"{len(uploads)} pending multipart upload(s)")
        if raw := left["raw_files"][task_id]:
            trial.problems.append(f"{len(raw)} raw file(s) on disk")
        shown = "healed" if trial.healed else f"NOT healed ({trial.final}: {trial.reason})"
        took = f" {trial.recovery_to_done:.1f} s after recovery" if trial.recovery_to_done is not None else ""
        print(f"  {fault}#{n}: {shown}{took}; {', '.join(trial.problems) or 'clean'}", file=sys.stderr)
        return trial

    def inflict(self, fault: str, task_id: str) -> float:
        """The fault, at the moment reached; returns the monotonic time of the recovery."""
        stack = self.stack
        assert stack is not None and stack.timeline is not None
        a = self.args
        if fault.startswith("kill@"):
            stack.kill_worker(task_id)
            stack.full_speed()
            time.sleep(a.restart_delay)
            return stack.start_worker()
        if fault.startswith("prefect-restart"):
            stack.timeline.mark("Prefect server stopping", task_id)
            stack.prefect.stop()
            stack.full_speed()
            stack.prefect.start()
            stack.timeline.mark("Prefect server back", task_id)
            return time.monotonic()
        if fault.startswith("pacs-down"):
            with stack.pacs_down():
                stack.timeline.mark(f"PACS stopped for {a.outage:.0f} s", task_id)
                time.sleep(a.outage)
            stack.timeline.mark("PACS started again", task_id)
            stack.full_speed()
            return time.monotonic()
        if fault.startswith("s3-down"):
            stack.s3_proxy.stop()
            try:
                stack.timeline.mark(f"S3 unreachable for {a.outage:.0f} s", task_id)
                time.sleep(a.outage)
            finally:
                stack.full_speed()
                stack.s3_proxy.start()
            stack.timeline.mark("S3 reachable again", task_id)
            return time.monotonic()
        raise ValueError(fault)

    # ------------------------------------------------------------------------------------------- load

    def load(self) -> dict[str, Any]:
        """``--requests`` simultaneous distinct POST /publish with the worker running."""
        from studypub.apikeys import create_key
        from studypub.db import get_sessionmaker
        from tests.support.api import ApiServer

        stack = self.stack
        assert stack is not None and stack.db is not None and stack.worker is not None
        n = self.args.requests
        stack.healthy()
        print(f"  generating and loading {n} small studies into the PACS...", file=sys.stderr)
        studies = [self.study() for _ in range(n)]
        alone = self.publish_plain(self.study(), "load-ref")
        with get_sessionmaker(stack.settings)() as session:
            key = create_key(session, "bench-chaos", clinic_code=None, actor="bench")[1]
        api = ApiServer(stack.root / "api.log", env=stack.env).start()
        try:
            health = asyncio.run(_burst(api.base_url, key, [None] * n))
            idle = stack.worker.rss_bytes()
            peak = [idle]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], stack.worker.rss_bytes())  # type: ignore[union-attr]
                    stop.wait(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            answers = asyncio.run(_burst(api.base_url, key, studies))
            codes: dict[int, int] = {}
            for code, _, _ in answers:
                codes[code] = codes.get(code, 0) + 1
            task_ids = [tid for _, _, tid in answers if tid]
            finals = _wait_all_final(stack, task_ids, self.args.load_timeout)
            all_done = time.monotonic() - started
            stop.set()
            sampler.join(2)
        finally:
            api.stop()
        statuses: dict[str, int] = {}
        for row in finals.values():
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        completed = statuses.get("COMPLETED", 0)
        return {
            "n": n,
            "codes": codes,
            "post": percentiles([ms for _, ms, _ in answers]),
            "post_max": max(ms for _, ms, _ in answers),
            "health": percentiles([ms for _, ms, _ in health]),
            "recorded": len(set(task_ids)),
            "statuses": statuses,
            "all_completed_s": all_done if completed == n else None,
            "alone_s": alone,
            "idle_rss": idle,
            "peak_rss": peak[0],
        }


async def _burst(base_url: str, key: str, studies: list[GeneratedStudy | None]) -> list[tuple[int, float, str]]:
    """One request per study at the same moment, each on its own connection (made beforehand): POST /publish
    for a study, GET /health for None. Returns (status code, ms, task id)."""
    import httpx

    clients = [httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}, timeout=120) for _ in studies]
    start = asyncio.Event()

    async def one(client: httpx.AsyncClient, study: GeneratedStudy | None) -> tuple[int, float, str]:
        async with client:
            await start.wait()
            began = time.perf_counter()
            if study is None:
                r = await client.get("/health")
            else:
                r = await client.post(
                    "/publish",
                    json={
                        "patient_id": study.patient_id,
                        "accession_number": study.accession_number,
                        "clinic_code": "default",
                        "service_title": "МРТ суставов",
                        "study_date": "2025-02-01T16:18:02+03:00",
                    },
                )
            ms = (time.perf_counter() - began) * 1000
            task_id = r.json().get("task_id", "") if study is not None and r.status_code in (200, 202) else ""
            return r.status_code, ms, task_id

    tasks = [asyncio.create_task(one(c, s)) for c, s in zip(clients, studies, strict=True)]
    await asyncio.sleep(0.2)  # every client waiting on the start line
    start.set()
    return list(await asyncio.gather(*tasks))


def _wait_final(stack: ChaosStack, task_id: str, timeout: float) -> dict[str, Any] | None:
    assert stack.db is not None
    try:
        return stack.db.wait_final(task_id, timeout)
    except AssertionError:
        return stack.db.task(task_id)


def _wait_all_final(stack: ChaosStack, task_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    assert stack.db is not None
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.db.tasks(task_ids)
        if all(r["status"] in ("COMPLETED", "FAILED") for r in rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _s(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "—"


def report(args: argparse.Namespace, reference: list[float | None], trials: dict[str, list[Trial]]) -> None:
    print(
        f"\nStudyPublicator chaos benchmark ({os.cpu_count()} cores; lease {args.lease:g} s, watchdog "
        f"{args.watchdog:g} s, dispatch every {args.dispatch_interval:g} s; outages {args.outage:g} s; "
        f"study {args.images} × 256×256)"
    )
    done = [r for r in reference if r is not None]
    ref = f"median {_s(statistics.median(done))}, max {_s(max(done))}" if done else "did not complete"
    print(f"\nreference, no fault: request → COMPLETED {ref} ({len(done)}/{len(reference)} completed)")
    print(f"\n{'fault':<26} {'healed':>7} {'recovery → COMPLETED':>26} {'request → COMPLETED':>20}  clean  waiting_for")
    for fault, runs in trials.items():
        reached = [t for t in runs if t.reached]
        healed = [t for t in reached if t.healed]
        rec = [t.recovery_to_done for t in healed if t.recovery_to_done is not None]
        req = [t.request_to_done for t in healed if t.request_to_done is not None]
        rec_s = f"median {_s(statistics.median(rec))}, max {_s(max(rec))}" if rec else "—"
        req_s = f"median {_s(statistics.median(req))}" if req else "—"
        clean = sum(1 for t in reached if not t.problems)
        said = sorted({str(v) for t in reached for v in t.waiting_for}) or ["—"]
        missed = f" ({len(runs) - len(reached)} missed the moment)" if len(reached) < len(runs) else ""
        print(
            f"{fault:<26} {len(healed):>3}/{len(reached):<3} {rec_s:>26} {req_s:>20}  {clean:>2}/{len(reached):<2} "
            f"{', '.join(said)}{missed}"
        )
        for t in reached:
            if not t.healed:
                print(
                    f"    not healed: {t.final or 'still ' + str(t.statuses[-1:])}: {t.reason}; statuses {t.statuses}"
                )
            if t.problems:
                print(f"    left behind: {', '.join(t.problems)}")


def report_load(load: dict[str, Any]) -> None:
    mib = 2**20
    print(f"\n{load['n']} simultaneous distinct POST /publish, worker running:")
    print(f"  answers: {load['codes']}; publications recorded: {load['recorded']}")
    p, h = load["post"], load["health"]
    print(f"  POST /publish   p50 {p['p50']:7.1f}  p95 {p['p95']:7.1f}  max {load['post_max']:7.1f} ms")
    print(f"  GET /health     p50 {h['p50']:7.1f}  p95 {h['p95']:7.1f} ms  (reference: as many at once)")
    print(
        f"  worker memory (RSS of its process tree): peak {load['peak_rss'] / mib:.0f} MiB, idle "
        f"{load['idle_rss'] / mib:.0f} MiB"
    )
    print(f"  final statuses: {load['statuses']}")
    print(
        f"  time until all {load['n']} completed: {_s(load['all_completed_s'])} "
        f"(reference: one small publication alone {_s(load['alone_s'])})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="trials of each fault")
    parser.add_argument("--outage", type=float, default=90, help="seconds the PACS / S3 stay down")
    parser.add_argument("--restart-delay", type=float, default=1, help="seconds before a killed worker is back")
    parser.add_argument("--images", type=int, default=120, help="instances (256×256) of each fault's study")
    parser.add_argument("--requests", type=int, default=100, help="simultaneous POST /publish (0: no load test)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    parser.add_argument("--reference", type=int, default=3, help="publications with no fault (reference)")
    parser.add_argument("--heal-timeout", type=float, default=900, help="seconds after recovery to wait for it")
    parser.add_argument("--load-timeout", type=float, default=1800, help="seconds to wait for the load to finish")
    parser.add_argument("--lease", type=float, default=60, help="STUDYPUB_RUNS__LEASE_SECONDS (product default)")
    parser.add_argument("--watchdog", type=float, default=10, help="STUDYPUB_RUNS__WATCHDOG_SECONDS")
    parser.add_argument("--dispatch-interval", type=float, default=5, help="STUDYPUB_API__DISPATCH_INTERVAL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {list(FAULTS)}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    root = Path(tempfile.mkdtemp(prefix="studypub-bench-chaos-"))
    bench = Bench(args, root)
    trials: dict[str, list[Trial]] = {f: [] for f in faults}
    reference: list[float | None] = []
    load: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        print("Starting the stack (Prefect server, PACS, S3, PostgreSQL, worker)...", file=sys.stderr)
        bench.start()
        for i in range(args.reference):
            reference.append(bench.publish_plain(bench.study(args.images), f"ref#{i + 1}"))
            print(f"  reference #{i + 1}: {_s(reference[-1])}", file=sys.stderr)
        for fault in faults:
            for n in range(1, args.trials + 1):
                trials[fault].append(bench.trial(fault, n))
        if args.requests:
            load = bench.load()
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(args, reference, {f: t for f, t in trials.items() if t})
    if load is not None:
        report_load(load)
    print(f"\n(total {time.monotonic() - started:.0f} s; logs in tests/artifacts/bench-chaos-*)")


if __name__ == "__main__":
    main()
