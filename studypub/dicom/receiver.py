"""The Storage SCP that the PACS sends C-MOVE results to, and the C-STORE handler shared with C-GET.

One process listens on the service's AE port. Each retrieval registers its study in the work dir
(``receiving/<routing key>``, a key derived from the StudyInstanceUID with the service secret, so no
identifier appears in a file name); the receiver files each incoming instance into the spool of the
publication that registered its study, and refuses instances nobody asked for. Instances are written as
received (no decoding), atomically (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from studypub.dicom.contexts import storage_scp_contexts
from studypub.logs import get_logger
from studypub.settings import Settings
from studypub.spool import WorkPaths

log = get_logger("dicom.receiver")

STATUS_SUCCESS = 0x0000
STATUS_NOT_AUTHORISED = 0x0124  # refused: an instance of a study no publication is retrieving
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STUDY_INSTANCE_UID = 0x0020000D


def routing_key(secret: bytes, study_uid: str) -> str:
    return hmac.new(secret, b"study:" + study_uid.encode(), hashlib.sha256).hexdigest()[:40]


def instance_file_name(secret: bytes, sop_instance_uid: str) -> str:
    return hmac.new(secret, b"sop:" + sop_instance_uid.encode(), hashlib.sha256).hexdigest()[:40] + ".dcm"


def write_instance(event: Event, dest_dir: Path, secret: bytes, encoded: bytes | None = None) -> Path:
    """Write a received instance, as sent (Part-10: preamble, file meta, dataset), into ``dest_dir`` under a
    name that carries no identifier."""
    sop_uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[union-attr]
    final = dest_dir / instance_file_name(secret, sop_uid)
    tmp = final.with_suffix(f".{os.getpid()}.{id(event)}.part")
    with tmp.open("wb") as fh:
        fh.write(encoded if encoded is not None else event.encoded_dataset())
    tmp.replace(final)
    return final


@dataclass
class Registry:
    """Study → spool folder registrations, shared through the work dir by every process on the machine.

    One folder per study (``receiving/<routing key>/``), one file per publication retrieving it, so two
    publications of the same study (two clinics, or a republication) each get every instance.
    """

    root: Path
    secret: bytes

    def __post_init__(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _dir(self, study_uid: str) -> Path:
        return self.root / routing_key(self.secret, study_uid)

    def register(self, study_uid: str, dest_dir: Path, owner: str, aes: list[str] | None = None) -> None:
        """``aes``: the AE titles allowed to store this publication's instances (its clinic's PACS)."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        folder = self._dir(study_uid)
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{owner}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"dir": str(dest_dir), "aes": aes}))
        tmp.replace(folder / f"{owner}.json")

    def unregister(self, study_uid: str, owner: str) -> None:
        folder = self._dir(study_uid)
        (folder / f"{owner}.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another publication still retrieves this study
            folder.rmdir()

    def lookup(self, study_uid: str, calling_ae: str | None = None) -> list[Path]:
        """The spools of the publications retrieving ``study_uid``; with ``calling_ae``, only those whose
        clinic's PACS is that AE (one clinic's PACS cannot fill another clinic's publication)."""
        dirs = []
        for entry in sorted(self._dir(study_uid).glob("*.json")):
            try:
                data = json.loads(entry.read_text())
                aes = data.get("aes")
                if calling_ae is not None and aes is not None and calling_ae not in aes:
                    continue
                dirs.append(Path(data["dir"]))
            except (FileNotFoundError, ValueError, KeyError, AttributeError):
                continue
        return dirs

    def active(self, max_age_seconds: float) -> int:
        """Registrations younger than ``max_age_seconds`` (older ones were left by a crashed run)."""
        now = time.time()
        return sum(1 for p in self.root.glob("*/*.json") if now - p.stat().st_mtime < max_age_seconds)


def study_uid_of(encoded: bytes) -> str | None:
    """The StudyInstanceUID of a Part-10 encoded instance (its file meta names the transfer syntax, so
    deflated and big-endian data sets parse too)."""
    ds = dcmread(BytesIO(encoded), stop_before_pixels=True, specific_tags=[STUDY_INSTANCE_UID])
    value = ds.get("StudyInstanceUID")
    return str(value) if value else None


def make_store_handler(registry: Registry) -> Callable[[Event], int]:
    def handle_store(event: Event) -> int:
        try:
            encoded = event.encoded_dataset()
            study_uid = study_uid_of(encoded)
        except Exception:
            log.warning("Refused an instance that could not be parsed")
            return STATUS_CANNOT_UNDERSTAND
        # A publication that was aborted (failed, cancelled) takes nothing more: its raw folder is being removed.
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        dests = [
            d
            for d in (registry.lookup(study_uid, calling_ae) if study_uid else [])
            if not WorkPaths(d.parent).abort_marker.exists()
        ]
        if not dests:
            log.warning("Refused an instance of a study that no publication is retrieving")
            return STATUS_NOT_AUTHORISED
        try:
            first = write_instance(event, dests[0], registry.secret, encoded)
            for other in dests[1:]:
                target = other / first.name
                with contextlib.suppress(FileExistsError):
                    os.link(first, target)
        except OSError:
            log.exception("Could not write a received instance")
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    return handle_store


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.pacs.calling_ae)
    ae.maximum_pdu_size = settings.pacs.max_pdu
    ae.acse_timeout = settings.pacs.acse_timeout
    ae.dimse_timeout = settings.pacs.dimse_timeout
    ae.network_timeout = settings.pacs.network_timeout
    ae.connection_timeout = settings.pacs.acse_timeout  # TCP connect: a PACS that drops packets fails in time
    return ae


def registry_for(settings: Settings) -> Registry:
    return Registry(settings.work_dir / "receiving", settings.secret_bytes())


_aes_cache: dict[int, tuple[float, list[str]]] = {}
AES_CACHE_SECONDS = 5.0


def storing_aes(settings: Settings) -> list[str]:
    """Every AE title allowed to store to us: each clinic's PACS (``pacs.store_from_aes``, else its called
    AE), and the environment's. Re-read at most every few seconds."""
    now = time.monotonic()
    hit = _aes_cache.get(id(settings))
    if hit is not None and now - hit[0] < AES_CACHE_SECONDS:
        return hit[1]
    found = set(settings.pacs.store_from_aes or [settings.pacs.called_ae])
    try:
        from studypub.clinics import clinic_context, list_clinics
        from studypub.db import get_sessionmaker

        with get_sessionmaker(settings)() as session:
            for clinic in list_clinics(session):
                if clinic.disabled:
                    continue
                pacs = clinic_context(session, settings, clinic.code).settings.pacs
                found.update(pacs.store_from_aes or [pacs.called_ae])
    except Exception as exc:  # the database is down: the last answer (or the environment's) stands
        log.warning("Could not read the clinics' PACS", extra={"details": {"error": type(exc).__name__}})
        return hit[1] if hit else sorted(found)
    _aes_cache[id(settings)] = (now, sorted(found))
    return sorted(found)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_receiver(settings: Settings, *, block: bool = False):  # type: ignore[no-untyped-def]
    """Start the Storage SCP on ``pacs.scp_bind:pacs.scp_port``. Returns the server (non-blocking mode)."""
    ae = make_ae(settings)
    ae.supported_contexts = storage_scp_contexts()
    ae.add_supported_context(Verification)
    # Only the clinics' PACS may store to us (by AE title; C-MOVE sub-operations come from them), each only
    # into its own clinic's publications (the registrations say whose). Clinics added later are let in too.
    ae.require_calling_aet = storing_aes(settings)

    def refresh(_event: Event) -> None:
        ae.require_calling_aet = storing_aes(settings)

    handlers = [(evt.EVT_C_STORE, make_store_handler(registry_for(settings))), (evt.EVT_CONN_OPEN, refresh)]
    log.info(
        "Storage SCP listening",
        extra={"details": {"ae": settings.pacs.calling_ae, "port": settings.pacs.scp_port}},
    )
    return ae.start_server((settings.pacs.scp_bind, settings.pacs.scp_port), block=block, evt_handlers=handlers)
