"""Builders of hostile DICOM files for the de-identification tests (generated with pydicom, no fixtures).

Every identifying value carries a marker that the tests look for in the output bytes:
- text markers start with ``ZQX`` (so ``b"zqx" not in output.lower()`` proves none survived),
- UIDs start with ``ORIG_ROOT`` (no original UID may survive),
- dates are unique per attribute, between 1931 and 1934 (none may survive).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from studypub.deid.profile import CSV_PATH

ORIG_ROOT = "1.2.826.0.1.3680043.10.999."
MARKER = b"zqx"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
STUDY_UID = ORIG_ROOT + "1"
SERIES_UID = ORIG_ROOT + "2"
FRAME_OF_REFERENCE_UID = ORIG_ROOT + "3"
UNKNOWN_PUBLIC_TAG = 0x00AA0001  # even group, not in any dictionary
RETIRED_UNLISTED_TAG = 0x00080041  # Data Set Subtype (retired LO), not in Table E.1-1


def csv_rows() -> list[dict[str, str]]:
    with open(CSV_PATH, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def exact_table_tags() -> Iterator[tuple[int, str, str]]:
    """(tag, VR, table action) of every exact CSV row that can live in a dataset (not command/file meta).
    Rows newer than pydicom's dictionary are written as LO: the engine must remove them as unknown."""
    for row in csv_rows():
        if "x" in row["group"] + row["element"]:
            continue
        tag = int(row["group"] + row["element"], 16)
        if tag >> 16 in (0x0000, 0x0002):
            continue
        vr = dictionary_VR(tag).split(" or ")[0] if dictionary_has_tag(tag) else "LO"
        yield tag, vr, row["action"]


def marker_text(i: int) -> str:
    return f"ZQX{i:04d}"


def marker_date(i: int) -> str:
    return (dt.date(1931, 1, 1) + dt.timedelta(days=i)).strftime("%Y%m%d")


def marker_uid(i: int) -> str:
    return f"{ORIG_ROOT}{1000 + i}"


def marker_value(i: int, vr: str) -> Any:
    text = marker_text(i)
    values: dict[str, Any] = {
        "AE": text,
        "AS": f"{i % 1000:03d}Y",
        "CS": text,
        "DA": marker_date(i),
        "DT": marker_date(i) + "101010",
        "TM": f"{(i // 3600) % 24:02d}{(i // 60) % 60:02d}{i % 60:02d}",
        "LO": text,
        "LT": text + " free text",
        "SH": text,
        "ST": text + " short text",
        "UC": text,
        "UT": text + " unlimited text",
        "UR": f"http://{text.lower()}.example/",
        "PN": f"{text}FAM^{text}GIV",
        "UI": marker_uid(i),
        "IS": str(i),
        "DS": f"{i}.5",
        "US": i % 65536,
        "SS": i % 30000,
        "UL": i,
        "SL": i,
        "FL": float(i),
        "FD": float(i),
        "SV": i,
        "UV": i,
        "AT": 0x00100010,
        "OB": text.encode() + b"\x00",
        "OW": text.encode() + b"\x00",
        "OF": text.encode() + b"\x00",
        "OD": text.encode(),
        "OL": text.encode() + b"\x00",
        "OV": text.encode(),
        "UN": text.encode() + b"\x00",
    }
    return values[vr]


def _item(i: int) -> Dataset:
    item = Dataset()
    item.PatientName = f"ZQXSQ{i:04d}^NESTED"
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = ORIG_ROOT + f"5{i:04d}"
    return item


def base_dataset(
    sop_instance_uid: str,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = CTImageStorage,
    rows: int = 8,
    frames: int = 1,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(ORIG_ROOT + "9")
    meta.SourceApplicationEntityTitle = "ZQXSOURCEAE"
    meta.SendingApplicationEntityTitle = "ZQXSENDAE"
    meta.ReceivingApplicationEntityTitle = "ZQXRECVAE"
    meta.PrivateInformationCreatorUID = UID(ORIG_ROOT + "8")
    meta.PrivateInformation = b"ZQXPRIVATEINFO"
    ds = FileDataset("hostile", {}, file_meta=meta, preamble=b"ZQXPREAMBLE".ljust(128, b"\x00"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.BodyPartExamined = "HEAD"
    ds.PatientName = "ZQXPATIENT^ZQXGIVEN"
    ds.PatientID = "ZQXPID0001"
    ds.PatientBirthDate = "19330303"
    ds.AccessionNumber = "ZQXACSN01"
    ds.StudyDate = "19330304"
    ds.StudyTime = "101010"
    ds.StudyDescription = "ZQXSTUDYDESC"
    ds.ImageComments = "ZQXIMAGECOMMENT for patient"
    ds.InstitutionName = "ZQXINSTITUTION"
    ds.SeriesNumber = "3"
    ds.InstanceNumber = "7"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = str(frames)
    ds.PixelData = bytes((i * 7) % 251 for i in range(rows * rows * 2 * frames))
    return ds


def add_every_table_attribute(ds: Dataset) -> dict[int, str]:
    """Identity in every exact Table E.1-1 attribute pydicom can create. Returns {tag: table action}."""
    added: dict[int, str] = {}
    for i, (tag, vr, action) in enumerate(exact_table_tags()):
        if tag in (0x00080018, 0x0020000D, 0x0020000E):  # SOP Instance / Study / Series UIDs set by base
            continue
        if vr == "SQ":
            ds[tag] = DataElement(tag, "SQ", [_item(i)])
        else:
            ds[tag] = DataElement(tag, vr, marker_value(i, vr))
        added[tag] = action
    return added


def add_nested_identity(ds: Dataset) -> None:
    """Identity three levels deep, in kept, D, X and X/Z sequences."""
    code = Dataset()
    code.CodeValue = "121071"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Finding"
    level3 = Dataset()
    level3.ValueType = "TEXT"
    level3.RelationshipType = "CONTAINS"
    level3.ConceptNameCodeSequence = [code]
    level3.TextValue = "ZQXLEVEL3TEXT Dr Smith"
    level3.PersonName = "ZQXLEVEL3PN^X"
    level3.DateTime = "19330305101010"
    level3.UID = ORIG_ROOT + "31"
    level3.Manufacturer = "ZQXLEVEL3FREETEXT"  # not in the table: free text inside a D sequence
    level2 = Dataset()
    level2.ReferencedSOPClassUID = CTImageStorage
    level2.ReferencedSOPInstanceUID = ORIG_ROOT + "21"
    level2.OperatorsName = "ZQXLEVEL2OP^X"
    level2.ContentSequence = [level3]
    level1 = Dataset()
    level1.SeriesInstanceUID = ORIG_ROOT + "11"
    level1.PatientName = "ZQXLEVEL1PN^X"
    level1.ReferencedInstanceSequence = [level2]
    ds.ReferencedSeriesSequence = [level1]

    request = Dataset()
    request.RequestedProcedureID = "ZQXREQPROC"
    request.ScheduledProcedureStepDescription = "ZQXSPSDESC"
    request.StudyInstanceUID = STUDY_UID
    ds.RequestAttributesSequence = [request]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = ORIG_ROOT + "41"
    ds.ReferencedStudySequence = [study_ref]

    person = Dataset()
    person.CodeValue = "ZQXEMPLOYEE42"
    person.CodingSchemeDesignator = "ZQXHOSPITAL"
    person.CodeMeaning = "ZQXOPERATOR NAME"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = [person]
    operator.InstitutionName = "ZQXOPINST"
    ds.OperatorIdentificationSequence = [operator]


def add_private(ds: Dataset) -> None:
    block = ds.private_block(0x0009, "ZQX PRIVATE CREATOR", create=True)
    block.add_new(0x01, "LO", "ZQXPRIVATE1")
    block.add_new(0x02, "OB", b"ZQXPRIVATEOB")
    nested = Dataset()
    nested.PatientName = "ZQXPRIVNESTED"
    block.add_new(0x03, "SQ", [nested])
    ds.add_new(0x00111001, "LO", "ZQXNOCREATOR")  # private element without a private creator
    item = ds.ReferencedSeriesSequence[0] if "ReferencedSeriesSequence" in ds else None
    if item is not None:
        item.add_new(0x00191010, "LO", "ZQXPRIVATEINITEM")


def add_overlays_and_curves(ds: Dataset) -> None:
    for group in (0x6000, 0x6002):
        ds.add_new((group << 16) | 0x0010, "US", 8)
        ds.add_new((group << 16) | 0x0011, "US", 8)
        ds.add_new((group << 16) | 0x0022, "LO", "ZQXOVERLAYDESC")
        ds.add_new((group << 16) | 0x0040, "CS", "G")
        ds.add_new((group << 16) | 0x0050, "SS", [1, 1])
        ds.add_new((group << 16) | 0x0100, "US", 1)
        ds.add_new((group << 16) | 0x0102, "US", 0)
        ds.add_new((group << 16) | 0x1500, "LO", "ZQXOVERLAYLABEL")
        ds.add_new((group << 16) | 0x3000, "OW", b"ZQXOVERLAYBITS\x00\x00")
        ds.add_new((group << 16) | 0x4000, "LT", "ZQXOVERLAYCOMMENT")
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50000010, "US", 2)
    ds.add_new(0x50000020, "CS", "POLY")
    ds.add_new(0x50000022, "LO", "ZQXCURVEDESC")
    ds.add_new(0x50002500, "LO", "ZQXCURVELABEL")
    ds.add_new(0x50003000, "OB", b"ZQXCURVEDATA")


def add_fail_closed_extras(ds: Dataset) -> None:
    ds.add_new(UNKNOWN_PUBLIC_TAG, "LO", "ZQXUNKNOWNPUBLIC")
    ds.add_new(RETIRED_UNLISTED_TAG, "LO", "ZQXRETIRED")


def hostile_dataset(sop_instance_uid: str = ORIG_ROOT + "100", **kwargs: Any) -> tuple[FileDataset, dict[int, str]]:
    ds = base_dataset(sop_instance_uid, **kwargs)
    added = add_every_table_attribute(ds)
    # the base values win over the generic markers for the attributes tests look at specifically
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    add_nested_identity(ds)
    add_private(ds)
    add_overlays_and_curves(ds)
    add_fail_closed_extras(ds)
    return ds, added


def write(ds: FileDataset, path: Path, *, implicit: bool = False) -> Path:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def pdf_dataset(sop_instance_uid: str) -> FileDataset:
    ds = base_dataset(sop_instance_uid, sop_class=EncapsulatedPDFStorage)
    for kw in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        delattr(ds, kw)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "ZQXDOCTITLE"
    ds.EncapsulatedDocument = b"%PDF-1.4\n% ZQXPDFPATIENTNAME\n%%EOF\n"
    ds.EncapsulatedDocumentLength = len(ds.EncapsulatedDocument)
    return ds


def walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element at any depth (pydicom's iterall, file meta first)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta.iterall()
    yield from ds.iterall()
