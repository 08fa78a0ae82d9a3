"""Publication benchmark (prints numbers; not a test).

Generates CT studies (default 500 slices of 512×512, 16-bit, ~260 MB, and a smaller one to show that memory
stays flat with study size), loads them into a private Orthanc, and measures in the same run:

- the raw retrieval of the study with dcmtk ``getscu`` (the reference);
- ``studypub publish`` of the same study, end to end (the installed console script, a real Prefect server),
  to a local folder and to an S3 server (moto), each from a fresh work folder and database;
- the anonymisation rate of the step's engine on the retrieved instances (process pool, all cores);
- the archive size, and the peak memory (RSS) of the publishing process tree.

Medians of ``--repeat`` runs. Usage: ``python -m bench.publish [--slices 500] [--small 100] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from studypub.demo.net import free_port
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import ct_study_spec, generate_study

STUDYPUB = Path(sys.executable).with_name("studypub")


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall time and peak RSS (process tree, sampled every 50 ms) of a command."""
    peak = 0
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return elapsed, peak, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def getscu(pacs: OrthancServer, study_uid: str, out_dir: Path) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    argv = [
        "getscu",
        "-aet",
        "BENCH",
        "-aec",
        pacs.aet,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-od",
        str(out_dir),
        "127.0.0.1",
        str(pacs.dicom_port),
    ]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def start_prefect(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    import urllib.request

    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return proc, api
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("the Prefect server did not start")


def anonymisation_rate(raw_dir: Path, work: Path) -> tuple[float, int]:
    """The anonymise step's engine over a complete spool (what the step does when it resumes)."""
    from studypub.settings import Settings
    from studypub.spool import mark_done, work_paths
    from tasks.anonymise import anonymise_spool, uid_key

    settings = Settings(work_dir=work, secret_key="b" * 64)
    paths = work_paths(work, "bench").create()
    for i, src in enumerate(sorted(raw_dir.iterdir())):
        os.link(src, paths.raw / f"{i:06d}.dcm")
    mark_done(paths, "raw", {})
    n = len(list(paths.raw.iterdir()))
    started = time.perf_counter()
    result = anonymise_spool(settings, uid_key(settings, "bench"), paths, expected=n)
    elapsed = time.perf_counter() - started
    return result["instances"] / elapsed, result["instances"]


def bench_size(args: argparse.Namespace, root: Path, slices: int, api: str, s3: Any) -> dict[str, Any]:
    spec = ct_study_spec(slices=slices)
    study = generate_study(root / f"ct{slices}", spec)
    modalities = {"STUDYPUB": ("STUDYPUB", "127.0.0.1", scp_port := free_port())}
    with OrthancServer(root / f"pacs{slices}", modalities=modalities, allow_any_scu=True) as pacs:
        pacs.upload(study.paths)
        ref = [getscu(pacs, study.study_instance_uid, root / "getscu") for _ in range(args.repeat)]
        rate, _anonymised = anonymisation_rate(root / "getscu", root / f"anon{slices}")
        results: dict[str, Any] = {
            "slices": slices,
            "instances": study.instance_count,
            "study_mib": study.total_bytes / 2**20,
            "getscu_s": statistics.median(ref),
            "anon_rate": rate,
        }
        targets = {"file": None, "s3": s3}
        for name, target in targets.items():
            if target is None and name == "s3":
                continue
            times, peaks, sizes, flows = [], [], [], []
            for rep in range(args.repeat):
                work = root / f"work-{slices}-{name}-{rep}"
                env = dict(
                    os.environ,
                    PREFECT_API_URL=api,
                    STUDYPUB_WORK_DIR=str(work),
                    STUDYPUB_SECRET_KEY="a" * 64,
                    STUDYPUB_PACS__PORT=str(pacs.dicom_port),
                    STUDYPUB_PACS__CALLED_AE=pacs.aet,
                    STUDYPUB_PACS__SCP_PORT=str(scp_port),
                    STUDYPUB_PACS__SCP_BIND="127.0.0.1",
                )
                if target is not None:
                    bucket = target.create_bucket()
                    env.update(
                        STUDYPUB_STORAGE__URL=f"s3://{bucket}/bench",
                        STUDYPUB_STORAGE__ENDPOINT_URL=target.endpoint_url,
                        STUDYPUB_STORAGE__ACCESS_KEY_ID="bench",
                        STUDYPUB_STORAGE__SECRET_ACCESS_KEY="bench-secret",
                    )
                elapsed, peak, proc = run_measured(
                    [
                        str(STUDYPUB),
                        "publish",
                        "--patient-id",
                        study.patient_id,
                        "--accession",
                        study.accession_number,
                    ],
                    env,
                )
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"studypub publish failed ({name})")
                result = json.loads(proc.stdout)
                times.append(elapsed)
                peaks.append(peak)
                sizes.append(result["size_bytes"])
                flows.append(flow_seconds(proc.stderr))
                shutil.rmtree(work, ignore_errors=True)
            results[name] = {
                "publish_s": statistics.median(times),
                "flow_s": statistics.median(flows),
                "peak_mib": max(peaks) / 2**20,
                "archive_mib": statistics.median(sizes) / 2**20,
            }
    shutil.rmtree(root / f"ct{slices}", ignore_errors=True)
    return results


def flow_seconds(stderr: str) -> float:
    """From the JSON log lines: the flow run's first to last event (excludes process start-up)."""
    stamps = []
    from datetime import datetime

    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("details", {}).get("flow_name") == "publish-study" or event["message"].startswith("Study "):
            stamps.append(datetime.fromisoformat(event["timestamp"]))
    return (max(stamps) - min(stamps)).total_seconds() if stamps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--small", type=int, default=100, help="a smaller study, to compare peak memory")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="studypub-bench-") as tmp:
        root = Path(tmp)
        prefect, api = start_prefect(root / "prefect")
        s3 = None
        try:
            if not args.no_s3:
                from tests.support.s3 import S3Server

                s3 = S3Server(root / "moto").start()
            rows = [bench_size(args, root, n, api, s3) for n in sorted({args.small, args.slices})]
        finally:
            if s3 is not None:
                s3.stop()
            prefect.terminate()
            prefect.wait(30)
    print(f"\nStudyPublicator publication benchmark (medians of {args.repeat}; {os.cpu_count()} cores)\n")
    for r in rows:
        print(f"CT {r['slices']} slices, {r['instances']} instances, {r['study_mib']:.0f} MiB")
        print(f"  raw retrieval, dcmtk getscu:          {r['getscu_s']:7.2f} s")
        print(f"  anonymisation rate (pool, all cores): {r['anon_rate']:7.0f} images/s")
        for name in ("file", "s3"):
            if name not in r:
                continue
            m = r[name]
            print(
                f"  studypub publish → {name:<4}             {m['publish_s']:7.2f} s  "
                f"ratio {m['publish_s'] / r['getscu_s']:.2f}×  (flow run alone {m['flow_s']:.2f} s, "
                f"ratio {m['flow_s'] / r['getscu_s']:.2f}×)"
            )
            print(f"      archive {m['archive_mib']:.0f} MiB, peak RSS of the process tree {m['peak_mib']:.0f} MiB")
        print()


if __name__ == "__main__":
    main()
