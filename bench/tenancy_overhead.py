"""What the clinic filter costs: the dashboard's published list (every sort, the heaviest filters) at N rows,
read through a clinic's scoped session and, as the reference in the same run, through an unfiltered system
session, on SQLite and (when reachable) PostgreSQL. Prints one JSON object: p50/p95 per backend and scope.

    .venv/bin/python -m bench.tenancy_overhead --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _measure(url: str, rows: int, repeats: int) -> dict[str, Any]:
    from bench.published_list import seed
    from dashboard.queries import SORTS, PublishedFilter, published_page
    from studypub.db import _engine_for, get_engine, get_sessionmaker, migrate
    from studypub.settings import get_settings
    from studypub.tenancy import clinics_scope, enter, tenant_sessionmaker

    os.environ["STUDYPUB_DATABASE__URL"] = url
    get_settings.cache_clear()
    _engine_for.cache_clear()
    migrate(get_settings())
    seed(url, rows)
    filters = [PublishedFilter(sort=sort, descending=d) for sort in SORTS for d in (True, False)]
    filters += [PublishedFilter(pid="PID0000042", status=None), PublishedFilter(status=None, page=50)]
    times: dict[str, list[float]] = {"system (reference)": [], "clinic": []}
    for _ in range(repeats):  # the two scopes in turn, query by query: the machine's load falls on both alike
        for flt in filters:
            for scope, samples in times.items():
                if scope == "clinic":
                    session = tenant_sessionmaker(get_engine())()
                    enter(session, clinics_scope({"default"}))
                else:
                    session = get_sessionmaker()()
                with session:
                    started = time.perf_counter()
                    page = published_page(session, flt)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert page.rows or flt.pid
    result: dict[str, Any] = {}
    for scope, samples in times.items():
        samples.sort()
        result[scope] = {
            "p50_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 1),
            "queries": len(samples),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("STUDYPUB_TEST_PG"), help="an empty PostgreSQL database URL")
    args = parser.parse_args()
    out: dict[str, Any] = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STUDYPUB_WORK_DIR"] = tmp
        out["sqlite"] = _measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.rows, args.repeats)
        if args.pg:
            out["postgresql"] = _measure(args.pg, args.rows, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
