"""Burned-in text: find it in the pixels (OCR) and black it out, before an image leaves the clinic.

Ultrasound, screen captures, endoscopy, angiography and many X-ray captures carry the patient's name, ID or
birth date drawn into the image itself, with no header saying so. For the instances where that is common
(:data:`OCR_MODALITIES`, :data:`OCR_SOP_CLASSES`) and any instance whose header suggests it
(BurnedInAnnotation=YES, ImageType DERIVED\\SECONDARY or a screen save), :func:`scrub` decodes the pixels
(pydicom with the pylibjpeg decoders), reads every frame it samples with Tesseract (English and Russian
models) and, under the ``mask`` policy, fills every region that shows text with one uniform value in every
frame. The masked frames are read again: only when no text is found any more does the instance get
``BurnedInAnnotation=NO``; otherwise it keeps (or gets) ``YES`` and the burned-in policy withholds it.
CT and MR slices (and other cross-sectional images) are read only when their header flags them.

A masked instance is stored losslessly as decoded: native pixel data in the source's own uncompressed
transfer syntax, or Explicit VR Little Endian when the source was compressed (never another lossy pass; a
source that was lossy keeps ``LossyImageCompression=01``). An instance that is not read is written
byte-for-byte as before. One that cannot be decoded is withheld (``pixel_data_undecodable``).

Tesseract runs as a subprocess fed through its standard input (no image is written to a temporary file) with
one thread, so the anonymiser's process pool sets the parallelism. The rules below are data, and
:func:`describe_rows` states them for ``studypub deid-profile``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from studypub.deid.errors import DeidError

__all__ = [
    "BURNED_IN_TEXT_POLICIES",
    "BURNED_IN_TEXT_REASONS",
    "OCR_MODALITIES",
    "OCR_SOP_CLASSES",
    "Box",
    "ScrubResult",
    "describe_rows",
    "find_text",
    "ocr_reason",
    "scrub",
]

BurnedInTextPolicy = Literal["mask", "withhold", "off"]
BURNED_IN_TEXT_POLICIES: tuple[str, ...] = ("mask", "withhold", "off")

# Where burned-in text is common: read every instance of these modalities...
OCR_MODALITIES = frozenset(
    {
        "US",  # ultrasound: name, ID and date in the top band
        "IVUS",
        "SC",  # secondary capture: screenshots of anything
        "OT",
        "XA",  # angiography, fluoroscopy
        "RF",
        "ES",  # endoscopy, video endoscopy, photography
        "GM",
        "XC",
        "DX",  # projection X-ray captures: name and date in a corner
        "CR",
        "MG",
        "RG",
        "IO",
        "PX",
    }
)
# ...and of these SOP classes whatever their modality says.
OCR_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image Storage
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    }
)
# Cross-sectional slices: read only when their header flags burned-in text (or a screen save).
CROSS_SECTIONAL = frozenset({"CT", "MR", "PT", "NM", "OPT", "OCT"})

MAX_SAMPLED_FRAMES = 6  # a long cine is read on this many frames spread over it (first and last included)
UPSCALE_BELOW = 600  # images smaller than this (longest side) are read at twice their size
MIN_SIDE = 24  # smaller images cannot show readable text
VERIFY_ROUNDS = 4  # mask, read again, mask what is found: at most this many times (tiny fonts need 3)
OCR_LANGUAGES = "eng+rus"
OCR_TIMEOUT_SECONDS = 120.0
# A word is text when Tesseract is confident enough for its number of letters and digits (at least N, at
# least this confidence); a word as tall as such a word (within these ratios) is text too when it is on the
# same line or read with some confidence. Texture read as letters is rarely either.
STRONG_WORD: tuple[tuple[int, float], ...] = ((2, 75.0), (3, 60.0), (4, 45.0))
HEIGHT_RATIO = (0.6, 1.6)
WEAK_WORD = (2, 20.0)

TEXT_FOUND = "burned_in_text"
UNDECODABLE = "pixel_data_undecodable"
OCR_FAILED = "ocr_failed"
BURNED_IN_TEXT_REASONS = {
    TEXT_FOUND: "OCR found text in the pixels and the policy withholds such images",
    UNDECODABLE: "the pixel data could not be decoded to look for burned-in text",
    OCR_FAILED: "the text recognition could not read the image",
}

PIXEL_DATA = 0x7FE00010
BURNED_IN_ANNOTATION = 0x00280301
_PIXEL_MODULE = (
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281101,  # palette descriptors and data
    0x00281102,
    0x00281103,
    0x00281201,
    0x00281202,
    0x00281203,
    0x00281221,
    0x00281222,
    0x00281223,
    0x7FE00001,  # Extended Offset Table
    0x7FE00002,
    PIXEL_DATA,
)
_NATIVE = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
_LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
    }
)


@dataclass(frozen=True)
class Box:
    """A region of a frame, in pixels: rows top..bottom-1, columns left..right-1."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class ScrubResult:
    """What :func:`scrub` did: ``withheld`` is a reason code or None; ``transfer_syntax`` is the one to write."""

    withheld: str | None
    transfer_syntax: str
    read: bool = False  # the pixels were read by OCR
    regions: int = 0  # text regions found and masked
    masked: bool = False  # the pixel data was replaced
    residual: bool = False  # text still found after masking (the instance is flagged BurnedInAnnotation=YES)


# ------------------------------------------------------------------------------------------------ header


def _text(ds: Dataset, tag: int) -> list[str]:
    elem = ds.get_item(tag)
    if elem is None:
        return []
    try:
        value = (convert_raw_data_element(elem, ds=ds) if isinstance(elem, RawDataElement) else elem).value
    except Exception:
        return []
    if value is None:
        return []
    if isinstance(value, str | bytes | int | float):
        value = [value]
    return [(v.decode("latin_1") if isinstance(v, bytes) else str(v)).strip("\x00 ").upper() for v in value]


def _first(ds: Dataset, tag: int) -> str:
    values = _text(ds, tag)
    return values[0] if values else ""


def ocr_reason(ds: Dataset) -> str | None:
    """Why this instance's pixels are read for text (a short code), or None when they are not."""
    if PIXEL_DATA not in ds:
        return None
    if _first(ds, BURNED_IN_ANNOTATION) == "YES":
        return "flagged"
    image_type = _text(ds, 0x00080008)
    if any("SCREEN" in v or "CAPTURE" in v for v in image_type):
        return "screen_capture"
    modality = _first(ds, 0x00080060)
    if modality in CROSS_SECTIONAL:
        return None
    if _first(ds, 0x00080016) in OCR_SOP_CLASSES:
        return "sop_class"
    if modality in OCR_MODALITIES:
        return "modality"
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "image_type"
    return None


# ----------------------------------------------------------------------------------------------- the OCR


def tesseract_path() -> str | None:
    return shutil.which("tesseract")


def _pgm(gray: np.ndarray) -> bytes:
    rows, cols = gray.shape
    return b"P5\n%d %d\n255\n" % (cols, rows) + np.ascontiguousarray(gray, dtype=np.uint8).tobytes()


def _alnum(text: str) -> int:
    return sum(1 for c in text if c.isalnum())


def find_text(gray: np.ndarray, heights: frozenset[int] | None = None) -> list[Box]:
    """The regions of an 8-bit grey frame that show text, as Tesseract reads it (padded a little). With
    ``heights`` (of the text found before masking), only words about that tall count (a second reading)."""
    rows, cols = gray.shape
    if min(rows, cols) < MIN_SIDE:
        return []
    scale = 2 if max(rows, cols) < UPSCALE_BELOW else 1
    if scale > 1:  # bicubic: letters a few pixels tall come out smoother than by repeating pixels
        gray = np.asarray(Image.fromarray(gray).resize((cols * scale, rows * scale), Image.Resampling.BICUBIC))
    if float(gray.mean()) < 128:  # a dark picture: its text is light; Tesseract reads dark text on light best
        gray = 255 - gray
    exe = tesseract_path()
    if exe is None:
        raise DeidError("Tesseract is not installed: burned-in text cannot be looked for", code="ocr_unavailable")
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "OMP_THREAD_LIMIT": "1", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            # psm 11: sparse text anywhere; no second, inverted reading (the picture is turned dark-on-light above)
            [exe, "stdin", "stdout", "-l", OCR_LANGUAGES, "--psm", "11", "-c", "tessedit_do_invert=0", "tsv"],
            input=_pgm(gray),
            capture_output=True,
            timeout=OCR_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _OcrFailed from None
    if done.returncode != 0:
        raise _OcrFailed
    words: list[_Word] = []
    for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        f = line.split("\t")
        if len(f) != 12 or f[0] != "5" or not f[11].strip():
            continue
        left, top, width, height = (int(v) // scale for v in f[6:10])
        words.append(_Word(tuple(f[1:5]), _alnum(f[11]), float(f[10]), Box(top, left, top + height, left + width)))
    return [_padded(w.box, rows, cols) for w in text_words(words, heights)]


@dataclass(frozen=True)
class _Word:
    line: tuple[str, ...]  # Tesseract's block, paragraph and line numbers
    alnum: int  # letters and digits read
    conf: float
    box: Box

    @property
    def height(self) -> int:
        return self.box.bottom - self.box.top


def text_words(words: list[_Word], known_heights: frozenset[int] | None = None) -> list[_Word]:
    """The words that are text (:data:`STRONG_WORD`), and the words that look like them: as tall as one of
    them (:data:`HEIGHT_RATIO`) and either on its line or read with some confidence (:data:`WEAK_WORD`).
    With ``known_heights`` every word must be about as tall as one of those."""
    lo, hi = HEIGHT_RATIO

    def tall_as(w: _Word, heights: Iterable[int]) -> bool:
        return any(lo * h <= w.height <= hi * h for h in heights)

    strong = [w for w in words if any(w.alnum >= n and w.conf >= c for n, c in STRONG_WORD)]
    if known_heights:
        strong = [w for w in strong if tall_as(w, known_heights)]
    if not strong:
        return []
    lines = {w.line for w in strong}
    heights = {w.height for w in strong}

    def like_text(w: _Word) -> bool:
        if not tall_as(w, heights):
            return False
        return w.line in lines or (w.alnum >= WEAK_WORD[0] and w.conf >= WEAK_WORD[1])

    return [w for w in words if w in strong or like_text(w)]


def _padded(b: Box, rows: int, cols: int) -> Box:
    pad = max(2, (b.bottom - b.top) // 4)
    return Box(max(0, b.top - pad), max(0, b.left - pad), min(rows, b.bottom + pad), min(cols, b.right + pad))


class _OcrFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------- the pixels


def sampled_frames(frames: int) -> list[int]:
    """Which frames are read: all of a short instance, else MAX_SAMPLED_FRAMES spread evenly, ends included."""
    if frames <= MAX_SAMPLED_FRAMES:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / (MAX_SAMPLED_FRAMES - 1)) for i in range(MAX_SAMPLED_FRAMES)})


def _gray(frame: np.ndarray, photometric: str, view: Dataset) -> np.ndarray:
    """An 8-bit grey picture of one decoded frame (rows, columns, samples), stretched to its own range."""
    data = frame
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        data = apply_color_lut(frame[..., 0], view)
    values = data.astype(np.float32)
    if values.ndim == 3:
        values = values.mean(axis=2)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    gray = (values - lo) * (255.0 / (hi - lo))
    if photometric == "MONOCHROME1":
        gray = 255.0 - gray
    return gray.astype(np.uint8)


def _decode(ds: Dataset, ts: str) -> tuple[np.ndarray, Dataset]:
    """All frames as (frames, rows, columns, samples), decoded on a copy of the image pixel elements (the
    source's own elements stay raw, to be written byte-for-byte when nothing is masked)."""
    view = Dataset()
    view.file_meta = FileMetaDataset()
    view.file_meta.TransferSyntaxUID = UID(ts)
    for tag in _PIXEL_MODULE:
        elem = ds.get_item(tag)
        if elem is not None:
            view[tag] = elem
    implicit, little = ds.original_encoding
    view.set_original_encoding(implicit, little, ds.original_character_set)
    arr = view.pixel_array  # YBR is converted to RGB
    samples = int(view.get("SamplesPerPixel", 1) or 1)
    frames = int(view.get("NumberOfFrames", 1) or 1)
    if samples == 1:
        arr = arr[..., np.newaxis]
    if frames == 1 and arr.ndim == 3:
        arr = arr[np.newaxis, ...]
    if arr.ndim != 4:
        raise ValueError("unexpected pixel array shape")
    return arr, view


def _fill_value(arr: np.ndarray, photometric: str) -> int:
    if photometric == "MONOCHROME1":
        return int(arr.max())
    if photometric == "MONOCHROME2":
        return int(arr.min())
    return 0  # RGB black, or the first palette entry


def _mask(arr: np.ndarray, regions: list[Box], value: int) -> None:
    for b in regions:
        arr[:, b.top : b.bottom, b.left : b.right, :] = value


def scrub(ds: Dataset, ts: str, policy: str) -> ScrubResult:
    """Look for burned-in text in ``ds`` (the source dataset, transfer syntax ``ts``) and act on ``policy``.

    Under ``mask`` the dataset is changed in place when text is found: masked native pixel data, the image
    pixel description of what was decoded, BurnedInAnnotation (NO when the masked frames read clean, YES when
    not). Under ``withhold`` an instance with text is withheld. ``off`` reads nothing."""
    if policy == "off" or ocr_reason(ds) is None:
        return ScrubResult(None, ts)
    if _first(ds, 0x00280100) not in ("8", "16") or _first(ds, 0x00280002) not in ("", "1", "3"):
        return ScrubResult(UNDECODABLE, ts)  # 1-bit, 32-bit or unusual samples: no picture to read
    try:
        arr, view = _decode(ds, ts)
    except Exception:
        return ScrubResult(UNDECODABLE, ts)
    photometric = str(view.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric.startswith("YBR") and arr.shape[3] == 3:
        photometric = "RGB"  # pydicom converted the colours
    frames = sampled_frames(arr.shape[0])

    def pictures() -> list[np.ndarray]:
        """The sampled frames, and for a cine their median: a static overlay stays sharp in it while the
        moving picture behind it blurs, so text that one frame's noise hides is read there."""
        grays = [_gray(arr[i], photometric, view) for i in frames]
        if len(grays) > 2:
            grays.append(np.median(np.stack(grays), axis=0).astype(np.uint8))
        return grays

    try:
        regions = [b for gray in pictures() for b in find_text(gray)]
    except _OcrFailed:
        return ScrubResult(OCR_FAILED, ts, read=True)
    if not regions:
        return ScrubResult(None, ts, read=True)
    if policy != "mask":
        return ScrubResult(TEXT_FOUND, ts, read=True, regions=len(regions))
    if not arr.flags.writeable:
        arr = arr.copy()
    value = _fill_value(arr, photometric)
    found = list(regions)
    heights = frozenset(b.bottom - b.top for b in regions)  # padded, as the second reading's words are not:
    heights = frozenset(h for b in heights for h in (b, round(b / 1.5)))  # both ends count
    residual = True
    for _round in range(VERIFY_ROUNDS):
        _mask(arr, found, value)
        try:
            found = [b for gray in pictures() for b in find_text(gray, heights)]
        except _OcrFailed:
            return ScrubResult(OCR_FAILED, ts, read=True, regions=len(regions))
        if not found:
            residual = False
            break
        regions += found
    if residual:
        _mask(arr, found, value)
    new_ts = _store(ds, ts, arr, photometric)
    ds[BURNED_IN_ANNOTATION] = DataElement(BURNED_IN_ANNOTATION, "CS", "YES" if residual else "NO")
    return ScrubResult(None, new_ts, read=True, regions=len(regions), masked=True, residual=residual)


def _store(ds: Dataset, ts: str, arr: np.ndarray, photometric: str) -> str:
    """Write the masked frames into ``ds`` as native pixel data; returns the transfer syntax to write."""
    new_ts = ts if ts in _NATIVE else str(ExplicitVRLittleEndian)
    samples = arr.shape[3]
    data = arr  # (frames, rows, columns, samples): colour-by-pixel (PlanarConfiguration 0)
    little = new_ts != ExplicitVRBigEndian
    dtype = data.dtype.newbyteorder("<" if little else ">")
    payload = np.ascontiguousarray(data, dtype=dtype).tobytes()
    if len(payload) % 2:
        payload += b"\x00"
    bits = int(_first(ds, 0x00280100) or 8)
    for tag in (0x7FE00001, 0x7FE00002):
        if tag in ds:
            del ds[tag]
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, "OB" if bits <= 8 else "OW", payload)
    if samples == 3:
        ds[0x00280004] = DataElement(0x00280004, "CS", photometric)
        ds[0x00280006] = DataElement(0x00280006, "US", 0)
    if ts in _LOSSY and _first(ds, 0x00282110) != "01":
        ds[0x00282110] = DataElement(0x00282110, "CS", "01")  # the source was lossy: say so
    return new_ts


def describe_rows(policy: str) -> list[tuple[str, str, str, str]]:
    """The OCR rules, one (tag, name, applied action, why) each, for ``studypub deid-profile``."""
    return [
        (
            "burned-in text",
            "Text burned into the pixels (OCR)",
            policy,
            "mask: every region where Tesseract ("
            + OCR_LANGUAGES
            + ") reads text is filled with one value in every frame, the masked frames are read again "
            "(up to "
            + str(VERIFY_ROUNDS)
            + " rounds) and BurnedInAnnotation is set NO only when they read clean (else YES, and the burned-in "
            "policy applies); a masked instance is stored uncompressed (lossless); withhold: an instance with "
            "text is left out; off: not read. An instance that cannot be decoded is left out.",
        ),
        (
            "OCR scope",
            "Which instances are read",
            "read" if policy != "off" else "-",
            "modalities "
            + ", ".join(sorted(OCR_MODALITIES))
            + "; ultrasound, secondary capture, X-ray angiography/fluoroscopy, visible light, CR/DX/MG SOP "
            "classes; BurnedInAnnotation=YES; ImageType with SCREEN SAVE/CAPTURE or DERIVED\\SECONDARY. "
            + ", ".join(sorted(CROSS_SECTIONAL))
            + " only when flagged. Multi-frame: "
            + str(MAX_SAMPLED_FRAMES)
            + " frames spread over the instance and their median are read; the regions found are masked in every "
            "frame.",
        ),
    ]
