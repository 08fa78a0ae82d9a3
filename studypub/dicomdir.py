"""A DICOMDIR for a File-set built in arrival order, in linear time.

pydicom's ``FileSet.add`` compares each new record with its siblings (O(n) per add, O(n²) per series:
~10 ms per instance at 300 instances, growing), which a 2,000-slice CT cannot afford while it streams. This
builder keeps pydicom's own directory-record definitions (``pydicom.fileset.DIRECTORY_RECORDERS``), its
record-type mapping and its encoder; what it adds is the record tree kept in dictionaries and the offsets
between records (PS3.3 F.3, PS3.10 8). File IDs are positional (PT000000/ST000000/SE000000/IM000000), like
pydicom's, so an instance's name is known the moment it is added and never changes. The result reads back
with ``pydicom.fileset.FileSet``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage

try:  # pydicom's mapping from an instance to its fourth-level record type (IMAGE, SR DOCUMENT, ENCAP DOC...)
    from pydicom.fileset import _four_level_record_type as _record_type
except ImportError:  # pragma: no cover - a future pydicom; every image still gets an IMAGE record

    def _record_type(ds: Dataset) -> str:
        return "IMAGE"


_PREFIX = {"PATIENT": "PT", "STUDY": "ST", "SERIES": "SE"}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_HEADER = b"\x04\x00\x20\x12SQ\x00\x00\xff\xff\xff\xff"  # (0004,1220) DirectoryRecordSequence, undefined length


@dataclass
class _Node:
    record: Dataset
    children: dict[str, _Node] = field(default_factory=dict)


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


# What a concept-modifier content item may carry in an SR/KO record (PS3.3 F.5: the record's Content Sequence
# holds only the root's HAS CONCEPT MOD items, which modify the document title).
_CONCEPT_MODIFIER_KEYWORDS = (
    "RelationshipType",
    "ValueType",
    "ConceptNameCodeSequence",
    "ConceptCodeSequence",
    "TextValue",
)


def _title_modifiers(content: Sequence) -> list[Dataset]:
    """The root's HAS CONCEPT MOD items, each with only what a concept modifier carries (no nested content,
    no references outside the record): pydicom's recorders copy the whole Content Sequence."""
    out = []
    for item in content:
        if str(item.get("RelationshipType", "")).strip() != "HAS CONCEPT MOD":
            continue
        modifier = Dataset()
        for keyword in _CONCEPT_MODIFIER_KEYWORDS:
            if keyword in item:
                setattr(modifier, keyword, item.get(keyword))
        out.append(modifier)
    return out


def _verification_datetime(ds: Dataset) -> str:
    """An SR's verification time (Type 1C in its record when VERIFIED), which the document keeps per verifying
    observer, not at the top level where pydicom's recorder looks."""
    observers = ds.get("VerifyingObserverSequence") or []
    times = [str(item.get("VerificationDateTime") or "") for item in observers]
    return max((t for t in times if t), default="19000101000000")


def _record(record_type: str, ds: Dataset) -> Dataset:
    record = DIRECTORY_RECORDERS[record_type](ds)
    if str(record.get("VerificationFlag", "")).strip() == "VERIFIED" and not record.get("VerificationDateTime"):
        record.VerificationDateTime = _verification_datetime(ds)
    if "ContentSequence" in record:
        modifiers = _title_modifiers(record.ContentSequence)
        if modifiers:
            record.ContentSequence = modifiers
        else:
            del record.ContentSequence
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    return record


class DicomDirBuilder:
    def __init__(self, file_set_id: str = "") -> None:
        self.file_set_id = file_set_id
        self._patients: dict[str, _Node] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, ds: Dataset) -> str:
        """Add an instance (its header is enough) and return its File ID, '/'-separated.

        Raises KeyError/ValueError (from pydicom's record definitions) when the instance lacks what its
        directory records require; nothing is added then.
        """
        path: list[str] = []
        siblings = self._patients
        pending: list[tuple[dict[str, _Node], str, _Node]] = []
        for record_type, key in (
            ("PATIENT", str(ds.PatientID)),
            ("STUDY", str(ds.StudyInstanceUID)),
            ("SERIES", str(ds.SeriesInstanceUID)),
        ):
            node = siblings.get(key)
            if node is None:
                node = _Node(_record(record_type, ds))
                pending.append((siblings, key, node))
                index = len(siblings)
            else:
                index = list(siblings).index(key)
            path.append(f"{_PREFIX[record_type]}{index:06d}")
            siblings = node.children
        leaf = _record(_record_type(ds), ds)
        path.append(f"IM{len(siblings):06d}")
        leaf.ReferencedFileID = path
        leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
        leaf.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
        leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
        # Every record was built: now attach them (a failure above added nothing).
        for parent, key, node in pending:
            parent[key] = node
        siblings[str(ds.SOPInstanceUID)] = _Node(leaf)
        self._count += 1
        return "/".join(path)

    def write(self, fp: IO[bytes], media_instance_uid: str) -> None:
        """Encode the DICOMDIR: records in depth-first order, each pointing at its next sibling and its
        first child by byte offset from the start of the file."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        meta.MediaStorageSOPInstanceUID = UID(media_instance_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        head = BytesIO()
        head.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(head, meta, enforce_standard=True)  # type: ignore[arg-type]

        ordered: list[tuple[_Node, _Node | None]] = []  # (node, its next sibling), depth-first

        def walk(nodes: dict[str, _Node]) -> None:
            group = list(nodes.values())
            for index, node in enumerate(group):
                ordered.append((node, group[index + 1] if index + 1 < len(group) else None))
                walk(node.children)

        walk(self._patients)
        sizes = [len(_encode(node.record)) + 8 for node, _ in ordered]  # offsets are fixed-size UL

        def top(first: int, last: int) -> bytes:
            ds = Dataset()
            ds.FileSetID = self.file_set_id
            ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
            ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
            ds.FileSetConsistencyFlag = 0
            return _encode(ds)

        start = len(head.getvalue()) + len(top(0, 0)) + len(_SEQ_HEADER)
        offset_of: dict[int, int] = {}
        position = start
        for (node, _), size in zip(ordered, sizes, strict=True):
            offset_of[id(node)] = position
            position += size
        for node, nxt in ordered:
            node.record.OffsetOfTheNextDirectoryRecord = offset_of[id(nxt)] if nxt else 0
            first_child = next(iter(node.children.values()), None)
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = offset_of[id(first_child)] if first_child else 0
        roots = list(self._patients.values())
        fp.write(head.getvalue())
        fp.write(top(offset_of[id(roots[0])] if roots else 0, offset_of[id(roots[-1])] if roots else 0))
        fp.write(_SEQ_HEADER)
        for node, _ in ordered:
            body = _encode(node.record)
            fp.write(_ITEM + struct.pack("<I", len(body)) + body)
        fp.write(_SEQ_DELIMITER)
