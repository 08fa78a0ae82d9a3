"""DICOM de-identification engine: PS3.15 Basic Application Level Confidentiality Profile (Table E.1-1).

Pure and deterministic: no logging, no network, no global mutable state. One :class:`StudyAnonymiser` per
(study, key); it pickles as ``(uid_key, options)`` so a process pool can use it.

``anonymise_file`` reads the source, applies the :class:`~studypub.deid.profile.Profile` decisions at every
depth, regenerates the file meta, writes a temporary file, re-reads and verifies it (:func:`verify_file`,
fail closed) and only then renames it to ``dst``. Pixel Data and waveform data are never decoded:
encapsulated (compressed) pixel data is written back byte-for-byte. An instance whose pixel data is shorter
than its header says (:mod:`studypub.deid.pixels`) is withheld, like one that may show identity in its pixels.

CLI: ``python -m studypub.deid.engine --describe`` prints what the profile does;
``python -m studypub.deid.engine --bench DIR [--generate 400] [--processes 1,2]`` measures the rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID as PyUID
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from studypub.deid import burned_in, codec, pixels
from studypub.deid.codes import (
    CODE_MEANING,
    CODE_VALUE,
    CODING_SCHEME_DESIGNATOR,
    LONG_CODE_VALUE,
    dictionary_meaning,
    is_public_scheme,
    matches_dictionary,
)
from studypub.deid.errors import BurnedInPolicyError, DeidError, DeidVerificationError, UnreadableDicomError
from studypub.deid.pixels import pixel_data_reason
from studypub.deid.profile import (
    CLASS_UID,
    DATE_VRS,
    DUMMY,
    EMPTY,
    FILE_META_ALLOWED,
    KEEP,
    KEEP_CODE,
    KEEP_TEXT,
    PROFILE_VERSION,
    REMOVE,
    SEQ,
    SEQ_DUMMY,
    SEQ_IDENTITY,
    SHIFT,
    TEXT_VRS,
    UID,
    Decision,
    DeidOptions,
    Profile,
    iod_types,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PROFILE_VERSION",
    "DeidOptions",
    "InstanceOutcome",
    "Profile",
    "StudyAnonymiser",
    "VerificationContext",
    "burned_in_reason",
    "is_well_known_uid",
    "pixel_data_reason",
    "verify_file",
]

IMPLEMENTATION_CLASS_UID = "2.25.49599942177486772789865235633410002192"
IMPLEMENTATION_VERSION_NAME = "STUDYPUB_DEID_1"
DEID_METHOD = f"{PROFILE_VERSION} Basic Profile"

ENCAPSULATED_DOCUMENT_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
        "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
        "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
        "1.2.840.10008.5.1.4.1.1.104.4",  # Encapsulated OBJ
        "1.2.840.10008.5.1.4.1.1.104.5",  # Encapsulated MTL
    }
)
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
SOP_INSTANCE_UID = 0x00080018
ENCAPSULATED_DOCUMENT = 0x00420011
ENCAPSULATED_DOCUMENT_LENGTH = 0x00420015
MIME_TYPE_OF_ENCAPSULATED_DOCUMENT = 0x00420012

DUMMY_TEXT = "ANONYMOUS"
DUMMY_BY_VR: dict[str, Any] = {
    "AE": DUMMY_TEXT,
    "AS": "000Y",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "UC": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "UR": "urn:anonymous",
    "IS": "0",
    "DS": "0",
    "AT": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OD": b"\x00" * 8,
    "OV": b"\x00" * 8,
}


def _blank_pdf() -> bytes:
    """A valid one-page blank PDF: the dummy for the document of an included Encapsulated PDF."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    if len(out) % 2:
        out += b"\n"
    return bytes(out)


BLANK_PDF = _blank_pdf()
DEID_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "keep": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "shift": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
    "pixels": ("113101", "Clean Pixel Data Option"),
}
# (0028,0303) Longitudinal Temporal Information Modified, by dates option (set when a date was changed)
LONGITUDINAL = {"remove": "REMOVED", "shift": "MODIFIED", "keep": "UNMODIFIED"}
# Strings the engine writes itself: a source value contained in one of them is no evidence of a leak.
_OWN_TEXT = "\x00".join(
    s.casefold()
    for s in [
        *(str(v) for v in DUMMY_BY_VR.values() if isinstance(v, str)),
        DEID_METHOD,
        IMPLEMENTATION_VERSION_NAME,
        "YES",
        "REMOVED",
        "MODIFIED",
        "UNMODIFIED",
        "DCM",
        "DICM",
        *(f"{code} {meaning}" for code, meaning in DEID_CODES.values()),
    ]
)
_SCOPE_DUMMY = 1
_SCOPE_IDENTITY = 2
_MIN_MARKER = 4
_MIN_NUMERIC_MARKER = 8
_NUMERIC_CHARS = frozenset("0123456789.:+- ")
_IGNORE = pydicom_config.IGNORE
# Rounds of cleaning a kept value that contains a removed one (each round re-verifies the whole output).
_CLEAN_ROUNDS = 3
IDENTITY_IN_REQUIRED_VALUE = "identity_in_required_value"
# Kept code strings whose values the standard enumerates: a dummy there would make the object invalid, so
# an instance with a removed identity value inside one of them is withheld instead of cleaned. ImageType's
# first two values are enumerated (ORIGINAL/DERIVED, PRIMARY/SECONDARY); the others are defined terms.
ENUMERATED_VALUES: dict[int, int] = {  # tag -> how many leading values are enumerated (0: all)
    0x00080008: 2,  # Image Type
    0x00080060: 0,  # Modality
    0x00280004: 0,  # Photometric Interpretation
    0x0040A040: 0,  # Value Type
    0x0040A010: 0,  # Relationship Type
    0x0040A050: 0,  # Continuity Of Content
    0x0040A491: 0,  # Completion Flag
    0x0040A493: 0,  # Verification Flag
    0x00280301: 0,  # Burned In Annotation
    0x00282110: 0,  # Lossy Image Compression
    0x00080068: 0,  # Presentation Intent Type
    0x00100040: 0,  # Patient's Sex
    0x00189004: 0,  # Content Qualification
    0x00200020: 0,  # Patient Orientation
}


def is_well_known_uid(uid: str) -> bool:
    """A UID that names a class/syntax/standard object rather than an instance (kept as is)."""
    return uid in UID_dictionary or uid.startswith("1.2.840.10008.")


def _is_numeric(s: str) -> bool:
    return set(s) <= _NUMERIC_CHARS


_IDENTIFIER_KEYWORDS = frozenset(
    {"AccessionNumber", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator"}
)


def _is_identifier(tag: int) -> bool:
    """Attributes whose values identify a person or a record (IDs, accession, address, phone)."""
    keyword = keyword_for_tag(tag) or ""
    return keyword.endswith(("ID", "IDs")) or keyword in _IDENTIFIER_KEYWORDS


def _is_marker_candidate(s: str) -> bool:
    if len(s) < _MIN_MARKER:
        return False
    if _is_numeric(s):
        return len(s) >= _MIN_NUMERIC_MARKER
    return s not in _OWN_TEXT


def _elem(tag: int, vr: str, value: Any) -> DataElement:
    return DataElement(tag, vr, value, validation_mode=_IGNORE)


_ZERO_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


def _encoded(vr: str, value: Any) -> bytes:
    """Encoding of the engine's own values (ASCII text, UIDs, zeros, bytes): the same in either byte order."""
    if isinstance(value, bytes):
        return value + b"\x00" if len(value) % 2 else value
    if vr in _ZERO_SIZES:
        if value != 0:
            raise ValueError("only zero is byte-order neutral")
        return b"\x00" * _ZERO_SIZES[vr]
    text = value if isinstance(value, str) else "\\".join(value)
    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def _sub_scope(scope: int, kind: str) -> int:
    if kind == SEQ_DUMMY:
        return scope | _SCOPE_DUMMY
    if kind == SEQ_IDENTITY:
        return scope | _SCOPE_DUMMY | _SCOPE_IDENTITY
    return scope


def _tag_text(tag: int) -> str:
    kw = keyword_for_tag(tag) if not (tag >> 16) & 1 else ""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' + kw if kw else ''}"


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one instance. Holds only new UIDs, codes and counts: no PHI."""

    withheld: bool
    withheld_reason: str | None
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    transfer_syntax: str
    instance_number: int | None
    series_number: int | None
    number_of_frames: int
    bytes_written: int


@dataclass(frozen=True)
class VerificationContext:
    """What the anonymiser knows about one file: the UIDs it replaced and created, and the source's
    removed string values (casefolded, split into identity markers and descriptors). Without a context
    :func:`verify_file` checks the structure only and accepts any non-well-known UID ``2.25.<digits>``."""

    original_uids: frozenset[str] = frozenset()
    new_uids: frozenset[str] = frozenset()
    markers: frozenset[str] = frozenset()  # identity values: names, IDs, dates, addresses, institutions...
    descriptors: frozenset[str] = frozenset()  # descriptive values: descriptions, comments, protocol...
    strict: frozenset[str] = frozenset()  # person-name components and identifiers: never excused as vocabulary


class _KeptValueLeak(DeidVerificationError):
    """A removed value of the source occurs inside a value the profile keeps. Carries where (paths of
    (sequence tag, item index) and the tag) and which removed values, for the anonymiser to clean those
    values; its reason names the first tag only (no value)."""

    def __init__(
        self, reason: str, *, locations: list[tuple[tuple[tuple[int, int], ...], int]], found: list[str]
    ) -> None:
        super().__init__(reason, code="deid_leak")
        self.locations = locations
        self.found = found


@dataclass
class _FileState:
    original_uids: set[str] = field(default_factory=set)
    new_uids: set[str] = field(default_factory=set)
    kept_uids: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)
    descriptors: set[str] = field(default_factory=set)
    strict: set[str] = field(default_factory=set)
    dates_changed: bool = False
    implicit: bool = False  # the source dataset's encoding, which the output keeps
    little: bool = True


class _Decider:
    """Per-tag decision cache for one (profile, options, IOD types at one depth); owned by one
    anonymiser/verifier."""

    __slots__ = ("_cache", "_options", "_profile", "_types")

    def __init__(self, profile: Profile, options: DeidOptions, types: Mapping[int, str] | None = None) -> None:
        self._profile = profile
        self._options = options
        self._types = types
        self._cache: dict[int, Decision] = {}

    def __call__(self, tag: int) -> Decision:
        key = int(tag)  # a plain int key: BaseTag's Python-level __eq__ would slow every lookup
        d = self._cache.get(key)
        if d is None:
            d = self._cache[key] = self._profile.decide(key, self._options, self._types)
        return d


class _Deciders:
    """The (top-level, nested) deciders of each SOP class: combined actions follow the IOD's types."""

    __slots__ = ("_by_class", "_options", "_profile")

    def __init__(self, profile: Profile, options: DeidOptions) -> None:
        self._profile = profile
        self._options = options
        self._by_class: dict[str, tuple[_Decider, _Decider]] = {}

    def __call__(self, sop_class: str) -> tuple[_Decider, _Decider]:
        pair = self._by_class.get(sop_class)
        if pair is None:
            types = iod_types().for_sop_class(sop_class)
            top, nested = types if types is not None else (None, None)
            pair = self._by_class[sop_class] = (
                _Decider(self._profile, self._options, top),
                _Decider(self._profile, self._options, nested),
            )
        return pair


def _first(ds: Dataset, tag: int) -> str:
    """First value of a short ASCII element (UI, CS, IS...) as text, without building a pydicom value."""
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        return (elem.value or b"").split(b"\\", 1)[0].strip(b"\x00 ").decode("latin_1")
    value = elem.value
    if value is None:
        return ""
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = next(iter(value), "")
    return str(value).strip("\x00 ")


def shift_date(value: str, days: int, vr: str) -> str | None:
    """A DA value (or a DT's date part, the rest kept) moved by `days`; None when it is not a full date."""
    v = value.strip()
    if len(v) < 8 or not v[:8].isdigit() or (vr == "DA" and len(v) != 8):
        return None
    try:
        moved = dt.date(int(v[:4]), int(v[4:6]), int(v[6:8])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}" + (v[8:] if vr == "DT" else "")


def _code_value(ds: Dataset) -> str:
    return _first(ds, CODE_VALUE) or _first(ds, LONG_CODE_VALUE)


def _local_code(ds: Dataset) -> bool:
    """A coded entry whose scheme is local or unknown: its values are free text."""
    return not is_public_scheme(_first(ds, CODING_SCHEME_DESIGNATOR))


def _first_int(ds: Dataset, tag: int) -> int | None:
    try:
        return int(_first(ds, tag))
    except ValueError:
        return None


def burned_in_reason(ds: Dataset) -> str | None:
    """Why an instance may show identity in its pixels or document, or None."""
    if _first(ds, 0x00080016) in ENCAPSULATED_DOCUMENT_CLASSES:
        return "encapsulated_document"
    if _first(ds, 0x00280301).upper() == "YES":
        return "burned_in_annotation"
    if _first(ds, 0x00280302).upper() == "YES":
        return "recognizable_visual_features"
    return None


# ------------------------------------------------------------------------------------------- anonymiser


class StudyAnonymiser:
    """Anonymise the instances of one study with one key (same key and source: same output bytes).

    Not shared between threads; cheap to create. Pickles as ``(uid_key, options)`` (a custom `profile` is
    not carried: workers load the checked-in one). Holds a UID cache and a per-tag decision cache only.
    """

    def __init__(self, uid_key: bytes, options: DeidOptions | None = None, *, profile: Profile | None = None) -> None:
        if not isinstance(uid_key, bytes | bytearray) or len(uid_key) < 16:
            raise ValueError("uid_key must be at least 16 bytes")
        self._key = bytes(uid_key)
        self.options = options or DeidOptions()
        self.profile = profile or Profile.load()
        self._deciders = _Deciders(self.profile, self.options)
        # the current file's deciders (top level, inside sequences), set per file by anonymise_file
        self._decide, self._decide_nested = self._deciders("")
        self._uids: dict[str, str] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_anonymiser, (self._key, self.options))

    def new_uid(self, uid: str) -> str:
        """``2.25.`` + decimal of the first 128 bits of HMAC-SHA256(uid_key, uid)."""
        new = self._uids.get(uid)
        if new is None:
            digest = hmac.new(self._key, uid.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
            new = self._uids[uid] = "2.25." + str(int.from_bytes(digest[:16], "big"))
        return new

    # -- public entry point
    def anonymise_file(self, src: Path | str, dst: Path | str) -> InstanceOutcome:
        """De-identify `src` into `dst` (atomic, verified). A withheld instance writes nothing: one whose pixel
        data is damaged (always) or that may show identity in its pixels (unless the policy says include)."""
        src, dst = Path(src), Path(dst)
        ds, pixels_cut = _read_source(src)
        meta = ds.file_meta
        ts = _first(meta, 0x00020010)
        sop_class = _first(ds, 0x00080016) or _first(meta, 0x00020002)
        sop_instance = _first(ds, 0x00080018)
        if not ts or not sop_class or not sop_instance:
            raise UnreadableDicomError("source lacks TransferSyntaxUID, SOPClassUID or SOPInstanceUID")

        damaged = pixels.SHORT if pixels_cut else pixel_data_reason(ds, ts)
        if damaged is not None:  # whatever the burned-in policy: a viewer cannot show what is not there
            return self._outcome(ds, sop_class, self.new_uid(sop_instance), ts, 0, withheld=damaged)
        scrubbed = burned_in.scrub(ds, ts, self.options.burned_in_text)  # OCR: text in the pixels masked
        if scrubbed.withheld is not None:
            return self._outcome(ds, sop_class, self.new_uid(sop_instance), ts, 0, withheld=scrubbed.withheld)
        ts = scrubbed.transfer_syntax
        reason = burned_in_reason(ds)
        if reason is not None and self.options.burned_in_policy != "include":
            if self.options.burned_in_policy == "fail":
                raise BurnedInPolicyError(f"instance may show identity: {reason}", code=reason)
            return self._outcome(ds, sop_class, self.new_uid(sop_instance), ts, 0, withheld=reason)

        self._decide, self._decide_nested = self._deciders(sop_class)
        implicit, little = ds.original_encoding
        st = _FileState(implicit=bool(implicit), little=little is not False)
        media_instance = _first(meta, 0x00020003)
        if media_instance and not is_well_known_uid(media_instance):
            st.original_uids.add(media_instance)
        encodings = codec.encodings_of(ds)
        self._clean(ds, st, 0, encodings)
        self._stamp(ds, st, pixels_cleaned=scrubbed.masked)
        new_instance = _first(ds, 0x00080018)
        context = VerificationContext(
            original_uids=frozenset(st.original_uids - st.kept_uids),
            new_uids=frozenset(st.new_uids),
            markers=frozenset(st.markers),
            descriptors=frozenset(st.descriptors - st.markers),
            strict=frozenset(st.strict),
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(_CLEAN_ROUNDS):
            try:
                chunks = self._encode(ds, sop_class, new_instance, ts, encodings)
            except Exception as exc:  # a value pydicom cannot encode: no output (reason names no value)
                raise DeidError(
                    f"cannot encode the de-identified dataset ({type(exc).__name__})", code="deid_encode"
                ) from None
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                _Verifier(self._deciders, self.options, context).run(tmp)
                os.replace(tmp, dst)
                break
            except _KeptValueLeak as leak:
                tmp.unlink(missing_ok=True)
                if attempt == _CLEAN_ROUNDS - 1:
                    raise DeidVerificationError(leak.reason, code=leak.code) from None
                withheld = self._clean_values(ds, leak.locations, leak.found, encodings)
                if withheld is not None:
                    return self._outcome(ds, sop_class, new_instance, ts, 0, withheld=withheld, replaced=True)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return self._outcome(ds, sop_class, new_instance, ts, sum(len(c) for c in chunks), withheld=None)

    def _clean_values(
        self,
        ds: Dataset,
        locations: list[tuple[tuple[tuple[int, int], ...], int]],
        found: list[str],
        encodings: list[str],
    ) -> str | None:
        """Replace every kept value (or value of a multi-valued attribute) that contains a removed value of
        the source with the dummy of its VR, which keeps the object valid; a public code's meaning becomes
        the dictionary's meaning. Returns a withheld reason when no valid cleaning exists (an enumerated
        value), else None."""
        for path, tag in locations:
            item, enc = ds, codec.encodings_of(ds, encodings)
            for seq_tag, index in path:
                item = item[seq_tag].value[index]
                enc = codec.encodings_of(item, enc)
            elem = item.get_item(tag)
            if elem is None:
                continue
            vr = self._decide(tag).vr or str(item[tag].VR)
            values = codec.text_values(elem, vr, enc)
            if tag == CODE_MEANING:
                meaning = dictionary_meaning(_first(item, CODING_SCHEME_DESIGNATOR), _code_value(item))
                if meaning is not None and not any(m in meaning.casefold() for m in found):
                    item[tag] = _elem(tag, vr, meaning)
                    continue
            enumerated = ENUMERATED_VALUES.get(tag)
            out: list[str] = []
            for i, value in enumerate(values):
                if any(m in value.casefold() for m in found):
                    if enumerated is not None and (enumerated == 0 or i < enumerated):
                        return IDENTITY_IN_REQUIRED_VALUE
                    out.append(str(DUMMY_BY_VR.get(vr, DUMMY_TEXT)))
                else:
                    out.append(value)
            if out:
                item[tag] = _elem(tag, vr, out[0] if len(out) == 1 else out)
        return None

    # -- the walk
    def _clean(self, ds: Dataset, st: _FileState, scope: int, encodings: list[str], nested: bool = False) -> None:
        decide = self._decide_nested if nested else self._decide
        if 0x00080005 in ds:
            encodings = codec.encodings_of(ds, encodings)
        for tag in list(ds.keys()):
            d = decide(tag)
            kind = d.kind
            if kind == KEEP:
                continue
            if kind == REMOVE:
                if d.reason == "table":
                    self._gather(ds, tag, d, st, encodings, nested=True)
                    if d.vr in DATE_VRS:
                        st.dates_changed = True
                del ds[tag]
            elif kind == UID:
                self._replace_uids(ds, tag, st, class_like=False)
            elif kind == CLASS_UID:
                self._replace_uids(ds, tag, st, class_like=True)
            elif kind == SHIFT:
                elem = ds.get_item(tag)
                values = codec.text_values(elem, d.vr, encodings) if elem is not None else []
                if values:
                    self._gather(ds, tag, d, st, encodings, nested=False)  # the source's dates: markers
                    days = self.options.date_shift_days
                    moved = [shift_date(v, days, d.vr) or DUMMY_BY_VR[d.vr] for v in values]
                    ds[tag] = self._raw(tag, d.vr, _encoded(d.vr, moved), st)
                    st.dates_changed = True
            elif kind in (SEQ, SEQ_DUMMY, SEQ_IDENTITY):
                seq = self._sequence(ds, tag)
                if seq is None:
                    del ds[tag]  # not parseable as a sequence: not kept (fail closed)
                    continue
                for item in seq:
                    self._clean(item, st, _sub_scope(scope, kind), encodings, True)
            elif kind == EMPTY:
                self._gather(ds, tag, d, st, encodings, nested=True)
                elem = ds.get_item(tag)
                if d.vr in DATE_VRS and elem is not None and elem.value:
                    st.dates_changed = True
                ds[tag] = _elem(tag, "SQ", []) if d.vr == "SQ" else self._raw(tag, d.vr, b"", st)
            elif kind == DUMMY:
                self._gather(ds, tag, d, st, encodings, nested=False)
                if d.vr in DATE_VRS:
                    st.dates_changed = True
                ds[tag] = self._raw(tag, d.vr, _encoded(d.vr, self._dummy_value(ds, tag, d.vr)), st)
            elif (
                (kind == KEEP_TEXT and scope & _SCOPE_DUMMY)
                or (kind == KEEP_CODE and scope & _SCOPE_IDENTITY)
                or (kind == KEEP_CODE and scope & _SCOPE_DUMMY and _local_code(ds))
            ):
                elem = ds.get_item(tag)
                if elem is not None and elem.value:
                    identity = bool(scope & _SCOPE_IDENTITY)
                    self._gather(ds, tag, d, st, encodings, nested=False, identity=identity)
                    ds[tag] = self._raw(tag, d.vr, _encoded(d.vr, DUMMY_BY_VR[d.vr]), st)

    @staticmethod
    def _sequence(ds: Dataset, tag: int) -> Sequence | None:
        try:
            elem = ds.get_item(tag)
            if isinstance(elem, RawDataElement):  # e.g. a defined-length sequence in Implicit VR
                elem = ds[tag]
        except Exception:
            return None
        if elem is None or elem.VR != "SQ" or not isinstance(elem.value, Sequence):
            return None
        return elem.value

    def _replace_uids(self, ds: Dataset, tag: int, st: _FileState, class_like: bool) -> None:
        elem = ds.get_item(tag)
        if elem is None:
            return
        values = codec.uid_values(elem)
        if not values:
            return
        out: list[str] = []
        changed = False
        for v in values:
            if not v or class_like or is_well_known_uid(v):
                st.kept_uids.add(v)
                out.append(v)
            else:
                st.original_uids.add(v)
                n = self.new_uid(v)
                st.new_uids.add(n)
                out.append(n)
                changed = True
        if changed:
            ds[tag] = self._raw(tag, "UI", _encoded("UI", out), st)

    def _gather(
        self,
        ds: Dataset,
        tag: int,
        d: Decision,
        st: _FileState,
        encodings: list[str],
        *,
        nested: bool,
        identity: bool = False,
    ) -> None:
        """Remember what a value the profile does not keep looked like (for the verifier's leak scan)."""
        elem = ds.get_item(tag)
        if elem is None:
            return
        vr = d.vr
        if vr == "UI":
            st.original_uids.update(v for v in codec.uid_values(elem) if v and not is_well_known_uid(v))
        elif vr in TEXT_VRS:
            values = codec.text_values(elem, vr, encodings)
            if vr == "PN":
                values = list(codec.pn_components(values))
            target = st.descriptors if d.descriptor and not identity else st.markers
            strict = vr == "PN" or _is_identifier(tag)
            for s in values:
                cf = s.casefold()
                if _is_marker_candidate(cf):
                    target.add(cf)
                    if strict:
                        st.strict.add(cf)
        elif vr == "SQ" and nested:
            seq = self._sequence(ds, tag)
            for item in seq or ():
                self._gather_item(item, st, encodings)

    def _gather_item(self, item: Dataset, st: _FileState, encodings: list[str]) -> None:
        """Inside a removed/emptied sequence: what the table does not keep, at any depth, and every UID."""
        if 0x00080005 in item:
            encodings = codec.encodings_of(item, encodings)
        for tag in list(item.keys()):
            d = self._decide_nested(tag)
            if d.vr == "SQ" and not (d.kind == REMOVE and d.reason != "table"):
                for sub in self._sequence(item, tag) or ():
                    self._gather_item(sub, st, encodings)
            elif d.vr == "UI" or (d.reason == "table" and d.kind != KEEP):
                self._gather(item, tag, d, st, encodings, nested=False)

    @staticmethod
    def _dummy_value(ds: Dataset, tag: int, vr: str) -> Any:
        if tag == ENCAPSULATED_DOCUMENT:
            mime = _first(ds, MIME_TYPE_OF_ENCAPSULATED_DOCUMENT)
            blank = BLANK_PDF if "pdf" in mime.lower() else b"\x00\x00"
            if ENCAPSULATED_DOCUMENT_LENGTH in ds:
                ds[ENCAPSULATED_DOCUMENT_LENGTH] = _elem(ENCAPSULATED_DOCUMENT_LENGTH, "UL", len(blank))
            return blank
        return DUMMY_BY_VR.get(vr, b"\x00\x00")

    @staticmethod
    def _raw(tag: int, vr: str, payload: bytes, st: _FileState) -> RawDataElement:
        """A pre-encoded element (cheaper than a DataElement; written byte-for-byte like the kept ones)."""
        return RawDataElement(BaseTag(tag), vr, len(payload), payload, 0, st.implicit, st.little)

    def _stamp(self, ds: Dataset, st: _FileState, *, pixels_cleaned: bool = False) -> None:
        raw = self._raw
        ds[0x00120062] = raw(0x00120062, "CS", _encoded("CS", "YES"), st)  # Patient Identity Removed
        ds[0x00120063] = raw(0x00120063, "LO", _encoded("LO", DEID_METHOD), st)  # De-identification Method
        codes = [DEID_CODES["basic"]]
        if self.options.dates != "remove":
            codes.append(DEID_CODES[self.options.dates])
        if self.options.retain_patient_characteristics:
            codes.append(DEID_CODES["patient"])
        if self.options.retain_device_identity:
            codes.append(DEID_CODES["device"])
        if pixels_cleaned:
            codes.append(DEID_CODES["pixels"])
        items = []
        for value, meaning in codes:
            item = Dataset()
            item[0x00080100] = raw(0x00080100, "SH", _encoded("SH", value), st)
            item[0x00080102] = raw(0x00080102, "SH", _encoded("SH", "DCM"), st)
            item[0x00080104] = raw(0x00080104, "LO", _encoded("LO", meaning), st)
            items.append(item)
        ds[0x00120064] = _elem(0x00120064, "SQ", items)  # De-identification Method Code Sequence
        if st.dates_changed or self.options.dates == "keep":  # Longitudinal Temporal Information Modified
            ds[0x00280303] = raw(0x00280303, "CS", _encoded("CS", LONGITUDINAL[self.options.dates]), st)

    @staticmethod
    def _encode(
        ds: Dataset, sop_class: str, sop_instance: str, ts: str, encodings: list[str]
    ) -> list[bytes | bytearray]:
        implicit = ts == ImplicitVRLittleEndian
        if codec.fast_path_supported(ts) and tuple(ds.original_encoding) == (implicit, True):
            meta = codec.encode_file_meta(
                sop_class, sop_instance, ts, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
            )
            return [meta, codec.encode_dataset(ds, implicit, encodings)]
        # Deflated, big endian, or a dataset whose encoding differs from its transfer syntax: pydicom writes.
        new_meta = FileMetaDataset()
        new_meta.FileMetaInformationVersion = b"\x00\x01"
        new_meta.MediaStorageSOPClassUID = PyUID(sop_class)
        new_meta.MediaStorageSOPInstanceUID = PyUID(sop_instance)
        new_meta.TransferSyntaxUID = PyUID(ts)
        new_meta.ImplementationClassUID = PyUID(IMPLEMENTATION_CLASS_UID)
        new_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = new_meta
        ds.preamble = b"\x00" * 128
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return [buf.getvalue()]

    def _outcome(
        self,
        ds: Dataset,
        sop_class: str,
        sop_instance: str,
        ts: str,
        size: int,
        *,
        withheld: str | None,
        replaced: bool = False,
    ) -> InstanceOutcome:
        """`replaced`: the dataset's UIDs are already the new ones (else a withheld source's are mapped)."""

        def uid_of(tag: int) -> str | None:
            value = _first(ds, tag)
            if not value:
                return None
            keep = withheld is None or replaced or is_well_known_uid(value)
            return value if keep else self.new_uid(value)

        return InstanceOutcome(
            withheld=withheld is not None,
            withheld_reason=withheld,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            study_instance_uid=uid_of(0x0020000D),
            series_instance_uid=uid_of(0x0020000E),
            modality=_first(ds, 0x00080060) or None,
            transfer_syntax=ts,
            instance_number=_first_int(ds, 0x00200013),
            series_number=_first_int(ds, 0x00200011),
            number_of_frames=_first_int(ds, 0x00280008) or 1,
            bytes_written=size,
        )


def _rebuild_anonymiser(uid_key: bytes, options: DeidOptions) -> StudyAnonymiser:
    return StudyAnonymiser(uid_key, options)


def _read_source(src: Path) -> tuple[Dataset, bool]:
    """The source dataset, and whether the file ends inside its pixel data. pydicom gives up the whole dataset
    when a file ends inside undefined-length (encapsulated) pixel data: then the header before the pixel data
    is read alone, and the instance is withheld (a defined-length value cut short reads as a short value)."""
    try:
        ds = dcmread(src)
        cut = False
        if SOP_INSTANCE_UID not in ds:
            header = dcmread(src, stop_before_pixels=True)
            if SOP_INSTANCE_UID in header:
                ds, cut = header, True
    except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDicomError(f"not a readable DICOM Part-10 file ({type(exc).__name__})") from None
    if not getattr(ds, "file_meta", None):
        raise UnreadableDicomError("no file meta information")
    return ds, cut


# ------------------------------------------------------------------------------------------- verifier


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return (tag >> 16) == 0x7FE0 and int(tag) in PIXEL_TAGS


class _Verifier:
    def __init__(self, deciders: _Deciders, options: DeidOptions, context: VerificationContext | None) -> None:
        self._deciders = deciders
        self._decide, self._decide_nested = deciders("")
        self._options = options
        self._ctx = context
        self._collect = bool(context and (context.markers or context.descriptors))
        # (path of (sequence tag, item index), tag, casefolded text) of every text value kept
        self._texts: list[tuple[tuple[tuple[int, int], ...], int, str]] = []
        self._vocab: list[str] = []  # kept controlled-vocabulary values (CS)
        self._codes: list[tuple[str, str, int, str]] = []  # (scheme, code value, tag, text) of public codes

    @staticmethod
    def _fail(tag: int | None, problem: str, code: str = "deid_verification_failed") -> None:
        where = _tag_text(tag) + ": " if tag is not None else ""
        raise DeidVerificationError(where + problem, code=code)

    def run(self, path: Path) -> None:
        with open(path, "rb") as fh:
            head = fh.read(144)
            if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
                self._fail(None, "output is not a DICOM Part-10 file with a file meta group length")
            meta_bytes = fh.read(int.from_bytes(head[140:144], "little"))
            try:
                meta = read_dataset(BytesIO(head[132:] + meta_bytes), False, True)
            except Exception:
                self._fail(None, "output file meta unreadable")
            for tag in list(meta.keys()):
                if tag not in FILE_META_ALLOWED:
                    self._fail(tag, "file meta attribute not allowed")
            ts = _first(meta, 0x00020010)
            if not ts:
                self._fail(None, "output has no TransferSyntaxUID")
            implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
            body: bytes | None = None
            fp: Any = fh  # the file itself: Pixel Data is never read, only skipped
            if ts == DeflatedExplicitVRLittleEndian:
                body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read())
                fp = BytesIO(body)
            try:
                ds = read_dataset(fp, implicit, little, stop_when=_at_pixels)
            except Exception:
                self._fail(None, "output dataset unreadable")
            pixel_start = fp.tell()
            self._check_pixel_tail(fp, pixel_start, implicit, little)
            if body is None:
                fh.seek(0)
                header = fh.read(pixel_start)
            else:
                header = head + meta_bytes + body[:pixel_start]
        self._check_meta(meta, ds)
        self._decide, self._decide_nested = self._deciders(_first(ds, 0x00080016))
        self._walk(ds, 0, codec.encodings_of(ds))
        reason = burned_in_reason(ds)
        if reason is not None and self._options.burned_in_policy != "include":
            self._fail(None, f"instance with {reason} written under policy {self._options.burned_in_policy}")
        if _first(ds, 0x00120062) != "YES" or not _first(ds, 0x00120063):
            self._fail(None, "PatientIdentityRemoved/DeidentificationMethod not set")
        self._scan(header, ds)

    def _check_meta(self, meta: Dataset, ds: Dataset) -> None:
        if _first(meta, 0x00020003) != _first(ds, 0x00080018):
            self._fail(0x00020003, "does not match SOPInstanceUID")
        if _first(meta, 0x00020002) != _first(ds, 0x00080016):
            self._fail(0x00020002, "does not match SOPClassUID")
        if _first(meta, 0x00020012) != IMPLEMENTATION_CLASS_UID:
            self._fail(0x00020012, "not this engine's ImplementationClassUID")
        self._check_uids(0x00020003, meta.get_item(0x00020003), class_like=False)

    def _check_pixel_tail(self, fp: Any, pos: int, implicit: bool, little: bool) -> None:
        """Only pixel data elements may follow where the reader stopped; their values are skipped."""
        end = "<" if little else ">"
        size = fp.seek(0, 2)
        fp.seek(pos)
        while pos < size:
            hdr = fp.read(8)
            if len(hdr) < 8:
                if hdr.strip(b"\x00"):
                    self._fail(None, "trailing bytes after the dataset")
                return
            group, element = struct.unpack_from(end + "HH", hdr)
            tag = group << 16 | element
            if tag not in PIXEL_TAGS:
                self._fail(tag, "element after the pixel data")
            if implicit:
                (length,) = struct.unpack_from(end + "I", hdr, 4)
                pos += 8
            elif codec.explicit_long_vr(hdr[4:6]):
                (length,) = struct.unpack(end + "I", fp.read(4))
                pos += 12
            else:
                (length,) = struct.unpack_from(end + "H", hdr, 6)
                pos += 8
            if length != 0xFFFFFFFF:
                pos += length
            else:
                while True:  # encapsulated fragments up to the sequence delimiter
                    item = fp.read(8)
                    if len(item) < 8:
                        self._fail(tag, "truncated encapsulated pixel data")
                    ig, ie, ilen = struct.unpack(end + "HHI", item)
                    pos += 8
                    if (ig, ie) == (0xFFFE, 0xE0DD):
                        break
                    if (ig, ie) != (0xFFFE, 0xE000):
                        self._fail(tag, "malformed encapsulated pixel data")
                    pos += ilen
                    fp.seek(pos)
            if pos > size:
                self._fail(tag, "truncated pixel data")
            fp.seek(pos)

    def _check_uids(self, tag: int, elem: DataElement | RawDataElement | None, *, class_like: bool) -> None:
        if elem is None:
            return
        ctx = self._ctx
        for v in codec.uid_values(elem):
            if not v or is_well_known_uid(v):
                continue
            if ctx is not None and v in ctx.original_uids:
                self._fail(tag, "original UID present", code="deid_original_uid")
            if class_like:
                continue
            if ctx is not None:
                if v not in ctx.new_uids:
                    self._fail(tag, "UID neither well-known nor a replacement", code="deid_original_uid")
            elif not (v.startswith("2.25.") and v[5:].isdigit()):
                self._fail(tag, "UID neither well-known nor of the replacement form", code="deid_original_uid")

    def _texts_of(self, ds: Dataset, tag: int, vr: str, encodings: list[str]) -> list[str]:
        elem = ds.get_item(tag)
        return codec.text_values(elem, vr, encodings) if elem is not None else []

    def _is_dummy(self, ds: Dataset, tag: int, vr: str, encodings: list[str]) -> bool:
        elem = ds.get_item(tag)
        if elem is None:
            return False
        if tag == ENCAPSULATED_DOCUMENT:
            return bytes(elem.value or b"") in (BLANK_PDF, b"\x00\x00")
        expected = DUMMY_BY_VR.get(vr, b"\x00\x00")
        if vr in TEXT_VRS or vr in ("IS", "DS"):
            values = codec.text_values(elem, vr, encodings)
            return len(values) == 1 and values[0] == str(expected)
        if isinstance(expected, bytes):
            return bytes(ds[tag].value or b"") == expected
        value = ds[tag].value
        return value is not None and not isinstance(value, list | tuple) and float(value) == 0

    def _walk(self, ds: Dataset, scope: int, encodings: list[str], path: tuple[tuple[int, int], ...] = ()) -> None:
        decide = self._decide_nested if path else self._decide
        collect = self._collect
        if 0x00080005 in ds:
            encodings = codec.encodings_of(ds, encodings)
        local: bool | None = None  # whether this item is a coded entry of a local/unknown scheme (lazy)
        for tag in list(ds.keys()):
            d = decide(tag)
            kind, vr = d.kind, d.vr
            if kind == KEEP_CODE:
                if local is None:
                    local = _local_code(ds)
                if local:
                    kind = KEEP_TEXT  # a local code is free text: never vocabulary, dummy inside D sequences
            if kind in (KEEP, SHIFT):
                if collect and vr in TEXT_VRS:
                    texts = [t.casefold() for t in self._texts_of(ds, tag, vr, encodings)]
                    self._texts.extend((path, tag, t) for t in texts)
                    if vr == "CS":
                        self._vocab.extend(texts)
            elif kind == REMOVE:
                self._fail(tag, f"attribute present that the profile removes ({d.reason})", code="deid_leak")
            elif kind == UID:
                self._check_uids(tag, ds.get_item(tag), class_like=False)
            elif kind == CLASS_UID:
                self._check_uids(tag, ds.get_item(tag), class_like=True)
            elif kind in (SEQ, SEQ_DUMMY, SEQ_IDENTITY):
                elem = ds[tag]
                if elem.VR != "SQ":
                    self._fail(tag, "sequence attribute is not a sequence")
                sub = _sub_scope(scope, kind)
                for index, item in enumerate(elem.value):
                    self._walk(item, sub, encodings, (*path, (tag, index)))
            elif kind == EMPTY:
                elem = ds.get_item(tag)
                if elem is not None and (elem.value if vr != "SQ" else len(ds[tag].value)):
                    self._fail(tag, "attribute the profile empties (Z) has a value", code="deid_leak")
            elif kind == DUMMY:
                if not self._is_dummy(ds, tag, vr, encodings):
                    self._fail(tag, "attribute the profile replaces (D) is not the dummy", code="deid_leak")
            elif (kind == KEEP_TEXT and scope & _SCOPE_DUMMY) or (kind == KEEP_CODE and scope & _SCOPE_IDENTITY):
                elem = ds.get_item(tag)
                if elem is not None and elem.value and not self._is_dummy(ds, tag, vr, encodings):
                    self._fail(tag, "free text inside a D sequence is not the dummy", code="deid_leak")
            elif collect:  # KEEP_TEXT / KEEP_CODE outside a dummy scope
                texts = [t.casefold() for t in self._texts_of(ds, tag, vr, encodings)]
                self._texts.extend((path, tag, t) for t in texts)
                if kind == KEEP_CODE:
                    scheme, value = _first(ds, CODING_SCHEME_DESIGNATOR), _code_value(ds)
                    self._codes.extend((scheme, value, tag, t) for t in texts)

    def _code_vocabulary(self, markers: frozenset[str]) -> list[str]:
        """Kept values of public coded entries that are vocabulary: designators and code values, and meanings
        that contain no removed value or that are the meaning pydicom's dictionary gives the code."""
        meanings = "\x00".join(t for _s, _v, tag, t in self._codes if tag == CODE_MEANING)
        present = [m for m in markers if m in meanings]
        out = []
        for scheme, value, tag, t in self._codes:
            if tag == CODE_MEANING and any(m in t for m in present) and not matches_dictionary(scheme, value, t):
                continue
            out.append(t)
        return out

    def _scan(self, header: bytes, ds: Dataset) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        # A removed value found inside a kept controlled-vocabulary value (a CS such as BodyPartExamined, or a
        # public coded entry such as ProcedureCodeSequence's SCT code whose meaning is the dictionary's) is
        # vocabulary, not identity: e.g. a removed StudyDescription "CT HEAD" next to a kept CodeMeaning
        # "CT Head". A removed descriptor equal to a whole kept value is vocabulary too (StudyDescription
        # "Brain", PositionReferenceIndicator "Brain"); identity markers (names, IDs, dates, addresses,
        # institutions) are never excused that way, and codes of local schemes are never vocabulary.
        vocab = "\x00".join([*self._vocab, *self._code_vocabulary(ctx.markers | ctx.descriptors)])
        whole_values = {t for _path, _tag, t in self._texts}
        # Person names and identifiers are never excused: a name inside a kept code string is still a name.
        markers = [m for m in ctx.markers if m not in vocab or m in ctx.strict]
        markers += [m for m in ctx.descriptors if m not in vocab and m not in whole_values]
        if markers:
            haystack = "\x00".join(t for _path, _tag, t in self._texts)
            found = [m for m in markers if m in haystack]
            if found:
                locations = [(path, tag) for path, tag, t in self._texts if any(m in t for m in found)]
                raise _KeptValueLeak(
                    _tag_text(locations[0][1]) + ": a removed value of the source occurs in the output",
                    locations=locations,
                    found=found,
                )
        lowered = header.lower()
        encodings = ["ascii", "utf-8", *codec.encodings_of(ds)]
        for m in markers:
            if _is_numeric(m):
                continue  # dates/times/numbers: compared with decoded text only (UIDs are digits too)
            for enc in encodings:
                try:
                    needle = m.encode(enc).lower()
                except (UnicodeError, LookupError):
                    continue
                if needle in lowered:
                    self._fail(None, "a removed value of the source occurs in the output bytes", "deid_leak")
        for uid in ctx.original_uids:
            if len(uid) >= 16 and uid.encode("ascii", "replace") in header:
                self._fail(None, "an original UID occurs in the output bytes", code="deid_original_uid")


def verify_file(
    path: Path | str,
    *,
    options: DeidOptions | None = None,
    context: VerificationContext | None = None,
    profile: Profile | None = None,
) -> None:
    """Re-read an output file; raise :class:`DeidVerificationError` if anything the profile does not keep is
    present at any depth. With a `context` also the UID and leak checks (see :class:`VerificationContext`)."""
    opts = options or DeidOptions()
    _Verifier(_Deciders(profile or Profile.load(), opts), opts, context).run(Path(path))


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studypub.deid.engine", description="DICOM de-identification")
    parser.add_argument("--describe", action="store_true", help="print what the profile does, one line per rule")
    parser.add_argument("--bench", type=Path, metavar="DIR", help="anonymise every file of DIR and time it")
    parser.add_argument("--generate", type=int, default=0, help="first write N synthetic 512x512 CTs to DIR")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if args.describe:
        for row in Profile.load().describe():
            action = f"{row['table_action']:<7} -> {row['applied_action']:<6}"
            print(f"{row['tag']:<24} {action} {row['name']}: {row['why']}")
        return 0
    if args.bench:
        from studypub.deid.bench import run_bench

        run_bench(args.bench, args.generate, [int(x) for x in args.processes.split(",")], args.repeat)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
