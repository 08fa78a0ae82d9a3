"""DICOM Query/Retrieve as a client: C-ECHO, C-FIND (study and image level), C-MOVE and C-GET.

Status codes are mapped through ``pynetdicom.status``; nothing identifying is logged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from studypub.dicom.contexts import get_contexts
from studypub.dicom.receiver import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, make_ae, write_instance
from studypub.errors import Aborted, PacsUnavailable, PublicationError
from studypub.i18n import N_
from studypub.logs import get_logger
from studypub.settings import Settings

log = get_logger("dicom.scu")

ProgressFn = Callable[[int, int | None], None]  # (completed, expected)
StopFn = Callable[[], bool]  # True once the retrieval must stop (the publication was aborted)
STOP_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class StudyMatch:
    study_instance_uid: str
    patient_id: str
    study_date: str | None
    modalities: list[str]
    instances: int | None
    series: int | None
    sop_classes: list[str] = field(default_factory=list)
    study_time: str | None = None
    patient_birth_date: str | None = None  # DA; only ever hashed (a link's second factor), never stored


@dataclass(frozen=True)
class RetrieveResult:
    status: int
    category: str
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        return self.category == "Success" and self.failed == 0


@contextmanager
def associate(settings: Settings, contexts: list, *, roles: list | None = None, handlers=None) -> Iterator[Association]:  # type: ignore[no-untyped-def]
    ae = make_ae(settings)
    ae.requested_contexts = contexts
    p = settings.pacs
    assoc = ae.associate(p.host, p.port, ae_title=p.called_ae, ext_neg=roles or None, evt_handlers=handlers or None)
    if not assoc.is_established:
        where = {"host": p.host, "port": p.port, "ae": p.called_ae}
        if assoc.is_rejected:
            raise PacsUnavailable(N_("The PACS at %(host)s:%(port)s (%(ae)s) rejected the association", **where))
        raise PacsUnavailable(N_("The PACS at %(host)s:%(port)s (%(ae)s) is unreachable", **where))
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:  # stopped mid-operation (aborted, cancelled): no polite release
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


def _check_status(status: Dataset | None, what: str) -> tuple[int, str]:
    if status is None or "Status" not in status:
        raise PacsUnavailable(N_("The PACS did not answer the %(what)s (connection lost or timed out)", what=what))
    code = int(status.Status)
    return code, code_to_category(code)


def echo(settings: Settings) -> None:
    from pynetdicom import build_context

    with associate(settings, [build_context(Verification)]) as assoc:
        code, category = _check_status(assoc.send_c_echo(), "C-ECHO")
        if category != "Success":
            raise PacsUnavailable(N_("C-ECHO answered %(status)s", status=f"0x{code:04X} ({category})"))


def _find(assoc: Association, query: Dataset) -> list[Dataset]:
    results: list[Dataset] = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code, category = _check_status(status, "C-FIND")
        if category == "Pending":
            if identifier is not None:
                results.append(identifier)
        elif category == "Success":
            break
        elif (code & 0xFF00) == 0xA700:  # out of resources: a busy PACS, worth another try
            raise PacsUnavailable(
                N_("The PACS is out of resources for the query: status %(status)s", status=f"0x{code:04X}")
            )
        else:
            raise PublicationError(
                N_("The PACS refused the query: status %(status)s", status=f"0x{code:04X} ({category})")
            )
    return results


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def find_studies(settings: Settings, accession_number: str) -> list[StudyMatch]:
    """C-FIND at STUDY level by AccessionNumber; SOP classes from an IMAGE-level query when not returned."""
    from pynetdicom import build_context

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = accession_number
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientBirthDate",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries",
        "SOPClassesInStudy",
    ):
        setattr(query, keyword, "")
    with associate(settings, [build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
        matches = []
        for ds in _find(assoc, query):
            study_uid = _str(ds, "StudyInstanceUID")
            if not study_uid:
                continue
            modalities = ds.get("ModalitiesInStudy") or []
            if isinstance(modalities, str):
                modalities = [modalities]
            sop_classes = ds.get("SOPClassesInStudy") or []
            if isinstance(sop_classes, str):
                sop_classes = [sop_classes]
            matches.append(
                StudyMatch(
                    study_instance_uid=study_uid,
                    patient_id=_str(ds, "PatientID") or "",
                    study_date=_str(ds, "StudyDate"),
                    study_time=_str(ds, "StudyTime"),
                    modalities=[str(m) for m in modalities if m],
                    instances=_int(ds, "NumberOfStudyRelatedInstances"),
                    series=_int(ds, "NumberOfStudyRelatedSeries"),
                    sop_classes=[str(c) for c in sop_classes if c],
                    patient_birth_date=_str(ds, "PatientBirthDate"),
                )
            )
        return matches


def study_sop_classes(settings: Settings, study_uid: str) -> tuple[list[str], int]:
    """The SOP classes in a study and its instance count, from an IMAGE-level C-FIND."""
    from pynetdicom import build_context

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    query.SOPClassUID = ""
    with associate(settings, [build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
        # IMAGE level in the study root model needs the series too: query series first.
        series_q = Dataset()
        series_q.QueryRetrieveLevel = "SERIES"
        series_q.StudyInstanceUID = study_uid
        series_q.SeriesInstanceUID = ""
        classes: set[str] = set()
        count = 0
        for series in _find(assoc, series_q):
            query.SeriesInstanceUID = series.SeriesInstanceUID
            for ds in _find(assoc, query):
                count += 1
                if ds.get("SOPClassUID"):
                    classes.add(str(ds.SOPClassUID))
        return sorted(classes), count


@contextmanager
def _stoppable(assoc: Association, should_stop: StopFn | None) -> Iterator[threading.Event]:
    """While the body waits for the PACS's next response (which may take up to ``pacs.dimse_timeout``: a large
    instance, a stalled PACS), a watcher aborts the association as soon as ``should_stop()`` says so; the
    event it yields tells that it did."""
    fired, done = threading.Event(), threading.Event()
    if should_stop is None:
        yield fired
        return

    def watch() -> None:
        while not done.wait(STOP_POLL_SECONDS):
            if should_stop():
                fired.set()
                if assoc.is_established:
                    assoc.abort()
                # The response loop blocks on the DIMSE message queue for up to the DIMSE timeout, and an
                # abort puts nothing there: wake it as a lost connection does ((None, None): no response).
                assoc.dimse.msg_queue.put((None, None))
                return

    watcher = threading.Thread(target=watch, name="retrieve-stop", daemon=True)
    watcher.start()
    try:
        yield fired
    finally:
        done.set()
        watcher.join(timeout=5)


def _consume_stoppable(
    assoc: Association, responses, what: str, progress: ProgressFn | None, expected: int | None, stop: StopFn | None
) -> RetrieveResult:  # type: ignore[no-untyped-def]
    with _stoppable(assoc, stop) as fired:
        try:
            result = _consume(responses, what, progress, expected)
        except PacsUnavailable:
            if fired.is_set():
                raise Aborted(N_("stopped because another step of this publication failed")) from None
            raise
    if fired.is_set():
        raise Aborted(N_("stopped because another step of this publication failed"))
    return result


def _retrieve_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _consume(responses, what: str, progress: ProgressFn | None, expected: int | None) -> RetrieveResult:  # type: ignore[no-untyped-def]
    completed = failed = warning = 0
    code, category = 0xFFFF, "Pending"
    for status, _identifier in responses:
        code, category = _check_status(status, what)
        completed = int(status.get("NumberOfCompletedSuboperations", completed) or 0)
        failed = int(status.get("NumberOfFailedSuboperations", failed) or 0)
        warning = int(status.get("NumberOfWarningSuboperations", warning) or 0)
        if category == "Pending":
            remaining = status.get("NumberOfRemainingSuboperations")
            total = completed + failed + warning + int(remaining) if remaining is not None else expected
            if progress:
                progress(completed + warning, total)
            continue
        break
    return RetrieveResult(code, category, completed, failed, warning)


def move_study(
    settings: Settings,
    study_uid: str,
    *,
    progress: ProgressFn | None = None,
    expected: int | None = None,
    stop: StopFn | None = None,
) -> RetrieveResult:
    """C-MOVE the study to our own AE (the Storage SCP must be listening and the study registered). Once
    ``stop()`` is true the association is aborted and :class:`Aborted` raised, within a fraction of a second."""
    from pynetdicom import build_context

    with associate(settings, [build_context(StudyRootQueryRetrieveInformationModelMove)]) as assoc:
        responses = assoc.send_c_move(
            _retrieve_identifier(study_uid),
            settings.pacs.calling_ae,
            StudyRootQueryRetrieveInformationModelMove,
        )
        return _consume_stoppable(assoc, responses, "C-MOVE", progress, expected, stop)


def get_study(
    settings: Settings,
    study_uid: str,
    sop_classes: list[str],
    dest_dir: Path,
    *,
    progress: ProgressFn | None = None,
    expected: int | None = None,
    stop: StopFn | None = None,
) -> RetrieveResult:
    """C-GET the study on one association; instances arrive on it and are written into ``dest_dir``. Stops
    like :func:`move_study`."""
    secret = settings.secret_bytes()
    dest_dir.mkdir(parents=True, exist_ok=True)

    def handle_store(event: evt.Event) -> int:
        try:
            write_instance(event, dest_dir, secret)
        except OSError:
            log.exception("Could not write a received instance")
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    contexts, roles = get_contexts(sop_classes)
    with associate(settings, contexts, roles=roles, handlers=[(evt.EVT_C_STORE, handle_store)]) as assoc:
        responses = assoc.send_c_get(_retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet)
        return _consume_stoppable(assoc, responses, "C-GET", progress, expected, stop)
