"""Synthetic but realistic DICOM studies for the demo PACS, the tests and the benchmark.

Nothing is downloaded: pixel data is a numpy phantom (ellipses, gradients, speckle, noise) so that
compression behaves as on real images, and every identifying value written into a file is reported in
:attr:`GeneratedStudy.identifying_values`, so that a test can scan an anonymised output for leaks.

Compressed transfer syntaxes are produced with dcmtk's command-line encoders (``dcmcjpeg``,
``dcmcjpls``, ``dcmcrle``; ``dcmconv`` for big endian), pydicom's JPEG 2000 encoder (pylibjpeg-openjpeg) and
OpenJPH's ``ojph_compress`` for HTJ2K (Debian ``openjph-tools``; OpenJPEG only decodes HTJ2K); see
:func:`transfer_syntax_unavailable_reason` to skip a test cleanly when an encoder is missing.

Layout on disk: ``out_dir/S{series_number:03d}/I{instance_number:05d}.dcm``. Use one ``out_dir`` per study.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

__all__ = [
    "TRANSFER_SYNTAXES",
    "GeneratedInstance",
    "GeneratedStudy",
    "SeriesSpec",
    "StudySpec",
    "TransferSyntaxUnavailable",
    "ct_study_spec",
    "demo_studies",
    "find_leaks",
    "generate_study",
    "resolve_transfer_syntax",
    "transfer_syntax_unavailable_reason",
]

# --------------------------------------------------------------------------------------------------
# Transfer syntaxes
# --------------------------------------------------------------------------------------------------

#: Short names accepted in :attr:`SeriesSpec.transfer_syntax` (a UID string is accepted too).
TRANSFER_SYNTAXES: dict[str, UID] = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "htj2k": HTJ2KLossless,
    "rle": RLELossless,
    "big-endian": ExplicitVRBigEndian,  # retired, still sent by old modalities
}

_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
# dcmtk encoders: transfer syntax -> command line (input and output paths are appended).
_DCMTK_ENCODERS: dict[UID, list[str]] = {
    JPEGBaseline8Bit: ["dcmcjpeg", "+eb", "+q", "90", "+un"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1", "+un"],
    JPEGLSLossless: ["dcmcjpls", "+el", "+un"],
    RLELossless: ["dcmcrle", "+un"],
    ExplicitVRBigEndian: ["dcmconv", "+tb"],
}
HTJ2K_ENCODER = "ojph_compress"


class TransferSyntaxUnavailable(RuntimeError):
    """The encoder needed for a transfer syntax is not installed."""


def resolve_transfer_syntax(name_or_uid: str) -> UID:
    """Return the UID for a short name from :data:`TRANSFER_SYNTAXES` or a UID string."""
    key = name_or_uid.strip().lower()
    if key in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[key]
    if key.replace(".", "").isdigit() and UID(key) in TRANSFER_SYNTAXES.values():
        return UID(key)
    raise ValueError(f"unsupported transfer syntax {name_or_uid!r}; use one of {sorted(TRANSFER_SYNTAXES)}")


def transfer_syntax_unavailable_reason(name_or_uid: str) -> str | None:
    """``None`` when files can be written in this transfer syntax here, else a human-readable reason."""
    uid = resolve_transfer_syntax(name_or_uid)
    if uid in _NATIVE:
        return None
    if uid in _DCMTK_ENCODERS:
        tool = _DCMTK_ENCODERS[uid][0]
        if shutil.which(tool) is None:
            return f"{uid.name} needs dcmtk's {tool} on PATH (Debian package 'dcmtk')"
        return None
    if uid == JPEG2000Lossless:
        try:
            from pydicom.pixels.encoders import JPEG2000LosslessEncoder
        except ImportError:  # pragma: no cover - pydicom < 3
            return "JPEG 2000 encoding needs pydicom >= 3"
        if not JPEG2000LosslessEncoder.is_available:
            return "JPEG 2000 encoding needs pylibjpeg and pylibjpeg-openjpeg in the environment"
        return None
    if uid == HTJ2KLossless:
        if shutil.which(HTJ2K_ENCODER) is None:
            return f"HTJ2K encoding needs OpenJPH's {HTJ2K_ENCODER} on PATH (Debian package 'openjph-tools')"
        return None
    return f"no encoder for {uid.name}"  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# Specs and results
# --------------------------------------------------------------------------------------------------


@dataclass
class SeriesSpec:
    """One series of images. ``modality`` defaults to the study's."""

    images: int = 1
    rows: int = 256
    cols: int = 256
    modality: str | None = None
    bits: int | None = None  # 8 or 16; default by modality (16 for CT/MR/DX/CR, 8 otherwise)
    frames: int = 1  # > 1 makes multi-frame instances (US, XA, SC/OT and other non-cross-sectional)
    transfer_syntax: str = "explicit"  # a key of TRANSFER_SYNTAXES or a transfer syntax UID
    description: str | None = None
    color: bool = False  # RGB (US, SC, OT and other secondary-capture modalities only)
    burned_in_annotation: bool | None = None  # None: the study's flag
    body_part: str | None = None
    slice_thickness: float = 2.5  # mm, CT/MR spacing between slices
    pixel_spacing: float | None = None  # mm; default from the field of view (CT/MR) or 0.2 (projection)


@dataclass
class StudySpec:
    """A study to generate. Strings are written as given (PN uses ``FAMILY^GIVEN``)."""

    patient_id: str
    accession_number: str
    patient_name: str = "DOE^JANE"
    patient_birth_date: str = "19700101"
    patient_sex: str = "F"
    study_date: str = "20250201"
    study_time: str = "161802"
    study_description: str = "Synthetic study"
    modality: str = "CT"
    service_title: str = ""  # the MIS's title of the service (what `studypub run`'s curl sends), in Russian
    series: list[SeriesSpec] = field(default_factory=lambda: [SeriesSpec()])
    include_pdf: bool = False  # add an Encapsulated PDF report (its own DOC series)
    burned_in_annotation: bool = False  # draw patient name/ID into the pixels, BurnedInAnnotation=YES
    phi_rich: bool = False  # identifying values everywhere a hostile real file might have them
    study_instance_uid: str | None = None  # default: derived from the seed
    seed: int | str | None = None  # default: derived from patient_id + accession_number
    referring_physician: str = "PETROV^IVAN^SERGEEVICH"
    institution_name: str = "Khimki Central Clinic"
    study_id: str | None = None


@dataclass
class GeneratedInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    frames: int
    #: (top, left, bottom, right) pixel box of burned-in text, or None.
    burned_in_box: tuple[int, int, int, int] | None = None


@dataclass
class GeneratedStudy:
    spec: StudySpec
    out_dir: Path
    study_instance_uid: str
    instances: list[GeneratedInstance]
    series_instance_uids: list[str]
    #: Every identifying string written (names, IDs, addresses, phones, dates, times, descriptions,
    #: private values, PDF text), as written, at least 6 characters long (shorter values such as sex or
    #: age are left out so byte scans do not match by chance). UIDs are in ``identifying_uids``; text
    #: burned into pixels is only in ``identifying_by_keyword["pixels"]`` (see ``burned_in_box``).
    identifying_values: set[str]
    #: The same values grouped by where they were put (attribute keyword, "private", "pdf", "pixels").
    identifying_by_keyword: dict[str, set[str]]
    #: Original Study/Series/SOP Instance and Frame of Reference UIDs.
    identifying_uids: set[str]

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def instance_count(self) -> int:
        return len(self.instances)

    @property
    def total_bytes(self) -> int:
        return sum(i.path.stat().st_size for i in self.instances)

    @property
    def patient_id(self) -> str:
        return self.spec.patient_id

    def leaks(self, paths: Iterable[Path], include_uids: bool = False) -> dict[Path, set[str]]:
        """Which of this study's identifying values (and UIDs if asked) occur in ``paths``."""
        values = set(self.identifying_values) | (self.identifying_uids if include_uids else set())
        return find_leaks(paths, values)

    @property
    def accession_number(self) -> str:
        return self.spec.accession_number


def _searchable_bytes(path: Path) -> bytes:
    """The file's bytes; a deflated data set is inflated first so that nothing hides in it."""
    data = Path(path).read_bytes()
    if DeflatedExplicitVRLittleEndian.encode() in data[:1024]:
        import zlib

        # The data set follows the file meta group: find its end from the group length element.
        pos = data.find(b"\x02\x00\x00\x00UL\x04\x00")
        if data[128:132] == b"DICM" and pos == 132:
            end = 144 + int.from_bytes(data[140:144], "little")
            with contextlib.suppress(zlib.error):
                return data[:end] + zlib.decompress(data[end:], -zlib.MAX_WBITS)
    return data


def find_leaks(paths: Iterable[Path], values: Iterable[str]) -> dict[Path, set[str]]:
    """Scan files byte-wise (UTF-8) for any of ``values``; returns ``{path: values found}`` (only hits)."""
    needles = {v: v.encode("utf-8") for v in values if v}
    found: dict[Path, set[str]] = {}
    for path in paths:
        data = _searchable_bytes(Path(path))
        hits = {v for v, b in needles.items() if b in data}
        if hits:
            found[Path(path)] = hits
    return found


# --------------------------------------------------------------------------------------------------
# SOP classes per modality
# --------------------------------------------------------------------------------------------------

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME_IMAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")
XA_IMAGE = UID("1.2.840.10008.5.1.4.1.1.12.1")
SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MF_SC_GRAY_BYTE = UID("1.2.840.10008.5.1.4.1.1.7.2")
MF_SC_GRAY_WORD = UID("1.2.840.10008.5.1.4.1.1.7.3")
MF_SC_TRUE_COLOR = UID("1.2.840.10008.5.1.4.1.1.7.4")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")

_CROSS_SECTIONAL = {"CT", "MR"}
_ANATOMY = {  # BodyPartExamined -> SNOMED CT code for AnatomicRegionSequence
    "CHEST": ("51185008", "SCT", "Chest"),
    "ABDOMEN": ("818981001", "SCT", "Abdomen"),
    "PELVIS": ("12921003", "SCT", "Pelvis"),
    "SKULL": ("89546000", "SCT", "Skull"),
    "KNEE": ("72696002", "SCT", "Knee"),
    "HAND": ("85562004", "SCT", "Hand"),
}
_PAIRED = {"KNEE", "HIP", "SHOULDER", "ELBOW", "WRIST", "HAND", "ANKLE", "FOOT", "BREAST", "EYE", "EAR"}
_PROJECTION = {"CR", "DX"}
_MANUFACTURER = {
    "CT": ("SYNTHETIC MEDICAL", "PhantomCT 64"),
    "MR": ("SYNTHETIC MEDICAL", "PhantomMR 1.5T"),
    "CR": ("SYNTHETIC MEDICAL", "PhantomCR"),
    "DX": ("SYNTHETIC MEDICAL", "PhantomDR"),
    "US": ("SYNTHETIC MEDICAL", "PhantomEcho"),
    "XA": ("SYNTHETIC MEDICAL", "PhantomAngio"),
}


def _sop_class(modality: str, frames: int, color: bool, bits: int) -> UID:
    if modality == "CT":
        return CT_IMAGE
    if modality == "MR":
        return MR_IMAGE
    if modality == "CR":
        return CR_IMAGE
    if modality == "DX":
        return DX_IMAGE_PRESENTATION
    if modality == "US":
        return US_MULTIFRAME_IMAGE if frames > 1 else US_IMAGE
    if modality == "XA":
        return XA_IMAGE
    if frames > 1:
        if color:
            return MF_SC_TRUE_COLOR
        return MF_SC_GRAY_BYTE if bits == 8 else MF_SC_GRAY_WORD
    return SC_IMAGE


def _default_bits(modality: str) -> int:
    return 16 if modality in {"CT", "MR", "CR", "DX"} else 8


def _validate_series(modality: str, s: SeriesSpec, bits: int, ts: UID) -> None:
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    if s.images < 1 or s.frames < 1 or s.rows < 16 or s.cols < 16:
        raise ValueError("a series needs >= 1 image, >= 1 frame and at least 16x16 pixels")
    if modality in _CROSS_SECTIONAL | _PROJECTION and s.frames > 1:
        raise ValueError(f"{modality} images are single-frame here; use US, XA, SC or OT for multi-frame")
    if modality in _CROSS_SECTIONAL and bits != 16:
        raise ValueError(f"{modality} images must be 16-bit")
    if s.color and (modality in _CROSS_SECTIONAL | _PROJECTION or modality == "XA"):
        raise ValueError(f"{modality} images are grayscale")
    if s.color and bits != 8:
        raise ValueError("colour images are 8-bit")
    if modality == "US" and bits != 8:
        raise ValueError("US images are 8-bit")
    if ts == JPEGBaseline8Bit and bits != 8:
        raise ValueError("JPEG baseline needs 8-bit images")
    if ts == HTJ2KLossless and s.color:
        raise ValueError("HTJ2K here is for grayscale images")


# --------------------------------------------------------------------------------------------------
# Identifying values
# --------------------------------------------------------------------------------------------------

_STREETS = ["Sadovaya", "Lesnaya", "Tverskaya", "Mira", "Leninsky", "Pushkina", "Gagarina", "Sovetskaya"]
_CITIES = ["Khimki", "Podolsk", "Mytishchi", "Balashikha", "Lyubertsy", "Korolyov"]
_FAMILY = ["SMIRNOVA", "KUZNETSOV", "POPOVA", "VASILIEV", "SOKOLOVA", "MIKHAILOV", "NOVIKOVA", "FEDOROV"]
_PATRONYMIC = ["IVANOVICH", "PETROVNA", "SERGEEVNA", "ANDREEVICH", "NIKOLAEVNA", "PAVLOVICH"]
_GIVEN = ["OLGA", "DMITRY", "ANNA", "SERGEY", "ELENA", "ALEXEI", "TATIANA", "NIKOLAI"]


_MAX_LEN = {
    "SH": 16,
    "LO": 64,
    "PN": 64,
    "ST": 1024,
    "LT": 10240,
    "UT": 10240,
    "CS": 16,
    "DA": 8,
    "TM": 14,
    "DT": 26,
}


class _Phi:
    """Collects identifying values while datasets are filled in."""

    def __init__(self) -> None:
        self.by_keyword: dict[str, set[str]] = {}

    def add(self, where: str, value: object) -> None:
        text = str(value)
        if len(text) >= 6:
            self.by_keyword.setdefault(where, set()).add(text)

    def put(self, ds: Dataset, keyword: str, value: str | list[str]) -> None:
        """Set ``ds.<keyword>`` (strings cut to the VR's maximum length) and record the value(s)."""
        limit = _MAX_LEN.get(dictionary_VR(keyword), 10240)
        values = [v[:limit] for v in value] if isinstance(value, list) else [value[:limit]]
        setattr(ds, keyword, values if isinstance(value, list) else values[0])
        for v in values:
            self.add(keyword, v)

    @property
    def values(self) -> set[str]:
        """Values written as text (burned-in pixel text, kept under "pixels", is not byte-searchable)."""
        out: set[str] = set()
        for where, vals in self.by_keyword.items():
            if where != "pixels":
                out |= vals
        return out


@dataclass
class _People:
    address: str
    phone: str
    mobile: str
    other_ids: list[str]
    other_name: str
    mother_name: str
    institution_address: str
    institution_phone: str
    department: str
    performing: str
    reading: str
    operator: str
    requesting: str
    record_physician: str
    station: str
    device_serial: str
    plate_id: str
    admission_id: str
    requested_procedure_id: str
    sps_id: str
    pps_id: str
    occupation: str
    birth_time: str
    acquisition_time: str


def _people(rnd: random.Random, spec: StudySpec) -> _People:
    def person() -> str:
        return f"{rnd.choice(_FAMILY)}^{rnd.choice(_GIVEN)}^{rnd.choice(_PATRONYMIC)}"

    def digits(n: int) -> str:
        return "".join(rnd.choice("0123456789") for _ in range(n))

    city = rnd.choice(_CITIES)
    given = spec.patient_name.split("^")[1] if "^" in spec.patient_name else rnd.choice(_GIVEN)
    return _People(
        address=f"{rnd.randint(1, 99)} {rnd.choice(_STREETS)} St, Apt {rnd.randint(1, 300)}, {city} {digits(6)}",
        phone=f"+7-495-{digits(3)}-{digits(4)}",
        mobile=f"+7-916-{digits(3)}-{digits(4)}",
        other_ids=[f"MRN{digits(8)}", f"SNILS-{digits(3)}-{digits(3)}-{digits(3)}"],
        other_name=f"{rnd.choice(_FAMILY)}^{given}",
        mother_name=f"{rnd.choice(_FAMILY)}^{rnd.choice(_GIVEN)}",
        institution_address=f"{rnd.randint(1, 99)} {rnd.choice(_STREETS)} Ave, {city} {digits(6)}",
        institution_phone=f"+7-498-{digits(3)}-{digits(4)}",
        department=f"Radiology Dept {city}",
        performing=person(),
        reading=person(),
        operator=person(),
        requesting=person(),
        record_physician=person(),
        station=f"{city.upper()[:6]}-{spec.modality}{rnd.randint(1, 9)}",
        device_serial=f"SN{digits(9)}",
        plate_id=f"PLATE{digits(6)}",
        admission_id=f"ADM{digits(7)}",
        requested_procedure_id=f"RP{digits(7)}",
        sps_id=f"SPS{digits(7)}",
        pps_id=f"PPS{digits(7)}",
        occupation=rnd.choice(["Schoolteacher", "Engineer", "Accountant", "Bus driver", "Pharmacist"]),
        birth_time=f"{rnd.randint(0, 23):02d}{rnd.randint(0, 59):02d}{rnd.randint(0, 59):02d}",
        acquisition_time=f"{rnd.randint(0, 23):02d}{rnd.randint(0, 59):02d}{rnd.randint(0, 59):02d}",
    )


def _seed_of(spec: StudySpec) -> str:
    if spec.seed is not None:
        return str(spec.seed)
    return f"{spec.patient_id}|{spec.accession_number}"


def _uid(seed: str, *parts: object) -> str:
    return generate_uid(entropy_srcs=[seed, *map(str, parts)])


def _age(birth: str, on: str) -> str | None:
    try:
        years = int(on[:4]) - int(birth[:4]) - (1 if on[4:8] < birth[4:8] else 0)
    except ValueError:
        return None
    return f"{max(years, 0):03d}Y"


def _add_patient_study(ds: Dataset, spec: StudySpec, people: _People, phi: _Phi, study_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    phi.put(ds, "PatientName", spec.patient_name)
    phi.put(ds, "PatientID", spec.patient_id)
    phi.put(ds, "PatientBirthDate", spec.patient_birth_date)
    ds.PatientSex = spec.patient_sex
    ds.StudyInstanceUID = study_uid
    phi.put(ds, "StudyDate", spec.study_date)
    phi.put(ds, "StudyTime", spec.study_time)
    phi.put(ds, "AccessionNumber", spec.accession_number)
    phi.put(ds, "ReferringPhysicianName", spec.referring_physician)
    phi.put(ds, "StudyID", spec.study_id or spec.accession_number[-8:])
    ds.StudyDescription = spec.study_description  # not identifying by itself (phi_rich adds a name)
    phi.put(ds, "InstitutionName", spec.institution_name)
    age = _age(spec.patient_birth_date, spec.study_date)
    if age:
        ds.PatientAge = age
    if not spec.phi_rich:
        return
    # Everything a hostile real file might carry.
    family = spec.patient_name.split("^")[0]
    ds.StudyDescription = f"{spec.study_description} {family}"
    phi.add("StudyDescription", ds.StudyDescription)
    phi.put(ds, "PatientBirthTime", people.birth_time)
    phi.put(ds, "PatientAddress", people.address)
    phi.put(ds, "PatientTelephoneNumbers", [people.phone, people.mobile])
    phi.put(ds, "OtherPatientIDs", people.other_ids)
    phi.put(ds, "OtherPatientNames", people.other_name)
    phi.put(ds, "PatientMotherBirthName", people.mother_name)
    phi.put(ds, "Occupation", people.occupation)
    phi.put(ds, "IssuerOfPatientID", f"{spec.institution_name} MPI")
    ds.PatientWeight = 71.5
    ds.PatientSize = 1.68
    history = f"Known to Dr {people.record_physician}; lives at {people.address}"
    phi.put(ds, "AdditionalPatientHistory", history)
    phi.put(ds, "PatientComments", f"Contact {people.mobile} before visit. Patient {spec.patient_name}")
    phi.put(ds, "MedicalRecordLocator", f"Archive box {people.other_ids[0]}")
    phi.put(ds, "CountryOfResidence", "Russian Federation")
    phi.put(ds, "RegionOfResidence", "Moscow Oblast")
    phi.put(ds, "AdmissionID", people.admission_id)
    phi.put(ds, "CurrentPatientLocation", f"Ward 7, {spec.institution_name}")
    oid = Dataset()
    phi.put(oid, "PatientID", people.other_ids[0])
    phi.put(oid, "IssuerOfPatientID", f"{spec.institution_name} RIS")
    oid.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([oid])
    phi.put(ds, "InstitutionAddress", people.institution_address)
    phi.put(ds, "InstitutionalDepartmentName", people.department)
    phi.put(ds, "ReferringPhysicianAddress", people.institution_address)
    phi.put(ds, "ReferringPhysicianTelephoneNumbers", people.institution_phone)
    ref_id = Dataset()
    phi.put(ref_id, "InstitutionName", spec.institution_name)
    phi.put(ref_id, "PersonAddress", people.institution_address)
    phi.put(ref_id, "PersonTelephoneNumbers", people.institution_phone)
    code = Dataset()
    phi.put(code, "CodeValue", people.requested_procedure_id.replace("RP", "EMP"))
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "Employee number"
    ref_id.PersonIdentificationCodeSequence = Sequence([code])
    ds.ReferringPhysicianIdentificationSequence = Sequence([ref_id])
    phi.put(ds, "PhysiciansOfRecord", people.record_physician)
    phi.put(ds, "NameOfPhysiciansReadingStudy", people.reading)
    phi.put(ds, "RequestingPhysician", people.requesting)
    phi.put(ds, "RequestedProcedureDescription", f"{spec.study_description} for {spec.patient_name}")
    phi.put(ds, "RequestedProcedureID", people.requested_procedure_id)
    req = Dataset()
    phi.put(req, "RequestedProcedureID", people.requested_procedure_id)
    phi.put(req, "ScheduledProcedureStepID", people.sps_id)
    phi.put(req, "AccessionNumber", spec.accession_number)
    phi.put(req, "ScheduledProcedureStepDescription", f"{spec.study_description} {family}")
    phi.put(req, "RequestedProcedureDescription", f"{spec.study_description} ordered by {people.requesting}")
    req.StudyInstanceUID = study_uid  # UIDs are reported in identifying_uids
    issuer = Dataset()
    phi.put(issuer, "LocalNamespaceEntityID", f"{spec.institution_name} RIS")
    req.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.RequestAttributesSequence = Sequence([req])
    phi.put(ds, "PerformedProcedureStepID", people.pps_id)
    phi.put(ds, "PerformedProcedureStepStartDate", spec.study_date)
    phi.put(ds, "PerformedProcedureStepStartTime", spec.study_time)
    phi.put(ds, "PerformedProcedureStepDescription", f"{spec.study_description} of {spec.patient_name}")
    phi.put(ds, "StudyComments", f"Patient {spec.patient_name} ({spec.patient_id}) phone {people.phone}")


_PRIVATE_CREATOR = "SYNTHETIC PACS 1.0"


def _add_private(ds: Dataset, spec: StudySpec, people: _People, phi: _Phi) -> None:
    block = ds.private_block(0x0029, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "PN", spec.patient_name)
    block.add_new(0x02, "LO", spec.patient_id)
    block.add_new(0x03, "DA", spec.patient_birth_date)
    block.add_new(0x04, "LT", f"{spec.patient_name} {people.address} {people.phone}")
    block.add_new(0x05, "UN", f"{spec.patient_id}\\{spec.accession_number}".encode())
    for v in (spec.patient_name, spec.patient_id, spec.patient_birth_date, spec.accession_number):
        phi.add("private", v)
    phi.add("private", block[0x04].value)
    # A hostile one: the private creator itself carries the patient's name.
    creator = f"ACME {spec.patient_name.replace('^', ' ')}"[:64]
    other = ds.private_block(0x0031, creator, create=True)
    other.add_new(0x01, "LO", people.other_ids[1])
    phi.add("private", creator)
    phi.add("private", people.other_ids[1])


def _add_series(
    ds: Dataset,
    spec: StudySpec,
    people: _People,
    phi: _Phi,
    modality: str,
    series_uid: str,
    series_number: int,
    description: str,
) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    maker, model = _MANUFACTURER.get(modality, ("SYNTHETIC MEDICAL", "PhantomCapture"))
    ds.Manufacturer = maker
    ds.ManufacturerModelName = model
    ds.SoftwareVersions = "1.0"
    phi.put(ds, "SeriesDate", spec.study_date)
    phi.put(ds, "SeriesTime", spec.study_time)
    if not spec.phi_rich:
        return
    ds.SeriesDescription = f"{description} {spec.patient_name.split('^')[0]}"
    phi.add("SeriesDescription", ds.SeriesDescription)
    phi.put(ds, "PerformingPhysicianName", people.performing)
    phi.put(ds, "OperatorsName", [people.operator, people.performing])
    phi.put(ds, "StationName", people.station)
    phi.put(ds, "DeviceSerialNumber", people.device_serial)
    phi.put(ds, "ProtocolName", f"{description} ({people.operator.split('^')[0]})")
    phi.put(ds, "ImageComments", f"Scanned for Dr {people.requesting}; pt {spec.patient_id}")
    phi.put(ds, "InstanceCreationDate", spec.study_date)
    phi.put(ds, "InstanceCreationTime", people.acquisition_time)
    phi.put(ds, "AcquisitionDate", spec.study_date)
    phi.put(ds, "AcquisitionTime", people.acquisition_time)
    phi.put(ds, "AcquisitionDateTime", f"{spec.study_date}{people.acquisition_time}")
    phi.put(ds, "ContentDate", spec.study_date)
    phi.put(ds, "ContentTime", people.acquisition_time)
    phi.put(ds, "DateOfLastCalibration", "20241115")
    phi.put(ds, "TimeOfLastCalibration", "073000")
    if modality in _PROJECTION:
        phi.put(ds, "PlateID", people.plate_id)
    _add_private(ds, spec, people, phi)


# --------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1] (y, x), float32."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
    return y, x


def _ellipse(rows: int, cols: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = _grid(rows, cols)
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2).astype(np.float32)


class _Phantom:
    """Produces frames for one series; cheap per frame (precomputed distance maps + a noise bank)."""

    def __init__(self, modality: str, rows: int, cols: int, bits: int, color: bool, rng: np.random.Generator):
        self.modality = modality
        self.rows, self.cols, self.bits, self.color = rows, cols, bits, color
        self.rng = rng
        self.max = 4095 if bits == 16 else 255
        y, x = _grid(rows, cols)
        self.body = _ellipse(rows, cols, 0.0, 0.0, 0.78, 0.92)
        self.lung_l = _ellipse(rows, cols, -0.05, -0.42, 0.48, 0.28)
        self.lung_r = _ellipse(rows, cols, -0.05, 0.42, 0.48, 0.28)
        self.spine = _ellipse(rows, cols, 0.55, 0.0, 0.11, 0.11)
        self.organ = _ellipse(rows, cols, 0.05, 0.1, 0.3, 0.35)
        self.gradient = ((x + 1.0) * 0.5 * 0.15 + (y + 1.0) * 0.5 * 0.05).astype(np.float32)
        self.radius = np.sqrt(y**2 + x**2).astype(np.float32)
        self.angle = np.arctan2(x, y + 1.05).astype(np.float32)
        sigma = 0.02
        self.noise = [rng.normal(0, sigma, size=(rows, cols)).astype(np.float32) for _ in range(6)]

    def frame(self, t: float, index: int) -> np.ndarray:
        """A frame in [0, 1] (float32) at position ``t`` in [0, 1] through the series/cine."""
        m = self.modality
        noise = self.noise[index % len(self.noise)]
        if index >= len(self.noise):
            noise = np.roll(noise, shift=(index * 7) % self.rows, axis=0)
        z = 2.0 * t - 1.0  # -1..1 along the stack
        if m in ("CT", "MR"):
            img = np.zeros((self.rows, self.cols), np.float32)
            inside = self.body <= 1.0
            soft = 0.27 if m == "CT" else 0.45
            img[inside] = soft
            img += np.where(inside, self.gradient * (0.3 if m == "CT" else 1.0), 0)
            lung = 0.06 if m == "CT" else 0.08
            lr = max(0.0, 1.0 - z * z)  # lungs shrink at both ends
            img[(self.lung_l <= lr) | (self.lung_r <= lr)] = lung
            img[self.spine <= 1.0] = 0.45 if m == "CT" else 0.2
            organ_r = max(0.0, 1.0 - (z - 0.4) ** 2 * 3)
            img[self.organ <= organ_r] = 0.3 if m == "CT" else 0.65
            ly, lx = -0.2 + 0.1 * z, -0.35
            lesion = _ellipse(self.rows, self.cols, ly, lx, 0.08, 0.08) <= max(0.0, 1.0 - (z * 4) ** 2)
            img[lesion] = 0.55 if m == "CT" else 0.9
            img = img + noise * inside
        elif m in ("CR", "DX"):
            img = 0.75 - 0.25 * self.radius + self.gradient
            img[(self.lung_l <= 1.0) | (self.lung_r <= 1.0)] -= 0.35
            img[self.spine <= 1.6] += 0.1
            img = img + noise
        elif m == "US":
            sector = (np.abs(self.angle) < 0.6) & (self.radius < 1.9) & (self.body < 3.0)
            speck = np.abs(noise) * 12.0
            depth = np.clip(1.0 - (self.radius + 1.0) / 3.0, 0, 1)
            cyst = _ellipse(self.rows, self.cols, 0.2 + 0.1 * np.sin(6.28 * t), 0.05, 0.18, 0.25) <= 1.0
            img = np.where(sector, speck * (0.3 + 0.5 * depth), 0)
            img[cyst & sector] *= 0.1
        elif m == "XA":
            img = 0.7 + self.gradient - 0.05 * self.radius
            y, x = _grid(self.rows, self.cols)
            for k in range(3):
                path = 0.25 * np.sin(3.0 * x + k * 1.7 + 4.0 * t) + 0.3 * (k - 1)
                img = img - 0.45 * (np.abs(y - path) < 0.02 + 0.01 * k) * min(1.0, 0.3 + 1.5 * t)
            img = img + noise
        else:  # SC, OT and anything else: gradient, rings and a test bar
            img = self.gradient * 3 + 0.1 * np.cos(self.radius * 20.0 + 6.28 * t) + 0.2
            img[self.organ <= 1.0] += 0.25
            img = img + noise * 0.5
        return np.clip(img, 0.0, 1.0)

    def to_pixels(self, img: np.ndarray) -> np.ndarray:
        px = (img * self.max).astype(np.uint16 if self.bits == 16 else np.uint8)
        if not self.color:
            return px
        g = (px.astype(np.float32) * 0.92).astype(np.uint8)
        b = (px.astype(np.float32) * 0.78).astype(np.uint8)
        return np.stack([px, g, b], axis=-1)  # a warm grey, as ultrasound consoles show


# 5x7 bitmap font (columns, bit 0 = top row) for burned-in annotations.
_FONT: dict[str, tuple[int, ...]] = {
    "0": (0x3E, 0x51, 0x49, 0x45, 0x3E),
    "1": (0x00, 0x42, 0x7F, 0x40, 0x00),
    "2": (0x42, 0x61, 0x51, 0x49, 0x46),
    "3": (0x21, 0x41, 0x45, 0x4B, 0x31),
    "4": (0x18, 0x14, 0x12, 0x7F, 0x10),
    "5": (0x27, 0x45, 0x45, 0x45, 0x39),
    "6": (0x3C, 0x4A, 0x49, 0x49, 0x30),
    "7": (0x01, 0x71, 0x09, 0x05, 0x03),
    "8": (0x36, 0x49, 0x49, 0x49, 0x36),
    "9": (0x06, 0x49, 0x49, 0x29, 0x1E),
    "A": (0x7E, 0x11, 0x11, 0x11, 0x7E),
    "B": (0x7F, 0x49, 0x49, 0x49, 0x36),
    "C": (0x3E, 0x41, 0x41, 0x41, 0x22),
    "D": (0x7F, 0x41, 0x41, 0x22, 0x1C),
    "E": (0x7F, 0x49, 0x49, 0x49, 0x41),
    "F": (0x7F, 0x09, 0x09, 0x01, 0x01),
    "G": (0x3E, 0x41, 0x41, 0x51, 0x32),
    "H": (0x7F, 0x08, 0x08, 0x08, 0x7F),
    "I": (0x00, 0x41, 0x7F, 0x41, 0x00),
    "J": (0x20, 0x40, 0x41, 0x3F, 0x01),
    "K": (0x7F, 0x08, 0x14, 0x22, 0x41),
    "L": (0x7F, 0x40, 0x40, 0x40, 0x40),
    "M": (0x7F, 0x02, 0x04, 0x02, 0x7F),
    "N": (0x7F, 0x04, 0x08, 0x10, 0x7F),
    "O": (0x3E, 0x41, 0x41, 0x41, 0x3E),
    "P": (0x7F, 0x09, 0x09, 0x09, 0x06),
    "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E),
    "R": (0x7F, 0x09, 0x19, 0x29, 0x46),
    "S": (0x46, 0x49, 0x49, 0x49, 0x31),
    "T": (0x01, 0x01, 0x7F, 0x01, 0x01),
    "U": (0x3F, 0x40, 0x40, 0x40, 0x3F),
    "V": (0x1F, 0x20, 0x40, 0x20, 0x1F),
    "W": (0x7F, 0x20, 0x18, 0x20, 0x7F),
    "X": (0x63, 0x14, 0x08, 0x14, 0x63),
    "Y": (0x03, 0x04, 0x78, 0x04, 0x03),
    "Z": (0x61, 0x51, 0x49, 0x45, 0x43),
    " ": (0, 0, 0, 0, 0),
    "-": (0x08, 0x08, 0x08, 0x08, 0x08),
    ".": (0x00, 0x60, 0x60, 0x00, 0x00),
    ":": (0x00, 0x36, 0x36, 0x00, 0x00),
    "/": (0x20, 0x10, 0x08, 0x04, 0x02),
    "^": (0x04, 0x02, 0x01, 0x02, 0x04),
    "?": (0x02, 0x01, 0x51, 0x09, 0x06),
}


def _text_mask(lines: Iterable[str], rows: int, cols: int) -> np.ndarray:
    """Boolean mask with ``lines`` drawn top-left, scaled to the image size."""
    mask = np.zeros((rows, cols), bool)
    scale = max(1, min(rows, cols) // 160)
    y0 = 2 * scale
    for line in lines:
        x0 = 2 * scale
        for ch in line.upper():
            glyph = _FONT.get(ch, _FONT["?"])
            for cx, colbits in enumerate(glyph):
                for cy in range(7):
                    if colbits >> cy & 1:
                        ys, xs = y0 + cy * scale, x0 + cx * scale
                        if ys + scale <= rows and xs + scale <= cols:
                            mask[ys : ys + scale, xs : xs + scale] = True
            x0 += 6 * scale
        y0 += 9 * scale
    return mask


def _burn(px: np.ndarray, mask: np.ndarray, value: int) -> np.ndarray:
    px = px.copy()
    px[mask] = value
    return px


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _file_meta(sop_class: str, sop_instance: str, ts: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STUDYPUB_DEMO"
    return meta


def _write_native(ds: Dataset, path: Path, ts: UID) -> None:
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)


class _NativeWriter:
    """Writes many instances of one series fast: elements that do not change between instances are
    encoded once by pydicom, the few that do (UIDs, numbers, positions) per instance."""

    def __init__(self, ds: Dataset, varying: Iterable[str], ts: UID) -> None:
        self.implicit = ts == ImplicitVRLittleEndian
        self.varying = [Tag(k) for k in varying]
        self.encodings = convert_encodings(ds.get("SpecificCharacterSet", "ISO_IR 6"))
        correct_ambiguous_vr(ds, is_little_endian=True)
        skip = {*self.varying, Tag(0x7FE0, 0x0010)}
        self.fixed = [(elem.tag, self._encode(elem)) for elem in ds if elem.tag not in skip]
        self.pixel_vr = b"OW" if ds.BitsAllocated > 8 else b"OB"

    def _encode(self, elem: DataElement) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self.implicit
        write_data_element(fp, elem, self.encodings)
        return fp.getvalue()

    def write(self, ds: Dataset, path: Path, pixels: bytes) -> None:
        meta = DicomBytesIO()
        meta.is_little_endian = True
        meta.is_implicit_VR = False
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        parts = self.fixed + [(t, self._encode(ds[t])) for t in self.varying if t in ds]
        parts.sort(key=lambda p: p[0])
        if len(pixels) % 2:
            pixels += b"\x00"
        if self.implicit:
            head = struct.pack("<HHI", 0x7FE0, 0x0010, len(pixels))
        else:
            head = struct.pack("<HH2sHI", 0x7FE0, 0x0010, self.pixel_vr, 0, len(pixels))
        with path.open("wb") as f:
            f.write(b"\x00" * 128 + b"DICM")
            f.write(meta.getvalue())
            f.writelines(p[1] for p in parts)
            f.write(head)
            f.write(pixels)


_VARYING = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")


def _encode_j2k(ds: Dataset, pixels: np.ndarray) -> None:
    ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_RCT"  # the encoder applied the reversible colour transform


def _encode_htj2k(ds: Dataset, frames: list[np.ndarray], work: Path) -> None:
    """Each frame through ``ojph_compress`` (reversible, raw samples in), encapsulated as HTJ2K Lossless."""
    from pydicom.encaps import encapsulate

    codestreams = []
    for index, frame in enumerate(frames):
        raw, out = work / f"htj2k-{index}.raw", work / f"htj2k-{index}.j2c"
        frame.astype("<u2" if frame.dtype.itemsize == 2 else "u1").tofile(raw)
        rows, cols = frame.shape
        cmd = [HTJ2K_ENCODER, "-i", str(raw), "-o", str(out), "-reversible", "true", "-num_comps", "1"]
        cmd += ["-dims", f"{{{cols},{rows}}}", "-signed", "false", "-bit_depth", str(ds.BitsStored)]
        cmd += ["-downsamp", "{1,1}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{HTJ2K_ENCODER} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[:500]}")
        codestreams.append(out.read_bytes())
    ds.PixelData = encapsulate(codestreams)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless


def _dcmtk(cmd: list[str], src: Path, dst: Path) -> None:
    proc = subprocess.run([*cmd, str(src), str(dst)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")


def _pdf_bytes(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with the given text lines (Helvetica, Latin-1)."""

    def esc(s: str) -> str:
        s = s.encode("latin-1", "replace").decode("latin-1")
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text = ["BT", "/F1 14 Tf", "60 780 Td", "18 TL"]
    for line in lines:
        text.append(f"({esc(line)}) Tj T*")
    text.append("ET")
    stream = "\n".join(text).encode("latin-1")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _orientation_for(modality: str) -> list[str] | None:
    return None if modality in _CROSS_SECTIONAL else ["L", "F"]


def _image_base(
    spec: StudySpec,
    s: SeriesSpec,
    modality: str,
    bits: int,
    sop_class: UID,
    burned: bool,
    frames: int,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    cross = modality in _CROSS_SECTIONAL
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if cross else ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3 if s.color else 1
    ds.PhotometricInterpretation = "RGB" if s.color else "MONOCHROME2"
    if s.color:
        ds.PlanarConfiguration = 0
    ds.Rows = s.rows
    ds.Columns = s.cols
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "YES" if burned else "NO"
    ds.LossyImageCompression = "00"
    orient = _orientation_for(modality)
    if orient:
        ds.PatientOrientation = orient
    if s.body_part:
        ds.BodyPartExamined = s.body_part
    # General Series Laterality (2C): a value for paired structures, empty when the part is unknown.
    if (s.body_part or "").upper() in _PAIRED:
        ds.Laterality = "R"
    elif not s.body_part:
        ds.Laterality = ""
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 40.0
        ds.CineRate = 25
    if modality == "CT":
        ds.KVP = 120
        ds.SliceThickness = s.slice_thickness
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = 1
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 15.0
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 1.5
        ds.ImagedNucleus = "1H"
        ds.SliceThickness = s.slice_thickness
        ds.SpacingBetweenSlices = s.slice_thickness
        ds.PatientPosition = "HFS"
        ds.WindowCenter = 1500
        ds.WindowWidth = 3000
        ds.AcquisitionNumber = 1
    elif modality in _PROJECTION:
        ds.ViewPosition = "PA"
        ds.KVP = 110
        spacing = s.pixel_spacing or 0.2
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PixelSpacing = [spacing, spacing]
        ds.WindowCenter = 2048 if bits == 16 else 128
        ds.WindowWidth = 4096 if bits == 16 else 256
        if modality == "DX":
            ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
            ds.ImageLaterality = "R" if (s.body_part or "").upper() in _PAIRED else "U"
            if "Laterality" in ds:  # DX carries Image Laterality instead of the series one
                del ds.Laterality
            ds.AcquisitionContextSequence = Sequence()
            ds.AnatomicRegionSequence = Sequence()
            region = _ANATOMY.get((s.body_part or "").upper())
            if region:
                code = Dataset()
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = region
                ds.AnatomicRegionSequence = Sequence([code])
            ds.PositionerType = ""
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.DetectorType = "DIRECT"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "US"
            ds.PresentationLUTShape = "IDENTITY"
            ds.DistanceSourceToDetector = 1800.0
            ds.ExposureTime = 20
            ds.XRayTubeCurrent = 200
    elif modality == "US":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    elif modality == "XA":
        ds.KVP = 80
        ds.RadiationSetting = "GR"
        ds.PixelIntensityRelationship = "LIN"
        if frames > 1:
            ds.PositionerMotion = "STATIC"
        ds.PositionerPrimaryAngle = 30.0
        ds.PositionerSecondaryAngle = 0.0
        ds.DistanceSourceToDetector = 1100.0
        ds.ExposureTime = 8
        ds.XRayTubeCurrent = 600
        ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    else:
        ds.ConversionType = "WSD"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        if frames > 1 and not s.color:
            ds.PresentationLUTShape = "IDENTITY"
            if bits == 16:
                ds.RescaleIntercept = 0
                ds.RescaleSlope = 1
                ds.RescaleType = "US"
    return ds


def generate_study(out_dir: Path, spec: StudySpec) -> GeneratedStudy:
    """Write ``spec`` as Part-10 files under ``out_dir`` (created if needed) and describe the result.

    Raises :class:`TransferSyntaxUnavailable` when a requested compressed transfer syntax cannot be
    encoded here, and ``ValueError`` for inconsistent specs (e.g. 8-bit CT, JPEG baseline on 16-bit).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = _seed_of(spec)
    rnd = random.Random(seed)  # noqa: S311 - deterministic synthetic values, not secrets
    np_seed = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    rng = np.random.default_rng(np_seed)
    people = _people(rnd, spec)
    phi = _Phi()
    study_uid = spec.study_instance_uid or _uid(seed, "study")
    frame_of_ref = _uid(seed, "frame-of-reference")
    uids: set[str] = {study_uid, frame_of_ref}

    # Validate everything before writing anything.
    plans = []
    for n, s in enumerate(spec.series, start=1):
        modality = (s.modality or spec.modality).upper()
        bits = s.bits or _default_bits(modality)
        ts = resolve_transfer_syntax(s.transfer_syntax)
        _validate_series(modality, s, bits, ts)
        reason = transfer_syntax_unavailable_reason(ts)
        if reason:
            raise TransferSyntaxUnavailable(reason)
        plans.append((n, s, modality, bits, ts))

    instances: list[GeneratedInstance] = []
    series_uids: list[str] = []
    jobs: list[tuple[list[str], Path, Path]] = []
    tmp = Path(tempfile.mkdtemp(prefix="studypub-gen-", dir=out_dir))
    try:
        for n, s, modality, bits, ts in plans:
            series_uid = _uid(seed, "series", n)
            series_uids.append(series_uid)
            uids.add(series_uid)
            series_dir = out_dir / f"S{n:03d}"
            series_dir.mkdir(exist_ok=True)
            burned = spec.burned_in_annotation if s.burned_in_annotation is None else s.burned_in_annotation
            sop_class = _sop_class(modality, s.frames, s.color, bits)
            ds = Dataset()
            _add_patient_study(ds, spec, people, phi, study_uid)
            description = s.description or f"{modality} series {n}"
            _add_series(ds, spec, people, phi, modality, series_uid, n, description)
            ds.update(_image_base(spec, s, modality, bits, sop_class, burned, s.frames))
            if modality in _CROSS_SECTIONAL or modality in ("US", "XA"):
                ds.FrameOfReferenceUID = frame_of_ref
                ds.PositionReferenceIndicator = ""
            if not spec.phi_rich:
                ds.ContentDate = spec.study_date
                ds.ContentTime = spec.study_time
            phantom = _Phantom(modality, s.rows, s.cols, bits, s.color, rng)
            mask = None
            box: tuple[int, int, int, int] | None = None
            if burned:
                name = (
                    spec.patient_name
                    if spec.patient_name.isascii()
                    else spec.patient_name.encode("ascii", "replace").decode()
                )
                lines = [name, f"ID {spec.patient_id}", f"DOB {spec.patient_birth_date}", spec.study_date]
                mask = _text_mask(lines, s.rows, s.cols)
                ys, xs = np.nonzero(mask)
                if len(ys):
                    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
                for line in lines:
                    phi.add("pixels", line)
            spacing = s.pixel_spacing or round(350.0 / max(s.rows, s.cols), 4)
            writer: _NativeWriter | None = None
            total = s.images * s.frames
            for i in range(1, s.images + 1):
                sop_uid = _uid(seed, "sop", n, i)
                uids.add(sop_uid)
                ds.SOPInstanceUID = sop_uid
                ds.InstanceNumber = i
                ds.file_meta = _file_meta(sop_class, sop_uid, ts)
                if modality in _CROSS_SECTIONAL:
                    z = -0.5 * s.images * s.slice_thickness + (i - 1) * s.slice_thickness
                    ds.ImagePositionPatient = [-spacing * s.cols / 2, -spacing * s.rows / 2, round(z, 3)]
                    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
                    ds.PixelSpacing = [spacing, spacing]
                    ds.SliceLocation = round(z, 3)
                frames = []
                for f in range(s.frames):
                    k = (i - 1) * s.frames + f
                    px = phantom.to_pixels(phantom.frame(k / max(total - 1, 1), k))
                    if mask is not None:
                        px = _burn(px, mask, phantom.max)
                    frames.append(px)
                pixels = frames[0] if s.frames == 1 else np.stack(frames)
                path = series_dir / f"I{i:05d}.dcm"
                if ts in _DCMTK_ENCODERS or ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
                    native = ts if ts in _NATIVE else ExplicitVRLittleEndian
                    ds.file_meta.TransferSyntaxUID = native
                    if writer is None:
                        writer = _NativeWriter(ds, _VARYING, native)
                    if ts in _NATIVE:
                        writer.write(ds, path, pixels.tobytes())
                    else:
                        src = tmp / f"{n:03d}-{i:05d}.dcm"
                        writer.write(ds, src, pixels.tobytes())
                        jobs.append((_DCMTK_ENCODERS[ts], src, path))
                elif ts == DeflatedExplicitVRLittleEndian:
                    ds.PixelData = pixels.tobytes()
                    _write_native(ds, path, ts)
                elif ts == HTJ2KLossless:
                    enc = Dataset()
                    for elem in ds:
                        if elem.keyword != "PixelData":
                            enc.add(copy.copy(elem))
                    enc.file_meta = _file_meta(sop_class, sop_uid, HTJ2KLossless)
                    _encode_htj2k(enc, frames, tmp)
                    enc.save_as(path, enforce_file_format=True)
                else:  # JPEG 2000 through pydicom
                    enc = Dataset()
                    for elem in ds:
                        if elem.keyword != "PixelData":
                            enc.add(copy.copy(elem))
                    enc.file_meta = _file_meta(sop_class, sop_uid, ExplicitVRLittleEndian)
                    _encode_j2k(enc, pixels)
                    enc.save_as(path, enforce_file_format=True)
                instances.append(GeneratedInstance(path, sop_class, sop_uid, series_uid, ts, modality, s.frames, box))
        if jobs:
            with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
                list(pool.map(lambda j: _dcmtk(*j), jobs))
        if spec.include_pdf:
            instances.append(_write_pdf(out_dir, spec, people, phi, seed, study_uid, len(plans) + 1, uids))
            series_uids.append(instances[-1].series_instance_uid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    return GeneratedStudy(
        spec=spec,
        out_dir=out_dir,
        study_instance_uid=study_uid,
        instances=instances,
        series_instance_uids=series_uids,
        identifying_values=phi.values,
        identifying_by_keyword=phi.by_keyword,
        identifying_uids=uids,
    )


def _write_pdf(
    out_dir: Path,
    spec: StudySpec,
    people: _People,
    phi: _Phi,
    seed: str,
    study_uid: str,
    series_number: int,
    uids: set[str],
) -> GeneratedInstance:
    series_uid = _uid(seed, "series", series_number)
    sop_uid = _uid(seed, "sop", series_number, 1)
    uids |= {series_uid, sop_uid}
    ds = Dataset()
    ds.file_meta = _file_meta(ENCAPSULATED_PDF, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    _add_patient_study(ds, spec, people, phi, study_uid)
    _add_series(ds, spec, people, phi, "DOC", series_uid, series_number, "Report")
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    ds.AcquisitionDateTime = f"{spec.study_date}{spec.study_time}"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"Radiology report {spec.accession_number}"
    phi.add("DocumentTitle", ds.DocumentTitle)
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    lines = [
        "Radiology report",
        f"Patient: {spec.patient_name.replace('^', ' ')}",
        f"Patient ID: {spec.patient_id}",
        f"Date of birth: {spec.patient_birth_date}",
        f"Accession: {spec.accession_number}",
        f"Referring physician: {spec.referring_physician.replace('^', ' ')}",
        f"Study: {spec.study_description}, {spec.study_date}",
        "Findings: no acute abnormality. Synthetic document for testing.",
    ]
    if spec.phi_rich:
        lines += [f"Address: {people.address}", f"Phone: {people.phone}"]
    pdf = _pdf_bytes(lines)
    for line in lines:
        label, _, value = line.partition(": ")
        if value and label not in ("Study", "Findings"):
            phi.add("pdf", value.encode("latin-1", "replace").decode("latin-1"))
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    series_dir = out_dir / f"S{series_number:03d}"
    series_dir.mkdir(exist_ok=True)
    path = series_dir / "I00001.dcm"
    _write_native(ds, path, ExplicitVRLittleEndian)
    return GeneratedInstance(path, ENCAPSULATED_PDF, sop_uid, series_uid, ExplicitVRLittleEndian, "DOC", 1)


# --------------------------------------------------------------------------------------------------
# Ready-made specs
# --------------------------------------------------------------------------------------------------


def demo_studies() -> list[StudySpec]:
    """A few varied studies for the demo PACS, each with its own patient ID and accession number."""
    return [
        StudySpec(
            patient_id="DEMO-CT-001",
            accession_number="ACC-CT-001",
            patient_name="SMIRNOV^ALEXANDER^PETROVICH",
            patient_birth_date="19620314",
            patient_sex="M",
            study_date="20250201",
            study_time="161802",
            study_description="CT chest with contrast",
            service_title="КТ органов грудной клетки с контрастированием",
            modality="CT",
            series=[
                SeriesSpec(images=24, rows=512, cols=512, description="Chest 2.5mm", body_part="CHEST"),
                SeriesSpec(
                    images=16,
                    rows=512,
                    cols=512,
                    transfer_syntax="jpeg-lossless",
                    description="Chest 5mm",
                    body_part="CHEST",
                    slice_thickness=5.0,
                ),
            ],
            phi_rich=True,
        ),
        StudySpec(
            patient_id="DEMO-MR-002",
            accession_number="ACC-MR-002",
            patient_name="Иванова^Мария^Петровна",
            patient_birth_date="19850722",
            study_date="20250203",
            study_time="093015",
            study_description="MRI of joints",
            service_title="МРТ коленного сустава",
            modality="MR",
            series=[
                SeriesSpec(
                    images=20,
                    rows=256,
                    cols=256,
                    transfer_syntax="jpeg-ls",
                    description="T1 SE",
                    body_part="KNEE",
                    slice_thickness=4.0,
                ),
                SeriesSpec(
                    images=20,
                    rows=256,
                    cols=256,
                    transfer_syntax="jpeg2000",
                    description="T2 SE",
                    body_part="KNEE",
                    slice_thickness=4.0,
                ),
            ],
            phi_rich=True,
        ),
        StudySpec(
            patient_id="DEMO-CR-003",
            accession_number="ACC-CR-003",
            patient_name="KUZNETSOVA^ELENA",
            patient_birth_date="19540105",
            study_date="20250204",
            study_time="110500",
            study_description="Chest X-ray PA with report",
            service_title="Рентгенография органов грудной клетки",
            modality="CR",
            series=[
                SeriesSpec(
                    images=2,
                    rows=1024,
                    cols=832,
                    bits=8,
                    transfer_syntax="jpeg-baseline",
                    description="Chest PA",
                    body_part="CHEST",
                ),
            ],
            include_pdf=True,
            phi_rich=True,
        ),
        StudySpec(
            patient_id="DEMO-US-004",
            accession_number="ACC-US-004",
            patient_name="POPOV^DMITRY",
            patient_birth_date="19911130",
            patient_sex="M",
            study_date="20250205",
            study_time="140000",
            study_description="US abdomen",
            service_title="УЗИ органов брюшной полости",
            modality="US",
            series=[
                SeriesSpec(
                    images=1,
                    frames=24,
                    rows=300,
                    cols=400,
                    color=True,
                    transfer_syntax="rle",
                    description="Liver cine",
                    body_part="ABDOMEN",
                ),
                SeriesSpec(
                    images=3,
                    rows=300,
                    cols=400,
                    transfer_syntax="implicit",
                    description="Liver stills",
                    body_part="ABDOMEN",
                ),
            ],
            phi_rich=True,
        ),
        StudySpec(
            patient_id="DEMO-SC-005",
            accession_number="ACC-SC-005",
            patient_name="SOKOLOVA^TATIANA",
            patient_birth_date="19780619",
            study_date="20250206",
            study_time="083000",
            study_description="Outside images (screen capture)",
            service_title="Снимки из другой клиники",
            modality="OT",
            series=[
                SeriesSpec(images=2, rows=480, cols=640, transfer_syntax="deflated", description="Screen capture"),
            ],
            burned_in_annotation=True,
            phi_rich=True,
        ),
    ]


def ct_study_spec(slices: int = 500, rows: int = 512, cols: int = 512) -> StudySpec:
    """A single-series uncompressed CT for benchmarks (500 x 512 x 512 x 16 bit ~ 263 MB)."""
    return StudySpec(
        patient_id=f"BENCH-CT-{slices}",
        accession_number=f"ACC-BENCH-{slices}",
        patient_name="BENCHMARK^PATIENT",
        patient_birth_date="19700101",
        study_description="CT benchmark",
        modality="CT",
        series=[
            SeriesSpec(images=slices, rows=rows, cols=cols, slice_thickness=1.0, description="Axial 1mm"),
        ],
        phi_rich=True,
    )
