"""The dashboard's published-studies page at 100,000 rows on PostgreSQL (prints numbers; not a test).

Seeds a fresh database with N published studies (default 100,000: a clinic's several years), starts
``studypub api`` on it, signs in, and times ``GET /dashboard/published`` for filter and sort combinations
(the page's server time as the browser sees it on loopback: query, count, rendering). Also reports the
database part alone (the query and the count, in-process) and ``GET /health`` as the floor of the same run.
Target: p95 ≤ 100 ms for every combination. Usage: ``python -m bench.published_list [--rows 100000]``.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.api_latency import drop_pg_database, pg_database, start_api
from studypub.demo.net import free_port

ROOT = Path(__file__).parents[1]
REPEATS = 30
CASES: list[tuple[str, dict[str, str]]] = [
    ("default (newest first)", {}),
    ("page 50", {"page": "50"}),
    ("sort by size", {"sort": "size", "order": "desc"}),
    ("sort by PID", {"sort": "pid", "order": "asc"}),
    ("sort by downloads", {"sort": "downloads", "order": "desc"}),
    ("sort by save_till", {"sort": "save_till", "order": "asc"}),
    ("sort by study date", {"sort": "study_date", "order": "desc"}),
    ("filter PID", {"pid": "PID0004242"}),
    ("filter accession", {"acsn": "ACC0077777"}),
    ("upload last 30 days", {"upload_from": "{d30}"}),
    ("study date range + sort size", {"study_from": "{d400}", "study_to": "{d200}", "sort": "size"}),
    ("all statuses, sort EMK", {"status": "all", "sort": "emk_record_id"}),
]


def seed(url: str, rows: int) -> None:
    from sqlalchemy import create_engine, insert

    from studypub.models import PublishedStudy, Task

    engine = create_engine(url)
    rnd = random.Random(7)
    now = datetime.now(UTC)
    batch = 5000
    with engine.begin() as conn:
        for start in range(0, rows, batch):
            tasks: list[dict[str, Any]] = []
            pubs: list[dict[str, Any]] = []
            for i in range(start, min(rows, start + batch)):
                task_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
                uploaded = now - timedelta(minutes=rnd.randrange(0, 3 * 365 * 24 * 60))
                status = "COMPLETED" if i % 10 else rnd.choice(["EXPIRED", "DELETED"])
                tasks.append(
                    {
                        "id": task_id,
                        "clinic_code": "default",
                        "patient_id": f"PID{i % 60000:07d}",
                        "accession_number": f"ACC{i:07d}",
                        "emk_record_id": f"{rnd.randrange(10**6):06d}",
                        "service_title": "МРТ суставов",
                        "study_date": uploaded - timedelta(hours=rnd.randrange(1, 48)),
                        "save_till": uploaded + timedelta(days=30),
                        "source": "mis",
                        "status": status,
                        "step": "link",
                        "link_key": secrets.token_urlsafe(16),
                        "uid_salt": "0" * 32,
                        "object_key": f"archives/{task_id}.zip",
                        "attempts": 1,
                        "dispatch_pending": False,
                        "requeues": 0,
                        "created_at": uploaded,
                        "updated_at": uploaded,
                    }
                )
                pubs.append(
                    {
                        "task_id": task_id,
                        "clinic_code": "default",
                        "storage_url": "s3://bench",
                        "object_key": f"archives/{task_id}.zip",
                        "size_bytes": rnd.randrange(10**6, 2 * 10**9),
                        "sha256": "0" * 64,
                        "instances": rnd.randrange(1, 3000),
                        "withheld": 0,
                        "series": 3,
                        "modalities": "MR",
                        "profile_version": "bench",
                        "upload_date": uploaded,
                        "downloads": rnd.randrange(0, 6),
                    }
                )
            conn.execute(insert(Task), tasks)
            conn.execute(insert(PublishedStudy), pubs)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")  # as autovacuum would soon (in a transaction, it would be rolled back)
    engine.dispose()


def stats(samples: list[float]) -> str:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {statistics.median(samples):6.1f}  p95 {qs[94]:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="studypub-bench-list-"))
    url = pg_database()
    env = dict(
        os.environ,
        STUDYPUB_WORK_DIR=str(tmp / "work"),
        STUDYPUB_DATABASE__URL=url,
        STUDYPUB_API__WORKERS="1",
        STUDYPUB_DASHBOARD__LOGIN_RATE_LIMIT="1000/minute",
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",  # no runs are made here
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith(("STUDYPUB_", "PREFECT_"))})
    api = None
    try:
        from studypub.db import get_sessionmaker, migrate
        from studypub.settings import get_settings
        from studypub.users import create_user

        settings = get_settings()
        migrate(settings)
        started = time.perf_counter()
        seed(url, args.rows)
        print(f"seeded {args.rows} published studies in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        with get_sessionmaker(settings)() as session:
            create_user(session, settings, "bench", "bench password 1", "registrator", actor="bench")

        api, base = start_api(env, tmp / "api.log")
        from tests.support.dashboard import Browser

        today = date.today()
        fill = {
            "{d30}": (today - timedelta(days=30)).isoformat(),
            "{d400}": (today - timedelta(days=400)).isoformat(),
            "{d200}": (today - timedelta(days=200)).isoformat(),
        }
        from dashboard import queries

        with Browser(base) as browser:
            browser.login("bench", "bench password 1")
            health = []
            for _ in range(REPEATS):
                t = time.perf_counter()
                browser.http.get("/health")  # the same keep-alive connection as the pages
                health.append((time.perf_counter() - t) * 1000)
            print(
                f"\nGET /dashboard/published, {args.rows} rows, PostgreSQL, {os.cpu_count()} cores "
                f"(page of {settings.dashboard.page_size}; {REPEATS} requests each)"
            )
            print(f"  {'GET /health (reference)':<32} {stats(health)}")
            worst = 0.0
            for label, params in CASES:
                params = {k: fill.get(v, v) for k, v in params.items()}
                browser.get("/dashboard/published", params=params)  # warm
                page_ms = []
                for _ in range(REPEATS):
                    t = time.perf_counter()
                    r = browser.get("/dashboard/published", params=params)
                    page_ms.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.status_code
                db_ms = []
                flt = queries.PublishedFilter(
                    pid=params.get("pid"),
                    acsn=params.get("acsn"),
                    status=None if params.get("status") == "all" else "COMPLETED",
                    upload_from=date.fromisoformat(params["upload_from"]) if "upload_from" in params else None,
                    study_from=date.fromisoformat(params["study_from"]) if "study_from" in params else None,
                    study_to=date.fromisoformat(params["study_to"]) if "study_to" in params else None,
                    sort=params.get("sort", "upload_date"),
                    descending=params.get("order", "desc") == "desc",
                    page=int(params.get("page", 1)),
                    page_size=settings.dashboard.page_size,
                )
                with get_sessionmaker(settings)() as session:
                    for _ in range(REPEATS):
                        t = time.perf_counter()
                        queries.published_page(session, flt)
                        db_ms.append((time.perf_counter() - t) * 1000)
                        session.rollback()
                worst = max(worst, statistics.quantiles(page_ms, n=100, method="inclusive")[94])
                print(f"  {label:<32} page {stats(page_ms)}   (database {stats(db_ms)})")
            print(f"worst page p95: {worst:.1f} ms (target ≤ 100 ms)")
    finally:
        if api is not None:
            api.terminate()
            api.wait(15)
        from studypub.db import _engine_for

        _engine_for.cache_clear()
        drop_pg_database(url)


if __name__ == "__main__":
    main()
