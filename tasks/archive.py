"""Step 4, zip: the anonymised instances into a ZIP with a DICOMDIR and a short note in the five interface
languages (:mod:`studypub.notes`), written as the instances arrive.

The ZIP is written strictly sequentially (data descriptors, no seeking back), so the upload step can stream
it while it grows. Entry names are the File-set's File IDs (PT000000/ST000000/SE000000/IM000000), assigned by
position when an instance arrives and never changed; they carry no PHI. The DICOMDIR comes last
(studypub.dicomdir: pydicom's record definitions, linear time).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
import zipfile
from typing import IO, Any

from prefect import task
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from studypub.dicomdir import DicomDirBuilder
from studypub.errors import PublicationError
from studypub.fhir.manifest import Manifest
from studypub.i18n import N_
from studypub.logs import details, get_logger
from studypub.models import Step
from studypub.notes import archive_note
from studypub.publications import save_checkpoint
from studypub.settings import Settings
from studypub.spool import WorkPaths, clear_done, follow_files, mark_done, read_done
from studypub.viewer.index import Entry, build_index, instance_metadata, save_index
from tasks.common import TASK_DEFAULTS, step_context

log = get_logger("tasks.archive")

CHUNK = 1024 * 1024
ZIP64_THRESHOLD = 1 << 30
NOTE_NAME = "README.txt"

# Type 1 in DICOMDIR records; the profile may leave them empty in the instances. Dummy values are used in the
# directory records only (never identifying).
_RECORD_DUMMIES = {
    "PatientID": "ANONYMOUS",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
}


class AppendOnlyWriter(io.RawIOBase):
    """Presents a file to zipfile as an unseekable stream (so it writes sequentially) and hashes it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._pos = 0
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._fh.write(data)
        self.sha256.update(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._fh.flush()


def _fill_record_dummies(ds: Dataset) -> Dataset:
    for keyword, dummy in _RECORD_DUMMIES.items():
        if not str(ds.get(keyword) or "").strip():
            setattr(ds, keyword, dummy)
    if ds.get("SeriesNumber") in (None, ""):
        ds.SeriesNumber = 1
    if ds.get("InstanceNumber") in (None, ""):
        ds.InstanceNumber = 1
    return ds


def build_archive(
    settings: Settings, paths: WorkPaths, viewer: list[tuple[Entry, dict[str, Any]]] | None = None
) -> dict[str, Any]:
    """Write ``paths.archive`` from ``paths.clean`` as files arrive; returns size, sha256 and counts.
    ``viewer`` receives each instance's entry position and viewer attributes (studypub.viewer.index)."""
    method = zipfile.ZIP_DEFLATED if settings.archive.compression == "deflate" else zipfile.ZIP_STORED
    level = settings.archive.compress_level if method == zipfile.ZIP_DEFLATED else None
    dicomdir = DicomDirBuilder()
    entries: dict[str, str] = {}  # SOPInstanceUID (new, anonymised) -> entry name
    modalities: set[str] = set()
    series: set[str] = set()
    extra = 0
    manifest = Manifest()
    started = time.monotonic()
    paths.archive.unlink(missing_ok=True)
    with paths.archive.open("wb") as raw:
        writer = AppendOnlyWriter(raw)
        with zipfile.ZipFile(writer, "w", compression=method, compresslevel=level) as zf:
            for src in follow_files(paths.clean, paths, "clean"):
                ds = dcmread(src, stop_before_pixels=True)
                meta = instance_metadata(ds)  # before the directory's dummies
                _fill_record_dummies(ds)
                try:
                    name = dicomdir.add(ds)
                except (KeyError, ValueError, AttributeError):
                    # No directory record type fits this instance: keep it, outside the File-set.
                    extra += 1
                    name = f"EXTRA/IM{extra:06d}"
                entries[str(ds.SOPInstanceUID)] = name
                manifest.add(ds)
                modalities.add(str(ds.get("Modality") or "OT"))
                series.add(str(ds.get("SeriesInstanceUID") or ""))
                size = src.stat().st_size
                # Entries named by string take the archive's compression level (a ZipInfo would not).
                with src.open("rb") as fin, zf.open(name, "w", force_zip64=size > ZIP64_THRESHOLD) as fout:
                    shutil.copyfileobj(fin, fout, CHUNK)
                if viewer is not None:
                    viewer.append((Entry.from_zipinfo(zf.filelist[-1]), meta))
            if not entries:
                raise PublicationError(N_("no anonymised instance to archive"))
            clean_done = read_done(paths, "clean") or {}
            withheld = int(clean_done.get("withheld", 0))
            with zf.open("DICOMDIR", "w") as fout:
                dicomdir.write(fout, generate_uid())
            note = archive_note(
                instances=len(entries),
                series=len(series),
                withheld=withheld,
                withheld_reasons=clean_done.get("withheld_reasons") or {},
                first_locale=settings.links.default_language,
                dates=str(clean_done.get("dates") or "remove"),
                burned_in_text=clean_done.get("burned_in_text"),
            )
            zf.writestr(NOTE_NAME, note.encode("utf-8"))
        raw.flush()
    return {
        "size_bytes": writer.tell(),
        "sha256": writer.sha256.hexdigest(),
        "instances": len(entries),
        "withheld": withheld,
        "series": len(series),
        "modalities": sorted(modalities),
        "seconds": round(time.monotonic() - started, 3),
        "manifest": manifest.as_dict(),  # new UIDs only (FHIR ImagingStudy)
    }


@task(name="zip", retries=0, **TASK_DEFAULTS)
def archive(task_id: str) -> int:
    """Local work: a failure is final for this run (a re-run resumes from here). Returns the archive size."""
    with step_context(task_id) as ctx:
        done = read_done(ctx.paths, "archive")
        if done is not None and ctx.paths.archive.exists():
            return int(done["size_bytes"])
        clear_done(ctx.paths, "archive")
        viewer: list[tuple[Entry, dict[str, Any]]] = []
        result = build_archive(ctx.settings, ctx.paths, viewer)
        assert ctx.task.object_key
        save_index(ctx.session, task_id, ctx.task.object_key, build_index(viewer))  # committed with the checkpoint
        save_checkpoint(ctx.session, task_id, Step.ZIP, result)
        mark_done(ctx.paths, "archive", result)
        log.info(
            "Archive written",
            extra=details(
                task_id=task_id,
                acsn=ctx.task.accession_number,
                size=result["size_bytes"],
                instances=result["instances"],
                seconds=result["seconds"],
            ),
        )
        return int(result["size_bytes"])
