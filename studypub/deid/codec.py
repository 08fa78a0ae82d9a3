"""Fast encode/decode helpers for the engine (no values are logged or kept).

pydicom's writer costs ~25 us per element (≈2–3 ms for a CT header), more than the whole anonymisation. For
the little-endian transfer syntaxes (Implicit/Explicit VR Little Endian and the encapsulated ones) the engine
serialises the cleaned dataset itself: raw elements (everything it keeps, including Pixel Data) are copied
byte-for-byte with a fresh header, sequences are written with undefined lengths, and elements the engine
created are encoded directly (or by pydicom's ``write_data_element``). A raw element read in another
encoding than the output's (a source whose dataset does not match its transfer syntax) is converted first.
Deflated and big-endian files go through ``Dataset.save_as(..., enforce_file_format=True)``. Every output is
re-parsed by pydicom's reader in the verification step.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, cast

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_LONG_VR_BYTES = frozenset(v.encode() for v in LONG_VRS)
_TAG = struct.Struct("<HH")
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_IMPLICIT = struct.Struct("<HHI")
_UNDEFINED = 0xFFFFFFFF
_ITEM = _IMPLICIT.pack(0xFFFE, 0xE000, _UNDEFINED)
_ITEM_END = _IMPLICIT.pack(0xFFFE, 0xE00D, 0)
_SEQ_END = _IMPLICIT.pack(0xFFFE, 0xE0DD, 0)
# Text VRs whose values are single (a backslash is data, not a separator).
SINGLE_VALUE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}
_TEXT_DELIMITERS = {0x5C}


def fast_path_supported(transfer_syntax: str) -> bool:
    return transfer_syntax not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)


def encodings_of(ds: Dataset, parent: list[str] | None = None) -> list[str]:
    """Python codecs of a dataset's (0008,0005), or the parent's when it has none."""
    elem = ds.get_item(0x00080005)
    if elem is None or not elem.value:
        return parent if parent is not None else ["iso8859"]
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        names: Any = [v.strip().decode("ascii", "replace") for v in raw.split(b"\\")]
    else:
        names = elem.value if not isinstance(elem.value, str) else [elem.value]
    try:
        return convert_encodings(list(names))
    except Exception:  # an unknown character set: decode as latin-1 with replacement (never fails)
        return ["latin_1"]


def text_values(elem: DataElement | RawDataElement, vr: str, encodings: list[str]) -> list[str]:
    """The string values of a text element, decoded without building a pydicom value (fast for raw)."""
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw:
            return []
        if raw.isascii():
            text = raw.decode("ascii")
        else:
            delims = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
            try:
                text = decode_bytes(raw, encodings, delims)
            except Exception:
                text = raw.decode("latin_1")
        parts = [text] if vr in SINGLE_VALUE_TEXT_VRS else text.split("\\")
        return [p.strip("\x00 ") for p in parts if p.strip("\x00 ")]
    value = elem.value
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else list(value)
    out = []
    for v in values:
        if isinstance(v, bytes):
            continue
        s = str(v).strip("\x00 ")
        if s:
            out.append(s)
    return out


def uid_values(elem: DataElement | RawDataElement) -> list[str]:
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        if not raw:
            return []
        return [v.strip(b"\x00 ").decode("ascii", "replace") for v in raw.split(b"\\")]
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value.strip("\x00 ")]
    return [str(v).strip("\x00 ") for v in value]


def pn_components(values: list[str]) -> Iterator[str]:
    for s in values:
        yield s
        for group in s.split("="):
            for comp in group.split("^"):
                comp = comp.strip()
                if comp:
                    yield comp


def _header(out: bytearray, tag: int, vr: str | None, length: int, implicit: bool) -> None:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        out += _IMPLICIT.pack(group, element, length)
    elif vr is None or len(vr) != 2:
        raise ValueError(f"cannot write VR {vr!r} for ({group:04X},{element:04X}) in explicit VR")
    elif vr in LONG_VRS:
        out += _LONG.pack(group, element, vr.encode(), length)
    else:
        out += _SHORT.pack(group, element, vr.encode(), length)


def encode_dataset(ds: Dataset, implicit: bool, encodings: list[str]) -> bytearray:
    """Little-endian encoding of `ds` (items with undefined length)."""
    out = bytearray()
    _encode_into(ds, out, implicit, encodings)
    return out


def _encode_into(ds: Dataset, out: bytearray, implicit: bool, encodings: list[str]) -> None:
    if 0x00080005 in ds:
        encodings = encodings_of(ds, encodings)
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag)
        if elem is None:
            continue
        if isinstance(elem, RawDataElement) and (elem.is_implicit_VR != implicit or not elem.is_little_endian):
            elem = ds[tag]  # read with another encoding than the output's (a mislabelled source): convert
        if isinstance(elem, RawDataElement):
            value = elem.value or b""
            if elem.length == _UNDEFINED:  # encapsulated pixel data (fragments follow, delimiter excluded)
                _header(out, tag, elem.VR, _UNDEFINED, implicit)
                out += value
                out += _SEQ_END
            else:
                _header(out, tag, elem.VR, len(value), implicit)
                out += value
            continue
        if elem.VR == "SQ":
            _header(out, tag, "SQ", _UNDEFINED, implicit)
            for item in elem.value:
                out += _ITEM
                _encode_into(item, out, implicit, encodings)
                out += _ITEM_END
            out += _SEQ_END
            continue
        if " or " in elem.VR:
            elem = cast(DataElement, correct_ambiguous_vr_element(elem, ds, True))
        if elem.is_undefined_length and isinstance(elem.value, bytes):  # converted encapsulated pixel data
            _header(out, tag, elem.VR, _UNDEFINED, implicit)
            out += elem.value
            out += _SEQ_END
            continue
        encoded = _encode_value(elem, encodings)
        if encoded is not None:
            _header(out, tag, elem.VR, len(encoded), implicit)
            out += encoded
            continue
        buf = DicomBytesIO()
        buf.is_little_endian = True
        buf.is_implicit_VR = implicit
        write_data_element(buf, elem, encodings)
        out += buf.getvalue()


_TEXT_WRITE_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UR", "UT", "UI"})
_STRUCT_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}


def _encode_value(elem: DataElement, encodings: list[str]) -> bytes | None:
    """Encode the common value types directly; None means "let pydicom do it"."""
    vr, value = elem.VR, elem.value
    if value is None or (isinstance(value, str | bytes | list) and len(value) == 0):
        return b""
    if vr in _TEXT_WRITE_VRS:
        values = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) for v in values):
            return None
        text = "\\".join(values)
        if not text.isascii():
            return None  # character-set encoding (ISO 2022 escapes...) is pydicom's job
        raw = text.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    if vr in ("OB", "OW", "UN", "OF", "OL", "OD", "OV") and isinstance(value, bytes):
        return value + b"\x00" if len(value) % 2 else value
    fmt = _STRUCT_FORMATS.get(vr)
    if fmt is not None:
        values = [value] if isinstance(value, int | float) else list(value)
        try:
            return struct.pack(f"<{len(values)}{fmt}", *values)
        except (struct.error, TypeError):
            return None
    return None


def _meta_element(out: bytearray, element: int, vr: str, value: bytes) -> None:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    _header(out, 0x00020000 | element, vr, len(value), False)
    out += value


def encode_file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, impl_uid: str, impl_name: str) -> bytes:
    """Preamble (zeros), 'DICM' and a fresh File Meta Information group (explicit VR little endian)."""
    body = bytearray()
    _meta_element(body, 0x0001, "OB", b"\x00\x01")
    _meta_element(body, 0x0002, "UI", sop_class.encode("ascii"))
    _meta_element(body, 0x0003, "UI", sop_instance.encode("ascii"))
    _meta_element(body, 0x0010, "UI", transfer_syntax.encode("ascii"))
    _meta_element(body, 0x0012, "UI", impl_uid.encode("ascii"))
    _meta_element(body, 0x0013, "SH", impl_name.encode("ascii"))
    head = bytearray(b"\x00" * 128 + b"DICM")
    _header(head, 0x00020000, "UL", 4, False)
    head += struct.pack("<I", len(body))
    return bytes(head + body)


def explicit_long_vr(vr_bytes: bytes) -> bool:
    return vr_bytes in _LONG_VR_BYTES
