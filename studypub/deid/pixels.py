"""Pixel data integrity: is an instance's pixel data as long as its own header says? Nothing is decoded.

A file cut short on its way from the modality or the PACS (or written by a broken device) still parses: pydicom
reads what is there, and the engine would copy it byte-for-byte into the archive, where viewers show garbage,
stop, or crash. :func:`pixel_data_reason` says why such an instance must be withheld, or None:

- Native (uncompressed) pixel data must hold at least Rows × Columns × SamplesPerPixel × NumberOfFrames ×
  BitsAllocated bits (rounded up to whole bytes; YBR_FULL_422 stores two samples per pixel). Longer is fine
  (padding to an even length, or trailing bytes some devices write); only shorter is a defect.
- Encapsulated (compressed) pixel data must be well-formed items (the Basic Offset Table read by pydicom's
  :func:`~pydicom.encaps.parse_basic_offsets`, then the fragments' item headers), no fragment may run past the
  end of the data, and every frame needs a fragment with data: through the Basic Offset Table where it maps
  fragments to frames, else by counting non-empty fragments (a fragment never holds two frames, PS3.5 A.4).
  MPEG/HEVC video is one stream over all its fragments: there at least one fragment must hold data.

Reasons are short codes (like the burned-in ones) and never carry a value of the file.
"""

from __future__ import annotations

import itertools
import struct
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets
from pydicom.multival import MultiValue
from pydicom.uid import MPEGTransferSyntaxes

__all__ = [
    "PIXEL_DATA_REASONS",
    "expected_native_length",
    "pixel_data_reason",
]

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
_BITS_OF = {PIXEL_DATA: None, FLOAT_PIXEL_DATA: 32, DOUBLE_FLOAT_PIXEL_DATA: 64}  # None: BitsAllocated says
ROWS, COLUMNS, SAMPLES_PER_PIXEL, BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280002, 0x00280100
NUMBER_OF_FRAMES, PHOTOMETRIC_INTERPRETATION = 0x00280008, 0x00280004

SHORT = "pixel_data_short"
MISSING_FRAMES = "pixel_data_missing_frames"
MALFORMED = "pixel_data_malformed"
UNDESCRIBED = "pixel_data_undescribed"
PIXEL_DATA_REASONS = {
    SHORT: "the pixel data is shorter than its rows, columns, samples, frames and bits say",
    MISSING_FRAMES: "the compressed pixel data has no data for some of its frames",
    MALFORMED: "the compressed pixel data is not a well-formed sequence of fragments",
    UNDESCRIBED: "the pixel data has no valid rows, columns or bits allocated to check it against",
}

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ITEM_HEADER = struct.Struct("<HHI")


def _value(ds: Dataset, tag: int) -> Any:
    """The element's value as pydicom reads it (a raw element is converted, not stored back), or None."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    try:
        if isinstance(elem, RawDataElement):
            elem = convert_raw_data_element(elem, ds=ds)
        return elem.value
    except Exception:  # an unparseable value describes nothing
        return None


def _int(ds: Dataset, tag: int) -> int | None:
    value = _value(ds, tag)
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _frames(ds: Dataset) -> int:
    frames = _int(ds, NUMBER_OF_FRAMES)
    return frames if frames is not None and frames > 0 else 1  # absent or 0: one frame, as pydicom reads it


def expected_native_length(ds: Dataset, tag: int = PIXEL_DATA) -> int | None:
    """Bytes the header says native pixel data (`tag`) holds at least, or None if it does not say."""
    rows, columns = _int(ds, ROWS), _int(ds, COLUMNS)
    bits = _BITS_OF.get(tag) or _int(ds, BITS_ALLOCATED)
    samples = _int(ds, SAMPLES_PER_PIXEL)
    samples = 1 if samples is None else samples
    if not rows or not columns or not bits or rows < 0 or columns < 0 or bits < 0 or samples < 1:
        return None
    total_bits = rows * columns * samples * _frames(ds) * bits
    length = (total_bits + 7) // 8
    photometric = _value(ds, PHOTOMETRIC_INTERPRETATION)
    if samples == 3 and isinstance(photometric, str) and photometric.strip() == "YBR_FULL_422":
        length = length // 3 * 2  # chroma subsampled horizontally: 2 samples a pixel on average (PS3.3 C.7.6.3.1.2)
    return length


def _raw_bytes(elem: DataElement | RawDataElement) -> bytes:
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b""  # not bytes (a value pydicom converted to something else): as good as empty


def _fragments(value: bytes) -> tuple[list[int], list[int]] | str:
    """The Basic Offset Table and the length of each fragment, or a reason code if malformed or cut short."""
    buffer = BytesIO(value)
    try:
        offsets = parse_basic_offsets(buffer)
    except (ValueError, EOFError, struct.error):
        return MALFORMED
    # The fragments' item headers are read here rather than by pydicom's generate_fragments, which silently
    # yields a last fragment cut short by the end of the data: here that is "shorter than it says".
    pos, end, lengths = buffer.tell(), len(value), []
    while pos + _ITEM_HEADER.size <= end:
        group, element, length = _ITEM_HEADER.unpack_from(value, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED:
            return MALFORMED
        pos += _ITEM_HEADER.size
        if pos + length > end:
            return SHORT
        lengths.append(length)
        pos += length
    else:
        if pos != end:
            return MALFORMED  # a few stray bytes where an item header should be
    return offsets, lengths


def _frame_sizes(offsets: list[int], lengths: list[int]) -> list[int] | None:
    """Bytes of data in each frame as the Basic Offset Table groups the fragments, or None if it does not."""
    starts, pos = [], 0
    for length in lengths:
        starts.append(pos)
        pos += _ITEM_HEADER.size + length
    if not offsets or offsets[0] != 0 or any(b <= a for a, b in itertools.pairwise(offsets)):
        return None
    index = {start: i for i, start in enumerate(starts)}
    if any(offset not in index for offset in offsets):
        return None
    bounds = [index[offset] for offset in offsets] + [len(lengths)]
    return [sum(lengths[bounds[i] : bounds[i + 1]]) for i in range(len(offsets))]


def _encapsulated_reason(value: bytes, frames: int, transfer_syntax: str) -> str | None:
    parsed = _fragments(value)
    if isinstance(parsed, str):
        return parsed
    offsets, lengths = parsed
    with_data = sum(1 for length in lengths if length)
    if with_data == 0:
        return MISSING_FRAMES
    if transfer_syntax in MPEGTransferSyntaxes:
        return None  # one video stream for all frames
    sizes = _frame_sizes(offsets, lengths) if len(offsets) == frames else None
    if sizes is not None:
        return MISSING_FRAMES if any(size == 0 for size in sizes) else None
    return MISSING_FRAMES if with_data < frames else None


def pixel_data_reason(ds: Dataset, transfer_syntax: str = "") -> str | None:
    """Why the instance's pixel data cannot be published as it is (a code of :data:`PIXEL_DATA_REASONS`), or
    None when it holds what its header says (or the instance has no pixel data)."""
    for tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA):
        elem = ds.get_item(tag)
        if elem is None:
            continue
        value = _raw_bytes(elem)
        encapsulated = tag == PIXEL_DATA and (
            (isinstance(elem, RawDataElement) and elem.length == _UNDEFINED)
            or (isinstance(elem, DataElement) and elem.is_undefined_length)
        )
        if encapsulated:
            reason = _encapsulated_reason(value, _frames(ds), transfer_syntax)
        else:
            expected = expected_native_length(ds, tag)
            reason = UNDESCRIBED if expected is None else SHORT if len(value) < expected else None
        if reason is not None:
            return reason
    return None
