"""``python -m studypub.demo``: make the demo studies, load them into a PACS, and print what to publish.

    python -m studypub.demo generate DIR                   # write the demo studies under DIR
    python -m studypub.demo upload --orthanc-url URL       # ... and POST them to a running Orthanc
    python -m studypub.demo serve --work-dir DIR \\
        --peer STUDYPUB=STUDYPUB@127.0.0.1:11113           # a private Orthanc with the demo loaded

The printed table has only the synthetic patient IDs and accession numbers (what the publish form asks
for), never names or other identifying values.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from studypub.demo.orthanc import OrthancClient, OrthancServer
from studypub.demo.studies import GeneratedStudy, demo_studies, generate_study

__all__ = ["describe", "generate_demo", "load_demo", "main"]


def generate_demo(out_dir: Path) -> list[GeneratedStudy]:
    """Generate every :func:`demo_studies` spec under ``out_dir/<patient_id>/``."""
    return [generate_study(Path(out_dir) / spec.patient_id, spec) for spec in demo_studies()]


def load_demo(pacs: OrthancClient, out_dir: Path) -> list[GeneratedStudy]:
    """Generate the demo studies and upload them to ``pacs``."""
    studies = generate_demo(out_dir)
    for study in studies:
        pacs.upload(study.paths)
    return studies


def describe(studies: Sequence[GeneratedStudy]) -> str:
    """A plain-text table: patient ID, accession number, modality, series, instances, size."""
    rows = [("PATIENT ID", "ACCESSION", "MODALITY", "SERIES", "INSTANCES", "MB", "DESCRIPTION")]
    for s in studies:
        rows.append(
            (
                s.patient_id,
                s.accession_number,
                s.spec.modality,
                str(len(s.series_instance_uids)),
                str(s.instance_count),
                f"{s.total_bytes / 1e6:.1f}",
                s.spec.study_description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows)


def _peer(text: str) -> tuple[str, tuple[str, str, int]]:
    try:
        name, rest = text.split("=", 1)
        aet, hostport = rest.split("@", 1)
        host, port = hostport.rsplit(":", 1)
        return name, (aet, host, int(port))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected NAME=AET@HOST:PORT, not {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studypub.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the demo studies as DICOM files")
    gen.add_argument("out_dir", type=Path)
    up = sub.add_parser("upload", help="generate and upload the demo studies to a running Orthanc")
    up.add_argument("--orthanc-url", default=os.environ.get("STUDYPUB_DEMO_ORTHANC_URL", "http://127.0.0.1:8042"))
    up.add_argument("--user", default=os.environ.get("STUDYPUB_DEMO_ORTHANC_USER"))
    up.add_argument("--password", default=os.environ.get("STUDYPUB_DEMO_ORTHANC_PASSWORD"))
    up.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    up.add_argument("--wait", type=float, default=60.0, help="seconds to wait for Orthanc to answer")
    srv = sub.add_parser("serve", help="run a private Orthanc with the demo studies until interrupted")
    srv.add_argument("--work-dir", type=Path, required=True)
    srv.add_argument("--aet", default="ORTHANC")
    srv.add_argument("--dicom-port", type=int, default=None)
    srv.add_argument("--http-port", type=int, default=None)
    srv.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        help="a C-MOVE destination, NAME=AET@HOST:PORT (repeatable)",
    )
    args = parser.parse_args(argv)

    if args.command == "generate":
        print(describe(generate_demo(args.out_dir)))
        return 0
    if args.command == "upload":
        creds = (args.user, args.password) if args.user and args.password else None
        client = OrthancClient(args.orthanc_url, creds)
        client.wait_ready(args.wait)
        with tempfile.TemporaryDirectory(prefix="studypub-demo-") as tmp:
            studies = load_demo(client, args.dir or Path(tmp))
            print(describe(studies))
        return 0

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OrthancServer(
        args.work_dir / "orthanc",
        aet=args.aet,
        dicom_port=args.dicom_port,
        http_port=args.http_port,
        modalities=dict(args.peer),
    ) as pacs:
        studies = load_demo(pacs, args.work_dir / "studies")
        print(f"Orthanc {pacs.aet} DICOM 127.0.0.1:{pacs.dicom_port}  HTTP {pacs.url}  log {pacs.log_path}")
        print(describe(studies), flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
