"""The viewer index of an archive: for each anonymised instance in the ZIP, where its entry lies (offset,
compressed size, method) and the attributes a viewer needs to lay it out (OHIF's DICOM JSON metadata: UIDs,
geometry, pixel description, window). Built from the headers the zip step reads anyway, so it costs the
publication nothing; it holds only what the anonymised instances hold, and only instances that are in the
archive (a withheld one never is).

Stored as one row per archive object (``viewer_indexes``): a republication writes its own row under its new
object key, and the link switches to it when the publication row does, atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zipfile import ZipInfo

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from studypub.models import ViewerIndex

INDEX_VERSION = 1

# Attributes a viewer may show or needs to place and render an image. Identity was removed by the
# anonymiser before the zip step; this list is a second filter, not the first.
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription")
SERIES_KEYWORDS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SeriesDate", "SeriesTime")
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PixelAspectRatio",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SliceLocation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "FrameTime",
    "CineRate",
    "RecommendedDisplayFrameRate",
    "LossyImageCompression",
)
KEYWORDS = STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS


def _plain(value: Any) -> Any:
    """A JSON value for a DICOM element value (numbers stay numbers, multi-values become lists)."""
    if isinstance(value, MultiValue | list | tuple):
        items = [_plain(v) for v in value]
        return [v for v in items if v is not None]
    if isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, PersonName):
        return str(value)
    return str(value)


def instance_metadata(ds: Dataset) -> dict[str, Any]:
    """The viewer's attributes of one instance (keyword → plain value), plus its transfer syntax."""
    meta: dict[str, Any] = {}
    for keyword in KEYWORDS:
        elem = ds.get(keyword)
        if elem is None or elem == "":
            continue
        value = _plain(elem)
        if value is None or value == "" or value == []:
            continue
        meta[keyword] = value
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax:
        meta["TransferSyntaxUID"] = str(syntax)
    return meta


@dataclass(frozen=True)
class Entry:
    """Where an instance lies in the ZIP: its local header's offset, the compressed and plain sizes, the
    compression method (0 stored, 8 deflated) and the length of the entry name (the local header's extra
    field is read at serving time: it can differ from the central directory's)."""

    offset: int
    compressed: int
    size: int
    method: int
    name_length: int

    def to_list(self) -> list[int]:
        return [self.offset, self.compressed, self.size, self.method, self.name_length]

    @classmethod
    def from_list(cls, values: list[int]) -> Entry:
        offset, compressed, size, method, name_length = (int(v) for v in values)
        return cls(offset, compressed, size, method, name_length)

    @classmethod
    def from_zipinfo(cls, info: ZipInfo) -> Entry:
        return cls(
            offset=info.header_offset,
            compressed=info.compress_size,
            size=info.file_size,
            method=info.compress_type,
            name_length=len(info.filename.encode("utf-8")),
        )


def build_index(instances: Iterable[tuple[Entry, dict[str, Any]]]) -> dict[str, Any]:
    """The stored form: ``{"version", "instances": [{"zip": [...], "meta": {...}}, ...]}`` in archive order."""
    return {
        "version": INDEX_VERSION,
        "instances": [{"zip": entry.to_list(), "meta": meta} for entry, meta in instances],
    }


def save_index(session: Session, task_id: str, object_key: str, data: dict[str, Any]) -> None:
    """Record (or replace, for a zip step run again) the index of the archive at ``object_key``. Not
    committed: the caller commits it with the step's checkpoint."""
    session.execute(delete(ViewerIndex).where(ViewerIndex.object_key == object_key))
    session.add(ViewerIndex(object_key=object_key, task_id=task_id, data=data))
    session.flush()


def load_index(session: Session, object_key: str) -> dict[str, Any] | None:
    data = session.scalar(select(ViewerIndex.data).where(ViewerIndex.object_key == object_key))
    return dict(data) if data is not None else None


def has_index(session: Session, object_key: str) -> bool:
    return session.scalar(select(ViewerIndex.object_key).where(ViewerIndex.object_key == object_key)) is not None


def forget_index(session: Session, object_key: str) -> None:
    """The archive at ``object_key`` is deleted (or replaced): its index goes too. Not committed."""
    session.execute(delete(ViewerIndex).where(ViewerIndex.object_key == object_key))


def forget_task_indexes(session: Session, task_id: str, *, keep: str | None = None) -> None:
    """Every index of a publication (but ``keep``'s): its archives are deleted. Not committed."""
    query = delete(ViewerIndex).where(ViewerIndex.task_id == task_id)
    if keep is not None:
        query = query.where(ViewerIndex.object_key != keep)
    session.execute(query)
