"""``POST /publish`` latency under 50 concurrent MIS clients (prints numbers; not a test).

Starts, in the same run: a Prefect server (the dispatcher really creates a flow run per request while the
load runs), ``studypub api`` on a fresh PostgreSQL database (the production backend; ``--sqlite`` for the
embedded one), and 50 asyncio clients, each with its own keep-alive connection. Two scenarios:

- **paced** (the target): each client sends a request, then pauses a random 0–1 s, like MIS instances
  that each publish now and then; 3 of 4 requests are new studies, 1 of 4 repeats an earlier one;
- **burst**: the same clients with no pause at all (a closed loop: the service's throughput limit).

Reference measured in the same run and scenario: ``GET /health`` (the framework's floor on this machine).
Reports p50/p95/p99 in ms. Target: paced p95 ≤ 50 ms. Usage: ``python -m bench.api_latency [--requests 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.publish import start_prefect
from studypub.demo.net import free_port

ROOT = Path(__file__).parents[1]
CLIENTS = 50


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": statistics.median(samples), "p95": qs[94], "p99": qs[98], "n": len(samples)}


def fmt(name: str, p: dict[str, float]) -> str:
    return f"  {name:<28} p50 {p['p50']:6.1f}  p95 {p['p95']:6.1f}  p99 {p['p99']:6.1f} ms   (n={int(p['n'])})"


def pg_database() -> str:
    from sqlalchemy import create_engine, text

    url_file = ROOT / ".venv" / "test-pg-url"
    admin_url = (
        url_file.read_text().strip() if url_file.is_file() else "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    name = f"studypub_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def start_api(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``studypub api`` on a free port with ``env``; returns the process and its base URL once it answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, base


async def client_loop(
    client: Any, n: int, paced: bool, health: bool, out: dict[str, list[float]], seq: list[int]
) -> None:
    rnd = random.Random()
    sent: list[str] = []
    async with client:
        for i in range(n):
            if paced:
                await asyncio.sleep(rnd.random())
            if health:
                started = time.perf_counter()
                r = await client.get("/health")
                kind = "health"
            else:
                repeat = sent and i % 4 == 3
                if repeat:
                    acsn = rnd.choice(sent)
                else:
                    seq[0] += 1
                    acsn = f"BENCH{seq[0]:08d}"
                    sent.append(acsn)
                body = {
                    "patient_id": f"P{acsn}",
                    "accession_number": acsn,
                    "clinic_code": "default",
                    "service_title": "МРТ суставов",
                    "study_date": "2025-02-01T16:18:02+03:00",
                }
                started = time.perf_counter()
                r = await client.post("/publish", json=body)
                kind = "repeat" if repeat else "new"
            elapsed = (time.perf_counter() - started) * 1000
            if r.status_code not in (200, 202):
                raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:200]}")
            out.setdefault(kind, []).append(elapsed)


async def scenario(base: str, key: str, n: int, paced: bool, health: bool) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    seq = [int(time.time() * 1000) % 10**7 * 100]
    import httpx

    # The clients exist before the clock starts: making one (its TLS context) blocks the event loop ~20 ms,
    # which would otherwise be counted in the latency of the requests in flight.
    clients = [httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) for _ in range(CLIENTS)]
    await asyncio.gather(*(client_loop(c, n, paced, health, out, seq) for c in clients))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per scenario")
    parser.add_argument("--sqlite", action="store_true", help="the embedded SQLite instead of PostgreSQL")
    parser.add_argument(
        "--without-prefect",
        action="store_true",
        help="no Prefect server (runs are not created; shows what creating them costs on this machine)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="studypub-bench-api-"))
    prefect_proc = None
    if args.without_prefect:
        prefect_api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    else:
        print("Starting a Prefect server...", file=sys.stderr)
        prefect_proc, prefect_api = start_prefect(tmp / "prefect")
    os.environ["PREFECT_API_URL"] = prefect_api  # before Prefect is imported below
    db_url = f"sqlite:///{tmp / 'app.db'}" if args.sqlite else pg_database()
    env = dict(
        os.environ,
        STUDYPUB_WORK_DIR=str(tmp / "work"),
        STUDYPUB_DATABASE__URL=db_url,
        STUDYPUB_DATABASE__POOL_SIZE="10",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("STUDYPUB_")})
    api_proc = None
    try:
        from flows.publish import publish_study
        from studypub.apikeys import create_key
        from studypub.db import get_sessionmaker, migrate
        from studypub.settings import get_settings

        if prefect_proc is not None:
            publish_study.to_deployment(name="publish").apply()  # type: ignore[union-attr]
        settings = get_settings()
        migrate(settings)
        with get_sessionmaker(settings)() as session:
            key = create_key(session, "bench", clinic_code=None, actor="bench")[1]
        api_proc, base = start_api(env, tmp / "api.log")
        # Warm-up: connections, caches, and both paths (a repeat is every 4th request).
        asyncio.run(scenario(base, key, 8, paced=False, health=False))

        results: dict[str, Any] = {}
        for paced in (True, False):
            label = "paced (0–1 s between requests)" if paced else "burst (no pause)"
            started = time.perf_counter()
            posts = asyncio.run(scenario(base, key, args.requests, paced=paced, health=False))
            wall = time.perf_counter() - started
            floor = asyncio.run(scenario(base, key, args.requests, paced=paced, health=True))
            results[label] = (posts, floor, wall)

        from sqlalchemy import func, select

        from studypub.models import Task

        with get_sessionmaker(settings)() as session:
            dispatched = session.scalar(select(func.count()).select_from(Task).where(Task.flow_run_id.is_not(None)))
            total = session.scalar(select(func.count()).select_from(Task))
        backend = "SQLite" if args.sqlite else "PostgreSQL"
        print(
            f"\nPOST /publish, {CLIENTS} concurrent clients, {args.requests} requests each, {backend}, "
            f"{os.cpu_count()} cores"
        )
        for label, (posts, floor, wall) in results.items():
            every = [v for values in posts.values() for v in values]
            print(f"{label}: {len(every) / wall:.0f} requests/s")
            print(fmt("POST /publish (all)", percentiles(every)))
            print(fmt("  new study (202)", percentiles(posts["new"])))
            print(fmt("  repeat (202/200)", percentiles(posts["repeat"])))
            print(fmt("GET /health (reference)", percentiles(floor["health"])))
        print(f"tasks recorded: {total}; flow runs created by the dispatcher meanwhile: {dispatched}")
    finally:
        if api_proc is not None:
            api_proc.terminate()
            api_proc.wait(15)
        if prefect_proc is not None:
            prefect_proc.terminate()
            try:
                prefect_proc.wait(20)
            except subprocess.TimeoutExpired:
                prefect_proc.kill()
        if not args.sqlite:
            from studypub.db import _engine_for

            _engine_for.cache_clear()
            drop_pg_database(db_url)


if __name__ == "__main__":
    main()
