"""``studypub``: the command line of StudyPublicator.

``studypub publish`` prints exactly one JSON object on stdout (logs go to stderr) and exits 0 when the study
is published, 1 when the publication failed, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from studypub.logs import configure_env

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _stdout_for_result() -> IO[str]:
    """Keep the real stdout for the one JSON result; everything else that writes to fd 1 goes to stderr."""
    real = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def _emit(out: IO[str], obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


def _iso(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("the date-time needs a UTC offset, e.g. 2025-03-01T00:00:00+03:00")
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="studypub", description="StudyPublicator: publish anonymised studies behind links.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("publish", help="publish one study through the Prefect flow; prints one JSON object")
    p.add_argument("--patient-id", required=True, help="PatientID the study must belong to")
    p.add_argument("--accession", required=True, help="AccessionNumber of the study")
    p.add_argument("--clinic", help="clinic code (default: STUDYPUB_DEFAULT_CLINIC_CODE)")
    p.add_argument("--save-till", type=_iso, help="storage period end, ISO 8601 with offset")
    p.add_argument("--emk-record-id", help="the MIS record id, kept with the publication")
    p.add_argument("--service-title", help="title shown on the patient's page")
    p.add_argument("--wait-timeout", type=float, default=3600, help="seconds to wait for a run already under way")

    sub.add_parser("migrate", help="create or upgrade the database schema")
    sub.add_parser("receiver", help="run the Storage SCP (C-MOVE destination) in the foreground")
    d = sub.add_parser("deid-profile", help="print what the anonymiser does to each attribute")
    d.add_argument("--format", choices=["table", "json"], default="table")
    sub.add_parser("echo", help="C-ECHO the PACS with the configured AE titles")
    w = sub.add_parser("worker", help="run publications: the Storage SCP and the served 'publish' deployment")
    from deployments.worker import add_arguments as add_worker_arguments

    add_worker_arguments(w)
    a = sub.add_parser("api", help="serve the API and the patient's link pages (uvicorn)")
    a.add_argument("--host", help="listen address (default: STUDYPUB_API__HOST)")
    a.add_argument("--port", type=int, help="port (default: STUDYPUB_API__PORT)")
    k = sub.add_parser("create-api-key", help="create an MIS client's API key; prints it once")
    k.add_argument("--name", required=True, help="a name for the client, e.g. the MIS's name")
    k.add_argument(
        "--clinic", help="the clinic code(s) the key may publish for, comma-separated (default: every clinic)"
    )
    u = sub.add_parser(
        "create-user", help="create a dashboard user (the first administrator, say); asks for the password"
    )
    u.add_argument("--username", required=True)
    u.add_argument("--role", choices=["administrator", "registrator", "superadmin"], default="registrator")
    u.add_argument("--clinic", help="the user's clinic code (default: STUDYPUB_DEFAULT_CLINIC_CODE)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from standard input (for scripts)")
    b = sub.add_parser("backup", help="dump the app's database (and Prefect's) into a folder, keeping the newest N")
    b.add_argument("--out", required=True, type=Path, help="folder for the dump files")
    b.add_argument("--keep", type=int, default=48, help="dumps kept per database (default 48: two days hourly)")
    b.add_argument(
        "--prefect-database-url",
        default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
        help="Prefect's database too (default: PREFECT_API_DATABASE_CONNECTION_URL, when it is set)",
    )
    r2 = sub.add_parser("restore", help="load a dump into the app's database (or the one given) and migrate it")
    r2.add_argument("file", type=Path)
    target = r2.add_mutually_exclusive_group()
    target.add_argument("--database-url", help="another database (then not migrated)")
    target.add_argument(
        "--prefect", action="store_true", help="into Prefect's database (PREFECT_API_DATABASE_CONNECTION_URL)"
    )
    tls = sub.add_parser(
        "tls-cert", help="write a self-signed certificate for the reverse proxy unless one is there (first start)"
    )
    tls.add_argument("--dir", required=True, type=Path, help="folder for tls.crt and tls.key")
    tls.add_argument("--host", action="append", default=[], help="a host name or address it is for (repeat)")
    rk = sub.add_parser("revoke-api-key", help="revoke an MIS client's API key")
    rk.add_argument("--name", required=True)
    sub.add_parser("list-api-keys", help="list the MIS clients' API keys (names and hints, never the keys)")
    rv = sub.add_parser("revoke", help="withdraw a publication's link: delete its archive (the link answers 410)")
    rv.add_argument("task_id")
    sub.add_parser("retention", help="run the retention flow once, now (it also runs on its schedule)")
    from deployments.clinic_cli import add_arguments as add_clinic_arguments

    add_clinic_arguments(sub)
    r = sub.add_parser("run", help="run the service on this machine (Prefect server, demo PACS, worker, API)")
    from deployments.run import add_arguments

    add_arguments(r)
    return parser


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError as PydanticValidationError

    from studypub.settings import get_settings

    try:
        return get_settings()
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UsageError(f"invalid configuration: {where}: {first.get('msg')}") from exc


def cmd_publish(args: argparse.Namespace, out: IO[str]) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from studypub.clinics import clinic_context
    from studypub.db import get_sessionmaker, migrate
    from studypub.dicom.receiver import port_is_free, start_receiver
    from studypub.errors import ConfigurationError, PublicationError, ValidationError
    from studypub.models import TaskStatus
    from studypub.publications import (
        PublicationRequest,
        fail,
        fail_unstarted,
        get_task,
        request_publication,
        result_view,
    )
    from studypub.storage import open_storage

    settings = _settings()
    try:
        open_storage(settings)  # configuration check only: the upload step creates the bucket when missing
    except ConfigurationError as exc:
        raise UsageError(exc.reason) from exc
    try:
        migrate(settings)
    except SQLAlchemyError as exc:
        raise UsageError(f"the database is unreachable or unusable ({type(exc).__name__})") from None
    sessions = get_sessionmaker(settings)
    with sessions() as session:
        try:
            clinic = clinic_context(session, settings, args.clinic or settings.default_clinic_code)
            task, _created = request_publication(
                session,
                clinic.settings,
                PublicationRequest(
                    patient_id=args.patient_id,
                    accession_number=args.accession,
                    clinic_code=args.clinic or settings.default_clinic_code,
                    source="cli",
                    save_till=args.save_till,
                    emk_record_id=args.emk_record_id,
                    service_title=args.service_title,
                ),
            )
        except ValidationError as exc:
            raise UsageError(exc.reason) from exc
        task_id = task.id

    def current() -> Any:
        with sessions() as session:
            return get_task(session, task_id)

    def held_elsewhere(task: Any) -> bool:  # another live run works on it (a crashed run's lease expires)
        return bool(
            task.status == TaskStatus.RUNNING and task.lease_until and task.lease_until.timestamp() > time.time()
        )

    task = current()
    deadline = time.monotonic() + args.wait_timeout
    while held_elsewhere(task) and time.monotonic() < deadline:
        time.sleep(1)
        task = current()
    if task.status != TaskStatus.COMPLETED:
        from flows.publish import publish_study

        server = None
        if settings.pacs.retrieve_method == "move" and port_is_free(settings.pacs.scp_bind, settings.pacs.scp_port):
            server = start_receiver(settings)
        try:
            _prefect_reachable()
            publish_study(task_id)
            # A study not (yet) in the PACS: look again on the watchdog's schedule while this command waits.
            while (task := current()).waiting_for == "study" and time.monotonic() < deadline:
                due = task.next_attempt_at.timestamp() - time.time() if task.next_attempt_at else 0
                time.sleep(max(0.0, min(due, deadline - time.monotonic())))
                publish_study(task_id)
        except Exception as exc:
            # The flow records its own failures on the task. One that never started (Prefect unreachable, ...)
            # is recorded here, so the reason is visible; the exception type only (no message: no PHI).
            reason = (
                f"the publication run could not start or finish ({type(exc).__name__}); "
                "check that the Prefect API (PREFECT_API_URL) is reachable"
            )
            with sessions() as session:
                task = get_task(session, task_id)
                if task.status == TaskStatus.RUNNING:
                    fail(session, settings, task_id, PublicationError(reason))
                elif task.status == TaskStatus.QUEUED and task.waiting_for is None:
                    fail_unstarted(session, task_id, task.flow_run_id, reason)
        finally:
            if server is not None:
                linger_while_others_retrieve(settings, args.wait_timeout)
                server.shutdown()
    with sessions() as session:
        task = get_task(session, task_id)
        view = result_view(session, settings, task)
    _emit(out, {k: v for k, v in view.items() if k not in ("progress", "save_till")})
    return EXIT_OK if task.status == TaskStatus.COMPLETED else EXIT_FAILED


def _prefect_reachable() -> None:
    """Fail early, naming the network error, when the Prefect API cannot be reached."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def linger_while_others_retrieve(settings: Any, timeout: float) -> None:
    """Other `studypub publish` processes found the port taken and rely on this one's receiver: keep it up
    while they still retrieve (registrations older than the DIMSE timeout were left by crashed runs)."""
    from studypub.dicom.receiver import registry_for

    registry = registry_for(settings)
    deadline = time.monotonic() + timeout
    while registry.active(settings.pacs.dimse_timeout) and time.monotonic() < deadline:
        time.sleep(0.5)


def cmd_migrate(_args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.db import migrate

    settings = _settings()
    migrate(settings)
    _emit(out, {"status": "ok", "database": settings.database_url_resolved.split("@")[-1]})
    return EXIT_OK


def cmd_receiver(_args: argparse.Namespace, _out: IO[str]) -> int:
    from studypub.dicom.receiver import start_receiver

    start_receiver(_settings(), block=True)
    return EXIT_OK


def cmd_echo(_args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.dicom.scu import echo
    from studypub.errors import PacsUnavailable

    try:
        echo(_settings())
    except PacsUnavailable as exc:
        _emit(out, {"status": "FAILED", "reason": exc.reason})
        return EXIT_FAILED
    _emit(out, {"status": "ok"})
    return EXIT_OK


def cmd_deid_profile(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.deid.engine import PROFILE_VERSION, Profile

    rows = Profile.load().describe()
    if args.format == "json":
        _emit(out, {"profile_version": PROFILE_VERSION, "rules": rows})
    else:
        out.write(f"# {PROFILE_VERSION}\n")
        for row in rows:
            out.write("\t".join(str(v) for v in row.values()) + "\n")
        out.flush()
    return EXIT_OK


def cmd_run(args: argparse.Namespace, _out: IO[str]) -> int:
    from deployments.run import serve_forever

    return serve_forever(args, _settings())


def cmd_worker(args: argparse.Namespace, _out: IO[str]) -> int:
    from deployments.worker import serve_publications

    serve_publications(_settings(), limit=args.limit)
    return EXIT_OK


def cmd_api(args: argparse.Namespace, _out: IO[str]) -> int:
    from deployments.api import serve_api

    serve_api(_settings(), host=args.host, port=args.port)
    return EXIT_OK


def _admin_actor() -> str:
    return f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or 'admin'}"


def cmd_create_api_key(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.apikeys import create_key
    from studypub.db import get_sessionmaker, migrate
    from studypub.errors import StudyPubError

    settings = _settings()
    migrate(settings)
    with get_sessionmaker(settings)() as session:
        try:
            codes = [c for c in (args.clinic or "").split(",") if c.strip()]
            row, key = create_key(session, args.name, clinic_code=None, clinic_codes=codes, actor=_admin_actor())
        except StudyPubError as exc:
            _emit(out, {"status": "FAILED", "reason": exc.reason})
            return EXIT_FAILED
        _emit(out, {"status": "ok", "name": row.name, "clinic_codes": row.clinic_codes, "api_key": key})
    print("Give this key to the MIS (header X-API-Key). It is shown only now.", file=sys.stderr)
    return EXIT_OK


def cmd_create_user(args: argparse.Namespace, out: IO[str]) -> int:
    import getpass

    from studypub.db import get_sessionmaker, migrate
    from studypub.errors import StudyPubError
    from studypub.users import create_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            _emit(out, {"status": "FAILED", "reason": "the passwords differ"})
            return EXIT_FAILED
    settings = _settings()
    migrate(settings)
    with get_sessionmaker(settings)() as session:
        try:
            user = create_user(
                session, settings, args.username, password, args.role, actor=_admin_actor(), clinic_code=args.clinic
            )
        except StudyPubError as exc:
            _emit(out, {"status": "FAILED", "reason": exc.reason})
            return EXIT_FAILED
        _emit(out, {"status": "ok", "username": user.username, "role": user.role})
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.backup import backup
    from studypub.errors import StudyPubError

    settings = _settings()
    databases = {"studypub": settings.database_url_resolved}
    if args.prefect_database_url:
        databases["prefect"] = args.prefect_database_url
    try:
        written = backup(databases, args.out, keep=args.keep)
    except StudyPubError as exc:
        _emit(out, {"status": "FAILED", "reason": exc.reason})
        return EXIT_FAILED
    _emit(out, {"status": "ok", "files": [str(p) for p in written]})
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.backup import restore
    from studypub.db import migrate
    from studypub.errors import StudyPubError

    settings = _settings()
    if args.prefect:
        args.database_url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or ""
    if args.database_url is not None and not args.database_url.strip():
        # An unset shell variable must not silently mean "the app's database" (pg_restore --clean replaces it).
        _emit(out, {"status": "FAILED", "reason": "the target database URL is empty"})
        return EXIT_FAILED
    target = args.database_url or settings.database_url_resolved
    try:
        restore(args.file, target)
        if target == settings.database_url_resolved:
            migrate(settings)  # a dump of an older version comes up to this version's schema
    except StudyPubError as exc:
        _emit(out, {"status": "FAILED", "reason": exc.reason})
        return EXIT_FAILED
    _emit(out, {"status": "ok", "restored": str(args.file)})
    return EXIT_OK


def cmd_tls_cert(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.tls import self_signed

    written = self_signed(args.dir, args.host)
    _emit(out, {"status": "ok", "written": written, "dir": str(args.dir)})
    return EXIT_OK


def cmd_revoke_api_key(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.apikeys import revoke_key
    from studypub.db import get_sessionmaker
    from studypub.errors import StudyPubError

    with get_sessionmaker(_settings())() as session:
        try:
            row = revoke_key(session, args.name, actor=_admin_actor())
        except StudyPubError as exc:
            _emit(out, {"status": "FAILED", "reason": exc.reason})
            return EXIT_FAILED
        revoked = row.revoked_at.isoformat() if row.revoked_at else None
        _emit(out, {"status": "ok", "name": row.name, "revoked_at": revoked})
    return EXIT_OK


def cmd_list_api_keys(_args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.apikeys import list_keys
    from studypub.db import get_sessionmaker

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    with get_sessionmaker(_settings())() as session:
        keys = [
            {
                "name": k.name,
                "clinic_code": k.clinic_code,
                "clinic_codes": k.clinic_codes,
                "hint": k.key_hint + "…",
                "created_at": iso(k.created_at),
                "last_used_at": iso(k.last_used_at),
                "revoked_at": iso(k.revoked_at),
            }
            for k in list_keys(session)
        ]
    _emit(out, {"status": "ok", "keys": keys})
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace, out: IO[str]) -> int:
    from studypub.db import get_sessionmaker
    from studypub.errors import StudyPubError
    from studypub.publications import revoke

    settings = _settings()
    with get_sessionmaker(settings)() as session:
        try:
            task = revoke(session, settings, args.task_id, actor=_admin_actor())
        except StudyPubError as exc:
            _emit(out, {"task_id": args.task_id, "status": "FAILED", "reason": exc.reason})
            return EXIT_FAILED
        _emit(out, {"task_id": task.id, "status": task.status})
    return EXIT_OK


def cmd_retention(_args: argparse.Namespace, out: IO[str]) -> int:
    from flows.retention import retention
    from studypub.retention import RetentionIncomplete

    _settings()
    try:
        report = retention()
    except RetentionIncomplete as exc:
        _emit(out, {"status": "FAILED", "reason": exc.reason, "report": exc.report})
        return EXIT_FAILED
    _emit(out, {"status": "ok", "report": report})
    return EXIT_OK


from deployments.clinic_cli import cmd_clinic  # noqa: E402

COMMANDS = {
    "api": cmd_api,
    "create-api-key": cmd_create_api_key,
    "create-user": cmd_create_user,
    "tls-cert": cmd_tls_cert,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "revoke-api-key": cmd_revoke_api_key,
    "list-api-keys": cmd_list_api_keys,
    "revoke": cmd_revoke,
    "retention": cmd_retention,
    "run": cmd_run,
    "worker": cmd_worker,
    "publish": cmd_publish,
    "migrate": cmd_migrate,
    "receiver": cmd_receiver,
    "echo": cmd_echo,
    "deid-profile": cmd_deid_profile,
    "clinic": cmd_clinic,
}


# Commands whose stdout is one JSON result; the others talk to a person.
JSON_COMMANDS = {
    "publish",
    "migrate",
    "echo",
    "deid-profile",
    "create-api-key",
    "create-user",
    "tls-cert",
    "backup",
    "restore",
    "revoke-api-key",
    "list-api-keys",
    "revoke",
    "retention",
    "clinic",
}


def main(argv: list[str] | None = None) -> int:
    configure_env()
    argv = sys.argv[1:] if argv is None else argv
    out = _stdout_for_result() if (argv[:1] and argv[0] in JSON_COMMANDS) else sys.stdout
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args, out)
    except UsageError as exc:
        _emit(out, {"task_id": None, "status": "FAILED", "step": None, "reason": str(exc)})
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
