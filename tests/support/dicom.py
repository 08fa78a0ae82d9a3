"""pynetdicom helpers for tests: a Storage SCP that counts what it receives, C-FIND and C-MOVE."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.support.net import LOOPBACK, free_port

__all__ = ["MoveResult", "Received", "StorageSCP", "c_echo", "c_find_studies", "c_move_study"]


_PREFERRED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
]


@dataclass
class Received:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    calling_aet: str
    size: int


class StorageSCP:
    """A pynetdicom Storage SCP on ``127.0.0.1:port`` (free port when not given) accepting every storage
    SOP class in every transfer syntax pynetdicom knows; keeps what it received in memory (metadata only).

    pynetdicom, as acceptor, picks for each proposed context the first syntax of *its own* list that the
    peer proposed, so ``transfer_syntaxes`` is a preference order (default: explicit LE, implicit LE,
    then the rest). A sender that offers one context per SOP class with [compressed, uncompressed]
    (dcmqrscp) will then have to decompress; put the compressed syntax first to receive it as stored.
    """

    def __init__(
        self,
        aet: str = "STUDYPUB",
        port: int | None = None,
        host: str = LOOPBACK,
        transfer_syntaxes: Iterable[str] | None = None,
    ) -> None:
        self.transfer_syntaxes = list(transfer_syntaxes or _PREFERRED)
        self.aet = aet
        self.host = host
        self.port = port or free_port()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        raw = getattr(event.request, "DataSet", None)
        item = Received(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_aet=str(event.assoc.requestor.ae_title),
            size=len(raw.getvalue()) if raw is not None else 0,
        )
        with self._lock:
            self.received.append(item)
        return 0x0000

    def start(self) -> StorageSCP:
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, self.transfer_syntaxes)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def for_study(self, study_instance_uid: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.study_instance_uid == study_instance_uid]

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _associate(host: str, port: int, called_aet: str, calling_aet: str, contexts: Iterable[Any]) -> Any:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_aet}@{host}:{port} was not established")
    return assoc


def c_echo(host: str, port: int, called_aet: str, calling_aet: str = "STUDYPUB") -> int:
    assoc = _associate(host, port, called_aet, calling_aet, [Verification])
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def c_find_studies(host: str, port: int, called_aet: str, calling_aet: str = "STUDYPUB", **keys: str) -> list[Dataset]:
    """Study-level C-FIND (Study Root); ``keys`` are matching keys, e.g. ``AccessionNumber=...``.
    Returns the matches (each with StudyInstanceUID, PatientID, AccessionNumber, ...)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for kw in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "StudyDate",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(query, kw, "")
    for kw, value in keys.items():
        setattr(query, kw, value)
    assoc = _associate(host, port, called_aet, calling_aet, [StudyRootQueryRetrieveInformationModelFind])
    matches: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                raise ConnectionError("C-FIND: no response (association aborted or timed out)")
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                matches.append(identifier)
            elif status.Status != 0x0000:
                raise RuntimeError(f"C-FIND failed with status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return matches


@dataclass
class MoveResult:
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    statuses: list[int] = field(default_factory=list)


def c_move_study(
    host: str,
    port: int,
    called_aet: str,
    study_instance_uid: str,
    move_destination: str,
    calling_aet: str = "STUDYPUB",
) -> MoveResult:
    """Study-level C-MOVE (Study Root) to ``move_destination``; returns the final status and counters."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    assoc = _associate(host, port, called_aet, calling_aet, [StudyRootQueryRetrieveInformationModelMove])
    result = MoveResult(status=-1)
    try:
        for status, _identifier in assoc.send_c_move(
            query, move_destination, StudyRootQueryRetrieveInformationModelMove
        ):
            if status is None or "Status" not in status:
                raise ConnectionError("C-MOVE: no response (association aborted or timed out)")
            result.statuses.append(int(status.Status))
            result.status = int(status.Status)
            result.completed = int(status.get("NumberOfCompletedSuboperations", result.completed) or 0)
            result.failed = int(status.get("NumberOfFailedSuboperations", result.failed) or 0)
            result.warning = int(status.get("NumberOfWarningSuboperations", result.warning) or 0)
    finally:
        assoc.release()
    return result
