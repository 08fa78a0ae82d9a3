"""A whole real stack for chaos tests and the chaos bench, with the faults an operator meets.

Parts (each usable alone; :class:`ChaosStack` puts them together):

- :class:`PrefectServer`: its own ``prefect server start`` (as deployments/run.py's ``start_prefect_server``)
  with its own PREFECT_HOME (SQLite) in a folder; :meth:`PrefectServer.restart` stops it and starts it again on
  the same port, keeping its database.
- :class:`WorkerProcess`: ``studypub worker`` in its own process group; :meth:`WorkerProcess.kill_group`
  SIGKILLs the whole tree at once (an OOM kill, ``docker kill``, a power cut), :meth:`WorkerProcess.start`
  brings it back; its log (all its lives) is kept in tests/artifacts/.
- Outages: :class:`Pacs` stops and starts Orthanc on the same ports, keeping its studies (always started
  again by :meth:`Pacs.down`'s ``finally``); S3 and the C-MOVE destination sit behind
  :class:`tests.support.proxy.TcpProxy` (moto loses everything when stopped; the proxy cuts the network
  instead, and its ``rate`` slows a transfer so that a fault lands in the middle of it).
- Observation: :class:`AppDb` (a publication's row in the app database, waiting for a status/step/progress),
  :class:`Timeline` (every change of the watched publications' status/step/waiting_for/reason, and the
  harness's own actions, with times), :class:`Bucket` (objects, pending multipart uploads),
  :func:`raw_files` (identifiable instances left in the work folder).

Process trees are found from /proc (psutil when installed); only processes this harness started, and their
descendants, are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import LOOPBACK, free_port, port_open, wait_for
from tests.support.proxy import TcpProxy
from tests.support.worker import ARTIFACTS, STUDYPUB

__all__ = [
    "MOMENTS",
    "AppDb",
    "Bucket",
    "ChaosStack",
    "Moment",
    "Pacs",
    "PrefectServer",
    "StackConfig",
    "Timeline",
    "WorkerProcess",
    "create_pg_database",
    "descendants",
    "drop_pg_database",
    "raw_files",
    "settings_from_env",
    "tree_rss_bytes",
]

FINAL = ("COMPLETED", "FAILED", "EXPIRED", "DELETED")


# ------------------------------------------------------------------------------------------------ processes


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (not ``pid`` itself)."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    stack = _children(pid)
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(_children(p))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS sum of a process and all its descendants (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        return sum(_rss(p) for p in [pid, *descendants(pid)])
    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ------------------------------------------------------------------------------------------------ Prefect


class PrefectServer:
    """``prefect server start`` as deployments/run.py starts it, in ``root`` (PREFECT_HOME ``root/prefect``, log
    ``root/prefect-server.log``), on a fixed port so that a restart keeps the address and the database
    (SQLite in PREFECT_HOME)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_url = f"http://{LOOPBACK}:{self.port}/api"
        self.log_path = self.root / "prefect-server.log"
        self.start_seconds: list[float] = []

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 180) -> PrefectServer:
        """Start it (again) and wait until its API answers; the process is stopped if it does not."""
        from deployments.run import _wait_http

        if self.running():
            return self
        home = self.root / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        wait_for(lambda: not port_open(self.port), 30, f"port {self.port} to be free for the Prefect server")
        # As deployments/run.py's start_prefect_server, with the process in hand while it starts.
        env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.pop("PREFECT_API_URL", None)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_http(f"{self.api_url}/health", timeout=timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        self.start_seconds.append(time.monotonic() - started)
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the server's process group, SIGKILL after ``timeout``; returns when the port is closed."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
        _signal_group(proc.pid, signal.SIGKILL)  # anything of its group that outlived it
        wait_for(lambda: not port_open(self.port), 30, "the Prefect server's port to close")

    def restart(self) -> PrefectServer:
        self.stop()
        return self.start()

    def get(self, path: str) -> Any:
        return httpx.get(self.api_url + path, timeout=10).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(self.api_url + path, json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/flow_runs/{flow_run_id}"))

    def flow_run_states(self, flow_run_ids: list[str]) -> dict[str, str]:
        """flow run id -> its state name (e.g. Running, Crashed), for the report."""
        out = {}
        for fid in flow_run_ids:
            with contextlib.suppress(Exception):
                out[fid] = self.flow_run(fid)["state"]["name"]
        return out


# ------------------------------------------------------------------------------------------------ worker


class WorkerProcess:
    """``studypub worker`` in its own session/process group, with the log of all its lives in ``log_path``
    (copied to tests/artifacts/``artifact_name`` by :meth:`save_log`)."""

    def __init__(self, env: dict[str, str], log_path: Path, artifact_name: str, *, ready_port: int) -> None:
        self.env = env
        self.log_path = Path(log_path)
        self.artifact_name = artifact_name
        self.ready_port = ready_port  # its Storage SCP: listening means it got through its start-up
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self.killed_pids: list[list[int]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The worker and its descendants (flow-run processes, pools)."""
        if not self.running():
            return []
        assert self.proc is not None
        return [self.proc.pid, *descendants(self.proc.pid)]

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid) if self.running() and self.proc else 0

    def start(self, timeout: float = 120) -> WorkerProcess:
        if self.running():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.lives += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== chaos harness: worker life {self.lives} starts {_now()} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(STUDYPUB), "worker"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        try:
            wait_for(lambda: port_open(self.ready_port) or proc.poll() is not None, timeout, "the worker's Storage SCP")
        except BaseException:
            self.kill_group()
            raise
        if proc.poll() is not None:
            raise RuntimeError(f"studypub worker exited ({proc.returncode}); log: {self.log_path}")
        return self

    def kill_group(self) -> list[int]:
        """SIGKILL the worker's whole process tree at once, as the OOM killer or ``docker kill`` would; returns
        when every one of them is gone. Returns the pids killed."""
        proc = self.proc
        if proc is None:
            return []
        pids = [proc.pid, *descendants(proc.pid)] if proc.poll() is None else descendants(proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)
        for pid in pids:  # a child that made its own session is not in the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        wait_for(lambda: not any(_alive(p) for p in pids), 15, "the killed worker's processes to be gone")
        self.killed_pids.append(pids)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== chaos harness: worker process group SIGKILLed {_now()} ({pids}) =====\n".encode())
        return pids

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a clean stop), then the whole tree SIGKILLed after ``timeout`` or if anything is left."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            pids = [proc.pid, *descendants(proc.pid)]
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            if proc.poll() is None or any(_alive(p) for p in pids):
                self.kill_group()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def save_log(self) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / self.artifact_name
        target.write_text(self.log_text())
        return target


# ------------------------------------------------------------------------------------------------ PACS


class Pacs:
    """Stops and starts an :class:`~studypub.demo.orthanc.OrthancServer` on the same DICOM and HTTP ports (its
    storage stays, so do its studies); restores the server's own port policy afterwards."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.down_since: float | None = None
        self._ports: tuple[int, int] = (server.dicom_port, server.http_port)

    def stop(self) -> None:
        self._ports = (self.server.dicom_port, self.server.http_port)
        self.server.stop()
        self.down_since = time.monotonic()

    def start(self) -> None:
        if self.server.running():
            return
        fixed = (self.server._fixed_dicom_port, self.server._fixed_http_port)
        self.server._fixed_dicom_port, self.server._fixed_http_port = self._ports
        try:
            self.server.start()
        finally:
            self.server._fixed_dicom_port, self.server._fixed_http_port = fixed
        self.down_since = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The PACS is stopped inside the block and always started again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()


# ------------------------------------------------------------------------------------------------ databases


def create_pg_database(prefix: str = "studypub_chaos", admin_url: str | None = None) -> str:
    """A fresh PostgreSQL database (the server on these machines, trust auth); returns its URL."""
    from sqlalchemy import create_engine, text

    if admin_url is None:
        from tests.conftest import PG_ADMIN_URL

        admin_url = PG_ADMIN_URL
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    from studypub.db import _engine_for

    _engine_for.cache_clear()
    base, name = url.rsplit("/", 1)
    admin = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def settings_from_env(env: dict[str, str]) -> Any:
    """The :class:`studypub.settings.Settings` a process started with ``env`` would have (the STUDYPUB_*
    variables, given explicitly: this process's own environment does not override them)."""
    from studypub.settings import Settings

    nested: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("STUDYPUB_"):
            continue
        parts = key.removeprefix("STUDYPUB_").lower().split("__")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return Settings(_env_file=None, **nested)  # type: ignore[call-arg]


class AppDb:
    """Read-only looks at the app database (raw SQL: columns the code may add later are simply there)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.url = url
        self.engine = create_engine(url, pool_pre_ping=True, pool_size=2)

    def task(self, task_id: str) -> dict[str, Any]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM tasks WHERE id = :id"), {"id": task_id}).mappings().first()
        if row is None:
            raise KeyError(task_id)
        return dict(row)

    def tasks(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        from sqlalchemy import bindparam, text

        if not task_ids:
            return {}
        query = text("SELECT * FROM tasks WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"ids": list(task_ids)}).mappings().all()
        return {r["id"]: dict(r) for r in rows}

    def count(self, where: str = "TRUE", **params: Any) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM tasks WHERE {where}"), params).scalar_one())

    def published(self) -> dict[str, dict[str, Any]]:
        """task id -> its published_studies row."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM published_studies")).mappings().all()
        return {r["task_id"]: dict(r) for r in rows}

    def referenced_object_keys(self) -> set[str]:
        """Object keys a publication references (every task's, published or not: its key is fixed at request)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            keys = conn.execute(text("SELECT object_key FROM tasks WHERE object_key IS NOT NULL")).scalars().all()
            keys += conn.execute(text("SELECT object_key FROM published_studies")).scalars().all()
        return set(keys)

    def wait(
        self,
        task_id: str,
        predicate: Callable[[dict[str, Any]], Any],
        timeout: float,
        what: str,
        interval: float = 0.1,
        *,
        give_up: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Poll the publication's row until ``predicate(row)``; returns the row. AssertionError (with the last
        row) after ``timeout`` or as soon as ``give_up(row)`` is true."""
        last: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # the database may be restarting; keep looking
                last = self.task(task_id)
                if predicate(last):
                    return last
                if give_up is not None and give_up(last):
                    raise AssertionError(f"gave up waiting for {what}: {brief(last)}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {brief(last)}")
            time.sleep(interval)

    def wait_status(self, task_id: str, status: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        wanted = (status,) if isinstance(status, str) else status
        return self.wait(task_id, lambda r: r["status"] in wanted, timeout, f"{task_id} to be {'/'.join(wanted)}")

    def wait_final(self, task_id: str, timeout: float) -> dict[str, Any]:
        return self.wait_status(task_id, FINAL, timeout)

    def wait_step(
        self,
        task_id: str,
        steps: tuple[str, ...],
        timeout: float,
        also: Callable[[dict[str, Any]], Any] | None = None,
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """Until the publication is RUNNING at one of ``steps`` (and ``also(row)``); fails at once if it has
        gone past them (finished) first: the moment to act was missed."""
        order = ["find", "retrieve", "anonymise", "zip", "upload", "link"]
        last_wanted = max(order.index(s) for s in steps)

        def past(r: dict[str, Any]) -> bool:
            return r["status"] in FINAL or (r["step"] in order and order.index(r["step"]) > last_wanted)

        return self.wait(
            task_id,
            lambda r: r["status"] == "RUNNING" and r["step"] in steps and (also is None or also(r)),
            timeout,
            f"{task_id} at step {'/'.join(steps)}",
            interval,
            give_up=past,
        )

    def dispose(self) -> None:
        self.engine.dispose()


def brief(row: dict[str, Any]) -> str:
    if not row:
        return "(no row)"
    keys = ("status", "step", "waiting_for", "reason", "attempts", "requeues")
    out = ", ".join(f"{k}={row.get(k)!r}" for k in keys if k in row)
    if row.get("progress_expected") or row.get("progress_received"):
        out += f", progress={row.get('progress_received')}/{row.get('progress_expected')}"
    if row.get("flow_run_id"):
        out += f", run={str(row['flow_run_id'])[:8]}"
    return out


# ------------------------------------------------------------------------------------------------ timeline


@dataclass
class Event:
    t: float
    task_id: str | None
    what: str


class Timeline:
    """Samples the watched publications' rows (``interval`` s) and records every change of status, step,
    waiting_for, reason and attempts, plus the harness's own marks ("worker killed", "PACS down"...), with
    the time since the timeline started. Progress is recorded at most every ``progress_every`` instances."""

    FIELDS = ("status", "step", "waiting_for", "reason", "attempts", "requeues", "flow_run_id")

    def __init__(self, db: AppDb, interval: float = 0.2, progress_every: int = 25) -> None:
        self.db = db
        self.interval = interval
        self.progress_every = progress_every
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self.labels: dict[str, str] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-timeline", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def watch(self, task_id: str, label: str) -> None:
        with self._lock:
            self.labels[task_id] = label
        self.sample()

    def mark(self, what: str, task_id: str | None = None) -> float:
        t = self.now()
        with self._lock:
            self.events.append(Event(t, task_id, f"** {what}"))
        return t

    def sample(self) -> None:
        with self._lock:
            ids = list(self.labels)
        try:
            rows = self.db.tasks(ids)
        except Exception as exc:  # the database restarting: note it once
            with self._lock:
                if not self.events or self.events[-1].what != f"(app db unreadable: {type(exc).__name__})":
                    self.events.append(Event(self.now(), None, f"(app db unreadable: {type(exc).__name__})"))
            return
        t = self.now()
        with self._lock:
            for task_id, row in rows.items():
                self._rows.setdefault(task_id, []).append((t, {k: row.get(k) for k in (*self.FIELDS, "step")}))
                prev = self._last.get(task_id)
                changed = [k for k in self.FIELDS if prev is None or prev.get(k) != row.get(k)]
                got, prev_got = row.get("progress_received") or 0, (prev or {}).get("progress_received") or 0
                if prev is not None and got and got // self.progress_every != prev_got // self.progress_every:
                    changed.append("progress")
                if changed or prev is None:
                    self.events.append(Event(t, task_id, brief(row)))
                    self._last[task_id] = row

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def saw(self, task_id: str, predicate: Callable[[dict[str, Any]], Any]) -> bool:
        """Whether any sample of the publication satisfied ``predicate`` (on the FIELDS)."""
        with self._lock:
            return any(predicate(r) for _, r in self._rows.get(task_id, []))

    def values(self, task_id: str, key: str) -> list[Any]:
        """The distinct values ``key`` took, in order."""
        out: list[Any] = []
        with self._lock:
            for _, r in self._rows.get(task_id, []):
                if not out or out[-1] != r.get(key):
                    out.append(r.get(key))
        return out

    def report(self, task_ids: list[str] | None = None) -> str:
        """The events of these publications (all: None) and the harness's marks since the first of them."""
        with self._lock:
            own = [e for e in self.events if task_ids is None or e.task_id in task_ids]
            since = min((e.t for e in own), default=0.0) if task_ids is not None else 0.0
            events = [e for e in self.events if e in own or (e.task_id is None and e.t >= since)]
            labels = dict(self.labels)
        lines = []
        for e in events:
            who = labels.get(e.task_id or "", "") if e.task_id else ""
            lines.append(f"  +{e.t:6.1f}s {who:<10} {e.what}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ storage


class Bucket:
    """The bucket as the S3 server itself sees it (directly, not through the proxy the worker uses)."""

    def __init__(self, s3_server: Any, name: str, prefix: str = "published/") -> None:
        self.s3 = s3_server
        self.name = name
        self.prefix = prefix

    def objects(self) -> dict[str, int]:
        """key -> size of every object in the bucket."""
        client = self.s3.client()
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def pending_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads started and neither completed nor aborted: [{"Key", "UploadId", "Initiated"}]."""
        answer = self.s3.client().list_multipart_uploads(Bucket=self.name)
        return [
            {"Key": u["Key"], "UploadId": u["UploadId"], "Initiated": u.get("Initiated")}
            for u in answer.get("Uploads", [])
        ]

    def key_for(self, object_key: str) -> str:
        return self.prefix + object_key


def raw_files(work_dir: Path, task_id: str | None = None) -> list[Path]:
    """Files left in the raw (identifiable) spools: of one publication, or of all."""
    tasks = Path(work_dir) / "tasks"
    roots = [tasks / task_id / "raw"] if task_id else sorted(tasks.glob("*/raw"))
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ moments

MIB = 1024 * 1024


@dataclass(frozen=True)
class Moment:
    """A moment of a publication to act at: RUNNING at one of ``steps``, at least ``min_received`` instances
    received, and (``pending_upload``) its multipart upload started; ``scp_rate``/``s3_rate`` slow the C-MOVE
    results and the S3 traffic from the start so that the moment lasts long enough to be caught."""

    steps: tuple[str, ...]
    min_received: int = 0
    pending_upload: bool = False
    scp_rate: float | None = None
    s3_rate: float | None = None


MOMENTS: dict[str, Moment] = {
    # a kill lands with identifiable instances on disk
    "retrieve": Moment(("retrieve",), min_received=20, scp_rate=4 * MIB),
    "anonymise-zip": Moment(("anonymise", "zip")),
    # the archive (a few parts) is being sent: a multipart upload is pending
    "upload": Moment(("upload",), pending_upload=True, s3_rate=1 * MIB),
    # a long retrieval (~1 MiB/s): an outage or a restart lands in its middle
    "retrieve-slow": Moment(("retrieve",), min_received=5, scp_rate=1 * MIB),
}


# ------------------------------------------------------------------------------------------------ the stack


@dataclass
class StackConfig:
    lease_seconds: float = 15
    watchdog_seconds: float = 2
    dispatch_interval: float = 1
    outage_patience_seconds: float = 600
    max_resumes: int = 3
    study_recheck_seconds: float = 300
    max_concurrent: int = 0
    upload_part_size: int = 5 * 1024 * 1024  # the S3 minimum: a multi-MiB archive is a multipart upload
    extra_env: dict[str, str] = field(default_factory=dict)


class ChaosStack:
    """Prefect server, PostgreSQL database, ``studypub worker``, the PACS and S3, wired for faults:

    - the worker's Storage SCP listens on a port of its own; the PACS sends C-MOVE results to ``scp_port`` (the
      port the PACS knows), where :attr:`scp_proxy` forwards them (``scp_proxy.rate`` slows a retrieval);
    - the worker reaches S3 through :attr:`s3_proxy` (``stop()``: S3 unreachable, state kept; ``rate``).

    ``start()`` makes a bucket, starts the proxies, the Prefect server and the worker; ``stop()`` undoes it
    all and keeps the logs in tests/artifacts/ (``<name>-worker.log``, ``<name>-prefect.log``).
    """

    def __init__(
        self,
        root: Path,
        *,
        orthanc: Any,
        s3_server: Any,
        scp_port: int,
        db_url: str,
        name: str = "chaos",
        config: StackConfig | None = None,
        clinic_code: str = "default",
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.config = config or StackConfig()
        self.orthanc = orthanc
        self.pacs = Pacs(orthanc)
        self.s3_server = s3_server
        self.scp_port = scp_port
        self.db_url = db_url
        self.clinic_code = clinic_code
        self.work_dir = self.root / "work"
        self.worker_scp_port = free_port()
        self.scp_proxy = TcpProxy(LOOPBACK, self.worker_scp_port, port=scp_port)
        self.s3_proxy = TcpProxy(LOOPBACK, s3_server.port)
        self.prefect = PrefectServer(self.root / "prefect")
        self.bucket_name = f"chaos-{secrets.token_hex(4)}"
        self.bucket = Bucket(s3_server, self.bucket_name)
        self.env: dict[str, str] = {}
        self.settings: Any = None
        self.db: AppDb | None = None
        self.worker: WorkerProcess | None = None
        self.timeline: Timeline | None = None

    def build_env(self) -> dict[str, str]:
        c = self.config
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STUDYPUB_", "PREFECT_"))}
        env = dict(
            base,
            PREFECT_API_URL=self.prefect.api_url,
            PREFECT_HOME=str(self.root / "prefect-client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
            PREFECT_LOGGING_SETTINGS_PATH=str(Path(__file__).parents[2] / "studypub" / "logging.yml"),
            STUDYPUB_WORK_DIR=str(self.work_dir),
            STUDYPUB_SECRET_KEY=secrets.token_hex(32),
            STUDYPUB_DATABASE__URL=self.db_url,
            STUDYPUB_PACS__HOST=LOOPBACK,
            STUDYPUB_PACS__PORT=str(self.orthanc.dicom_port),
            STUDYPUB_PACS__CALLED_AE=self.orthanc.aet,
            STUDYPUB_PACS__CALLING_AE="STUDYPUB",
            STUDYPUB_PACS__SCP_PORT=str(self.worker_scp_port),
            STUDYPUB_PACS__SCP_BIND=LOOPBACK,
            STUDYPUB_STORAGE__URL=f"s3://{self.bucket_name}/{self.bucket.prefix.rstrip('/')}",
            STUDYPUB_STORAGE__ENDPOINT_URL=self.s3_proxy.url,
            STUDYPUB_STORAGE__ACCESS_KEY_ID="testing",
            STUDYPUB_STORAGE__SECRET_ACCESS_KEY="testing-secret",
            STUDYPUB_STORAGE__REGION="us-east-1",
            STUDYPUB_STORAGE__UPLOAD_PART_SIZE=str(c.upload_part_size),
            STUDYPUB_RUNS__LEASE_SECONDS=str(c.lease_seconds),
            STUDYPUB_RUNS__WATCHDOG_SECONDS=str(c.watchdog_seconds),
            STUDYPUB_RUNS__OUTAGE_PATIENCE_SECONDS=str(c.outage_patience_seconds),
            STUDYPUB_RUNS__MAX_RESUMES=str(c.max_resumes),
            STUDYPUB_RUNS__STUDY_RECHECK_SECONDS=str(c.study_recheck_seconds),
            STUDYPUB_RUNS__MAX_CONCURRENT=str(c.max_concurrent),
            STUDYPUB_API__DISPATCH_INTERVAL=str(c.dispatch_interval),
            STUDYPUB_LINKS__PUBLIC_BASE_URL="https://studies.example.org",
            STUDYPUB_MIN_FREE_DISK_MB="0",
        )
        env.update(self.config.extra_env)
        return env

    def start(self) -> ChaosStack:
        from studypub.db import migrate

        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.s3_server.create_bucket(self.bucket_name)
        self.s3_proxy.start()
        self.scp_proxy.start()
        self.prefect.start()
        self.env = self.build_env()
        self.settings = settings_from_env(self.env)
        migrate(self.settings)
        self.db = AppDb(self.db_url)
        self.timeline = Timeline(self.db)
        self.worker = WorkerProcess(
            self.env, self.root / "worker.log", f"{self.name}-worker.log", ready_port=self.worker_scp_port
        )
        self.worker.start()
        self.timeline.mark("worker started")
        return self

    def stop(self) -> None:
        if self.timeline is not None:
            self.timeline.stop()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"{self.name}-timeline.log").write_text(self.timeline.report() + "\n")
        if self.worker is not None:
            self.worker.stop()  # before the Prefect server: a runner whose server is gone hangs on exit
            self.worker.save_log()
        with contextlib.suppress(Exception):
            self.pacs.start()
        self.prefect.stop()
        if self.prefect.log_path.exists():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"{self.name}-prefect.log").write_text(self.prefect.log_path.read_text(errors="replace"))
        self.scp_proxy.stop()
        self.s3_proxy.stop()
        if self.db is not None:
            self.db.dispose()
        with contextlib.suppress(Exception):
            self.s3_server.delete_bucket(self.bucket_name)

    # --------------------------------------------------------------------------- acting

    def healthy(self) -> None:
        """Everything up and at full speed again (between tests sharing the stack)."""
        self.full_speed()
        if not self.s3_proxy.running:
            self.s3_proxy.start()
        if not self.scp_proxy.running:
            self.scp_proxy.start()
        if not self.orthanc.running():
            self.pacs.start()
        if not self.prefect.running():
            self.prefect.start()
        assert self.worker is not None
        if not self.worker.running():
            self.worker.start()

    def slow_down(self, moment: Moment) -> None:
        """Slow the traffic as ``moment`` needs (before the publication is requested)."""
        self.scp_proxy.rate = moment.scp_rate
        self.s3_proxy.rate = moment.s3_rate

    def full_speed(self) -> None:
        self.scp_proxy.rate = None
        self.s3_proxy.rate = None

    def wait_moment(self, task_id: str, moment: Moment, timeout: float) -> dict[str, Any]:
        """Until the publication is at ``moment`` (polling its row every 50 ms); returns the row. AssertionError
        if it does not get there in ``timeout`` or goes past it first."""
        assert self.db is not None

        def there(row: dict[str, Any]) -> bool:
            if (row.get("progress_received") or 0) < moment.min_received:
                return False
            if moment.pending_upload:
                key = self.bucket.key_for(row["object_key"])
                return any(u["Key"] == key for u in self.bucket.pending_uploads())
            return True

        return self.db.wait_step(task_id, moment.steps, timeout, also=there)

    def publish(self, study: Any, label: str | None = None, **request: Any) -> str:
        """Record a publication of ``study`` as the MIS's request would (the worker's dispatcher starts it);
        returns its task id, watched by the timeline."""
        from studypub.db import get_sessionmaker
        from studypub.publications import PublicationRequest, request_publication

        with get_sessionmaker(self.settings)() as session:
            task, _ = request_publication(
                session,
                self.settings,
                PublicationRequest(
                    patient_id=study.patient_id,
                    accession_number=study.accession_number,
                    clinic_code=self.clinic_code,
                    source="mis",
                    service_title="МРТ суставов",
                    dispatch=True,
                    **request,
                ),
            )
            task_id = str(task.id)
        assert self.timeline is not None
        self.timeline.watch(task_id, label or study.accession_number[-6:])
        return task_id

    @contextlib.contextmanager
    def pacs_down(self) -> Iterator[None]:
        """The PACS goes away in the middle of a transfer and stays away inside the block; it is always started
        again after it. Its connections to the worker drop at once (Orthanc stopped gracefully would first
        finish the C-MOVE under way), then it is stopped."""
        self.scp_proxy.stop()
        try:
            self.pacs.stop()
        finally:
            self.scp_proxy.start()
        try:
            yield
        finally:
            self.pacs.start()

    def kill_worker(self, task_id: str | None = None) -> list[int]:
        assert self.worker is not None and self.timeline is not None
        pids = self.worker.kill_group()
        self.timeline.mark(f"worker process group SIGKILLed ({len(pids)} processes)", task_id)
        return pids

    def start_worker(self) -> float:
        """Start the worker again; returns the monotonic time it was back."""
        assert self.worker is not None and self.timeline is not None
        self.worker.start()
        self.timeline.mark("worker started again")
        return time.monotonic()

    # --------------------------------------------------------------------------- checking

    def leftovers(self, task_ids: list[str]) -> dict[str, Any]:
        """What the proof says must be empty/true once the publications completed, for an assertion message:
        per publication its object and raw files; bucket-wide the objects no publication references and the
        pending multipart uploads."""
        assert self.db is not None
        referenced = {self.bucket.key_for(k) for k in self.db.referenced_object_keys()}
        objects = self.bucket.objects()
        rows = self.db.tasks(task_ids)
        return {
            "objects": {
                t: {k: v for k, v in objects.items() if k == self.bucket.key_for(rows[t]["object_key"] or "")}
                for t in task_ids
            },
            "orphans": sorted(set(objects) - referenced),
            "pending_uploads": self.bucket.pending_uploads(),
            "raw_files": {t: [str(p) for p in raw_files(self.work_dir, t)] for t in task_ids},
        }

    def report(self, task_ids: list[str] | None = None) -> str:
        """The timeline of these publications (and the harness's marks), for failure messages."""
        return self.timeline.report(task_ids) if self.timeline else ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
