"""``studypub run``: the whole service on one machine with embedded defaults.

Starts a local Prefect server (unless PREFECT_API_URL points at one), the demo PACS (Orthanc loaded with
generated studies, unless --no-demo), ``studypub worker`` (the Storage SCP and the served ``publish`` and
``retention`` deployments) and ``studypub api`` (the MIS API and the patients' link pages, on 127.0.0.1);
prints the addresses and a ``curl`` that publishes a demo study; Ctrl-C stops everything (the API and the
worker before the Prefect server), each child with its whole process group.

It never touches a process it did not start: when a default port is taken (Debian's own Orthanc on 4242/8042,
another program on 8000...), it takes a free one instead and says so. A port set explicitly (option or
environment) is used as given, or the start stops with a message naming it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from studypub.logs import LOG_FORMAT_ENV, get_logger
from studypub.settings import Settings

log = get_logger("run")


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - a local URL we built
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


DEFAULT_PREFECT_PORT = 4200
DEFAULT_DEMO_HTTP_PORT = 8042


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` on any local address (binding the wildcard address conflicts with all)."""
    from studypub.dicom.receiver import port_is_free

    return port_is_free("0.0.0.0", port)


@dataclass
class Ports:
    """The ports of this run, and one line per default that was taken and replaced."""

    prefect: int
    api: int
    pacs: int
    pacs_http: int
    scp: int
    notes: list[str] = field(default_factory=list)


def choose_ports(settings: Settings, args: Any, free: Any = port_free) -> Ports:
    """Each default port, or a free one when it is taken; an explicitly set port that is taken stops the start
    with a message naming it (``SystemExit``). The Storage SCP's port is only changed for the demo PACS (a real
    PACS knows the service by its port)."""
    from studypub.demo.net import free_port

    taken: set[int] = set()

    def pick(what: str, port: int, explicit: str | None) -> int:
        if port not in taken and free(port):
            taken.add(port)
            return port
        if explicit:
            raise SystemExit(f"port {port} ({what}) is taken; free it or set another port ({explicit})")
        other = free_port()
        while other in taken:
            other = free_port()
        taken.add(other)
        ports.notes.append(f"port {port} ({what}) is taken: using {other} instead")
        return other

    demo = not args.no_demo
    ports = Ports(0, 0, settings.pacs.port, 0, settings.pacs.scp_port)
    if not os.environ.get("PREFECT_API_URL"):
        ports.prefect = pick(
            "Prefect server",
            args.prefect_port or DEFAULT_PREFECT_PORT,
            "--prefect-port" if args.prefect_port else None,
        )
    if demo:
        ports.pacs = pick("demo PACS, DICOM", settings.pacs.port, _explicit(settings.pacs, "port", "PACS__PORT"))
        ports.pacs_http = pick(
            "demo PACS, web",
            args.demo_http_port or DEFAULT_DEMO_HTTP_PORT,
            "--demo-http-port" if args.demo_http_port else None,
        )
        ports.scp = pick("Storage SCP", settings.pacs.scp_port, _explicit(settings.pacs, "scp_port", "PACS__SCP_PORT"))
    elif not free(settings.pacs.scp_port):
        raise SystemExit(
            f"port {settings.pacs.scp_port} (Storage SCP) is taken: is another studypub running? "
            "The PACS sends the images to this port, so it is not changed without the demo PACS."
        )
    ports.api = pick("API and dashboard", settings.api.port, _explicit(settings.api, "port", "API__PORT"))
    return ports


def _explicit(section: Any, name: str, env: str) -> str | None:
    """The setting's variable name when it was set (environment or .env), else None."""
    return f"STUDYPUB_{env}" if name in section.model_fields_set else None


def apply_ports(settings: Settings, ports: Ports) -> Settings:
    """Hand the chosen ports to the children (through the environment) and return the settings they will read."""
    env: dict[str, str] = {}
    if ports.api != settings.api.port:
        env["STUDYPUB_API__PORT"] = str(ports.api)
        if "public_base_url" not in settings.links.model_fields_set:
            env["STUDYPUB_LINKS__PUBLIC_BASE_URL"] = f"http://127.0.0.1:{ports.api}"
    if ports.pacs != settings.pacs.port:
        env["STUDYPUB_PACS__PORT"] = str(ports.pacs)
    if ports.scp != settings.pacs.scp_port:
        env["STUDYPUB_PACS__SCP_PORT"] = str(ports.scp)
    if ports.prefect and "prefect_ui_url" not in settings.dashboard.model_fields_set:
        env["STUDYPUB_DASHBOARD__PREFECT_UI_URL"] = f"http://127.0.0.1:{ports.prefect}"
    if not env:
        return settings
    os.environ.update(env)
    return Settings()


def start_prefect_server(settings: Settings, port: int) -> tuple[subprocess.Popen[bytes], str]:
    home = settings.work_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log_file = (settings.work_dir / "prefect-server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    _wait_http(f"{api}/health", timeout=120)
    return proc, api


def start_demo_pacs(settings: Settings, http_port: int) -> tuple[Any, list[Any]]:
    from studypub.demo.orthanc import OrthancServer
    from studypub.demo.studies import demo_studies, generate_study

    p = settings.pacs
    pacs = OrthancServer(
        settings.work_dir / "demo-pacs",
        aet=p.called_ae,
        dicom_port=p.port,
        http_port=http_port,
        modalities={"studypub": (p.calling_ae, "127.0.0.1", p.scp_port)},
    ).start()
    specs = demo_studies()
    if pacs.study_count() < len(specs):
        out = settings.work_dir / "demo-studies"
        for spec in specs:
            pacs.upload(generate_study(out / spec.accession_number, spec).paths)
    return pacs, specs


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """``studypub worker`` as a child process (its log lines go to this terminal's stderr)."""
    from studypub.demo.net import port_open

    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "worker"], env=dict(os.environ), start_new_session=True
    )
    deadline = time.monotonic() + 90
    while not port_open(settings.pacs.scp_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the worker did not start (see its log lines above)")
        time.sleep(0.3)
    return proc


def start_api(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    """``studypub api`` as a child process, on the configured address (127.0.0.1 by default)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "api"], env=dict(os.environ), start_new_session=True
    )
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host
    url = f"http://{host}:{settings.api.port}"
    try:
        _wait_http(f"{url}/health", timeout=60)
    except TimeoutError:
        stop_process(proc, 5)
        raise SystemExit(f"the API did not start on {url} (is the port taken? see its log lines above)") from None
    return proc, url


def demo_api_key(settings: Settings) -> str:
    """A key for trying the API from this machine, kept (0600) in the work folder; development only."""
    from studypub.apikeys import authenticate, create_key
    from studypub.db import get_sessionmaker

    path = settings.work_dir / "demo-mis-key"
    with get_sessionmaker(settings)() as session:
        if path.is_file() and authenticate(session, path.read_text().strip()) is not None:
            return path.read_text().strip()
        _, key = create_key(session, f"demo-{int(time.time())}", clinic_code=None, actor="studypub run")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def demo_admin(settings: Settings) -> tuple[str, str] | None:
    """On the first start in development, an administrator ``admin`` with a random password kept (0600) in
    the work folder, so the dashboard can be tried at once. None when users exist that were made otherwise."""
    from sqlalchemy import func, select

    from studypub.db import get_sessionmaker
    from studypub.models import User
    from studypub.users import Role, create_user

    path = settings.work_dir / "demo-admin-password"
    with get_sessionmaker(settings)() as session:
        if session.scalar(select(func.count()).select_from(User)):
            return ("admin", path.read_text().strip()) if path.is_file() else None
        password = secrets.token_urlsafe(12)
        create_user(session, settings, "admin", password, Role.ADMINISTRATOR, actor="studypub run")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    return "admin", password


def curl_example(api_url: str, key: str, clinic: str, spec: Any) -> str:
    """The MIS's call for a demo study: its own IDs, title and date (the PACS's StudyDate, Moscow time)."""
    d, t = spec.study_date, spec.study_time
    body = json.dumps(
        {
            "patient_id": spec.patient_id,
            "accession_number": spec.accession_number,
            "clinic_code": clinic,
            "service_title": spec.service_title or spec.study_description,
            "study_date": f"{d[:4]}-{d[4:6]}-{d[6:8]}T{t[:2]}:{t[2:4]}:{t[4:6]}+03:00",
        },
        ensure_ascii=False,
    )
    return (
        f"  curl -s -X POST {api_url}/publish -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'"
    )


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM the child's process group (it was started in its own session: its children too), wait up to
    ``grace`` s, then SIGKILL what is left of the group."""
    if proc is None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5  # members of the group that outlive its leader (pool processes...)
    left = _signal_group(proc.pid, 0)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _signal_group(proc.pid, 0)
    if left:
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group of ours; False when it has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours: leave it
        return False
    return True


def serve_forever(args: Any, settings: Settings) -> int:
    # Nothing here may import Prefect before PREFECT_API_URL is set below: Prefect reads its settings at
    # import, and without the URL it would start a temporary server of its own.
    from studypub.db import migrate

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if settings.log_format == "auto":  # a person at a terminal: readable lines from every child
        os.environ[LOG_FORMAT_ENV] = "console"
    ports = choose_ports(settings, args)
    settings = apply_ports(settings, ports)
    for note in ports.notes:
        print(f"Note: {note}.", file=sys.stderr)
    migrate(settings)
    stop = threading.Event()
    # Both handled explicitly: a process started in the background may inherit SIGINT as ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    prefect_proc = None
    pacs = None
    worker = None
    api_proc = None
    try:
        api = os.environ.get("PREFECT_API_URL")
        if not api:
            print("Starting the Prefect server (first start takes ~20 s)...", file=sys.stderr)
            prefect_proc, api = start_prefect_server(settings, ports.prefect)
            os.environ["PREFECT_API_URL"] = api
        specs: list[Any] = []
        if not args.no_demo:
            print("Starting the demo PACS (Orthanc) and loading demo studies...", file=sys.stderr)
            pacs, specs = start_demo_pacs(settings, ports.pacs_http)
        worker = start_worker(settings)
        api_proc, api_url = start_api(settings)
        ui = api.removesuffix("/api")
        lines = [
            "",
            "StudyPublicator is running.",
            f"  API:              {api_url}/publish  (docs: {api_url}/docs)",
            f"  Dashboard:        {api_url}/dashboard",
            f"  Patient links:    {settings.links.public_base_url}/s/<key>",
            f"  Prefect UI:       {ui}",
            f"  PACS:             {settings.pacs.called_ae}@{settings.pacs.host}:{settings.pacs.port}"
            + (f" (demo Orthanc, web {pacs.url})" if pacs else ""),
            f"  Worker:           Storage SCP {settings.pacs.calling_ae} on port {settings.pacs.scp_port}; "
            "deployments publish-study/publish (retry failed runs from the Prefect UI) and retention/retention",
            f"  Work folder:      {settings.work_dir}",
            f"  Archives go to:   {settings.storage_url_resolved}",
        ]
        admin = demo_admin(settings) if settings.env == "development" else None
        if admin:
            lines += ["", f"Dashboard sign-in (kept in the work folder, demo-admin-password): {admin[0]} / {admin[1]}"]
        else:
            lines += ["", "Dashboard users: .venv/bin/studypub create-user --username <name> --role administrator"]
        if specs:
            spec = specs[0]
            key = demo_api_key(settings) if settings.env == "development" else "<an MIS key>"
            lines += [
                "",
                "Publish a demo study as the MIS would (the answer carries the patient's link at once):",
                curl_example(api_url, key, settings.default_clinic_code, spec),
                "then follow it:  curl -s -H 'X-API-Key: ...' <status_url from the answer>",
                "MIS keys: .venv/bin/studypub create-api-key --name <MIS name>",
            ]
            lines += ["", "Demo studies (patient id / accession):"]
            lines += [f"  {s.patient_id:<16} {s.accession_number}" for s in specs]
        if ports.notes:
            lines += ["", *(f"Note: {note}." for note in ports.notes)]
        lines += ["", "Ctrl-C stops everything."]
        print("\n".join(lines), flush=True)
        while not stop.wait(1):
            if prefect_proc is not None and prefect_proc.poll() is not None:
                raise SystemExit("the Prefect server stopped; see prefect-server.log in the work folder")
            if worker.poll() is not None:
                raise SystemExit("the worker stopped (see its log lines above)")
            if api_proc.poll() is not None:
                raise SystemExit("the API stopped (see its log lines above)")
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping...", file=sys.stderr)
        stop_process(api_proc, 10)
        stop_process(worker, 30)  # before the Prefect server: a runner whose server is gone hangs on exit
        if pacs is not None:
            pacs.stop()
        stop_process(prefect_proc, 20)
    return 0


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--prefect-port",
        type=int,
        help=f"port of the local Prefect server (default {DEFAULT_PREFECT_PORT}, or a free one when it is taken)",
    )
    p.add_argument(
        "--demo-http-port",
        type=int,
        help=f"web port of the demo Orthanc (default {DEFAULT_DEMO_HTTP_PORT}, or a free one when it is taken)",
    )
    p.add_argument("--no-demo", action="store_true", help="do not start the demo PACS")
