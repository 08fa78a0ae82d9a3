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

One reading of the grey picture misses what one global threshold hides: grey text on a grey band beside a
bright image, black text on a bright X-ray whose air is dark, a yellow label over colour speckle. So a still
(or a cine's median) is read four ways (:func:`read_picture`): the grey picture; the same thresholded by
neighbourhood (Tesseract's Sauvola); the local contrast of the border zones, where overlays are; the
near-white and bright saturated pixels of a colour picture. OCR also reads some letters of a line and not
others (a 5x7 bitmap font, an ID beside a name): every region found is widened along its text line over the
glyph-like columns beside it and joined with its neighbours on the line (:func:`along_lines`).
``python -m bench.burned_in`` measures what this covers on generated images, against an earlier version.

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
from PIL import Image, ImageFilter
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
# The local-contrast reading: a pixel's detail is its distance from a blur of this radius (pixels); the
# picture is stretched so that the strongest detail is black, but no further than this many grey levels.
CONTRAST_RADIUS = 8
CONTRAST_FLOOR = 12.0
CONTRAST_BORDER = 0.2
# The overlay reading of a colour frame: near-white pixels (every channel at least OVERLAY_WHITE) and bright
# saturated ones (brightest channel at least OVERLAY_BRIGHT, OVERLAY_SATURATION above the darkest); skipped
# when more than OVERLAY_MAX_SHARE of the frame is such (then it is the picture, not an overlay).
OVERLAY_WHITE = 200
OVERLAY_BRIGHT = 180
OVERLAY_SATURATION = 100
OVERLAY_MAX_SHARE = 0.25
# Along a text line: a region is widened over glyph-like columns (detail above LINE_INK of the region's own
# strongest) with gaps of at most LINE_GAP of its height and at most LINE_REACH heights each way; regions on
# one line less than LINE_JOIN heights apart are joined into one band.
LINE_INK = 0.4
LINE_GAP = 0.8
LINE_REACH = 12
LINE_JOIN = 2.0
OCR_LANGUAGES = "eng+rus"
OCR_TIMEOUT_SECONDS = 120.0
# A word is text when Tesseract is confident enough for its number of letters and digits (at least N, at
# least this confidence); a word as tall as such a word (within these ratios) is text too when it is on the
# same line or read with some confidence. Texture read as letters is rarely either.
STRONG_WORD: tuple[tuple[int, float], ...] = ((2, 75.0), (3, 60.0), (4, 45.0))
# The extra readings (adaptive, local contrast, overlay) make texture crisp, and Tesseract reads some of it as
# short words with fair confidence: there a word is text only with more letters and more confidence.
STRICT_WORD: tuple[tuple[int, float], ...] = ((3, 85.0), (4, 70.0))
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


def find_text(
    gray: np.ndarray, heights: frozenset[int] | None = None, *, strict: bool = False, adaptive: bool = False
) -> list[Box]:
    """The regions of an 8-bit grey frame that show text, as Tesseract reads it (padded a little). With
    ``heights`` (of the text found before masking), only words about that tall count (a second reading);
    ``strict``: no weakly read word away from a confident word's line (:func:`text_words`); ``adaptive``:
    Tesseract separates ink from background by each pixel's neighbourhood (Sauvola) rather than by one
    threshold for the whole picture, which a bright body beside dark air puts in the wrong place."""
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
            [exe, "stdin", "stdout", "-l", OCR_LANGUAGES, "--psm", "11", "-c", "tessedit_do_invert=0"]
            + (["-c", "thresholding_method=2"] if adaptive else [])
            + ["tsv"],
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
    return [_padded(w.box, rows, cols) for w in text_words(words, heights, weak=not strict)]


@dataclass(frozen=True)
class _Word:
    line: tuple[str, ...]  # Tesseract's block, paragraph and line numbers
    alnum: int  # letters and digits read
    conf: float
    box: Box

    @property
    def height(self) -> int:
        return self.box.bottom - self.box.top


def text_words(words: list[_Word], known_heights: frozenset[int] | None = None, *, weak: bool = True) -> list[_Word]:
    """The words that are text (:data:`STRONG_WORD`; :data:`STRICT_WORD` unless ``weak``), and the words that
    look like them: as tall as one of them (:data:`HEIGHT_RATIO`) and either on its line or (``weak``) read
    with some confidence (:data:`WEAK_WORD`). With ``known_heights`` every word must be about as tall as one of
    those."""
    lo, hi = HEIGHT_RATIO

    def tall_as(w: _Word, heights: Iterable[int]) -> bool:
        return any(lo * h <= w.height <= hi * h for h in heights)

    rules = STRONG_WORD if weak else STRICT_WORD
    strong = [w for w in words if any(w.alnum >= n and w.conf >= c for n, c in rules)]
    if known_heights:
        strong = [w for w in strong if tall_as(w, known_heights)]
    if not strong:
        return []
    lines = {w.line for w in strong}
    heights = {w.height for w in strong}

    def like_text(w: _Word) -> bool:
        if not tall_as(w, heights):
            return False
        return w.line in lines or (weak and w.alnum >= WEAK_WORD[0] and w.conf >= WEAK_WORD[1])

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


@dataclass(frozen=True)
class Picture:
    """One picture to read: an 8-bit grey frame, its colours (8-bit RGB) when it has them, and whether the extra
    readings (:data:`LOCAL_CONTRAST`, :data:`OVERLAY`) are made of it too."""

    gray: np.ndarray
    rgb: np.ndarray | None = None
    extra: bool = True


def _rgb8(frame: np.ndarray, photometric: str) -> np.ndarray | None:
    if photometric != "RGB" or frame.ndim != 3 or frame.shape[2] != 3:
        return None
    if frame.dtype == np.uint8:
        return frame
    top = float(frame.max()) or 1.0
    return (frame.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def _pictures(arr: np.ndarray, photometric: str, view: Dataset) -> list[Picture]:
    """What is read of the decoded frames: every sampled frame, and for a cine also their median (a static overlay
    stays sharp in it while the moving picture behind it blurs, so text that one frame's noise hides is read
    there). The extra readings are made of a still's one frame, or of a cine's median only (time)."""
    frames = sampled_frames(arr.shape[0])
    if len(frames) <= 2:
        return [Picture(_gray(arr[i], photometric, view), _rgb8(arr[i], photometric)) for i in frames]
    pictures = [Picture(_gray(arr[i], photometric, view), extra=False) for i in frames]
    median = np.median(arr[frames], axis=0).astype(arr.dtype)
    pictures.append(Picture(_gray(median, photometric, view), _rgb8(median, photometric)))
    return pictures


def _background(gray: np.ndarray) -> np.ndarray:
    """The picture without its fine detail: a blur wider than a text stroke, narrower than a word."""
    blurred = Image.fromarray(gray).filter(ImageFilter.GaussianBlur(CONTRAST_RADIUS))
    return np.asarray(blurred).astype(np.float32)


def _contrast(gray: np.ndarray) -> np.ndarray:
    """The local-contrast picture of the border zones (:data:`CONTRAST_BORDER` of each side, where overlays
    are): how far each pixel stands out of its neighbourhood, stretched and turned so that light detail is
    dark (overlay text is light). Grey text on grey beside a bright image, which decides a global threshold,
    comes out as clear as white text on black. The middle is left blank: texture there costs time and is
    read as words."""
    detail = gray.astype(np.float32) - _background(gray)
    rows, cols = gray.shape
    dy, dx = round(rows * CONTRAST_BORDER), round(cols * CONTRAST_BORDER)
    border = np.ones(gray.shape, dtype=bool)
    border[dy : rows - dy, dx : cols - dx] = False
    scale = max(CONTRAST_FLOOR, float(np.percentile(np.abs(detail[border]), 99.0)))
    neutral = 160.0  # the background's grey: light enough that the picture is not turned over for reading
    picture = np.clip(neutral - detail * (neutral / scale), 0.0, 255.0).astype(np.uint8)
    picture[~border] = round(neutral)  # blank as the background is (white would move the ink threshold)
    return picture


def _overlay(rgb: np.ndarray) -> np.ndarray | None:
    """The overlay picture of a colour frame: its near-white and its bright saturated pixels (yellow, green,
    cyan overlay text) black on white; None when there are none, or so many that they are the image."""
    hi = rgb.max(axis=2)
    lo = rgb.min(axis=2)
    ink = (lo >= OVERLAY_WHITE) | ((hi >= OVERLAY_BRIGHT) & (hi.astype(np.int16) - lo >= OVERLAY_SATURATION))
    share = float(ink.mean())
    if share == 0.0 or share > OVERLAY_MAX_SHARE:
        return None
    return np.where(ink, 0, 255).astype(np.uint8)


GREY, ADAPTIVE, LOCAL_CONTRAST, OVERLAY = "grey", "adaptive", "local contrast", "overlay"
READINGS = (GREY, ADAPTIVE, LOCAL_CONTRAST, OVERLAY)


def read_picture(
    picture: Picture,
    heights: frozenset[int] | None = None,
    readings: Iterable[str] = READINGS,
    bands: list[tuple[int, int]] | None = None,
) -> tuple[list[Box], frozenset[str]]:
    """Every region of one picture that shows text, each extended along its text line (:func:`along_lines`),
    and which readings found text: the grey picture; when ``picture.extra``, its local-contrast picture
    (:func:`_contrast`) and the overlay picture of its colours (:func:`_overlay`). The extra readings take
    only confident words and the words on their lines (no weakly read word elsewhere: texture made crisp);
    with ``bands`` (rows, top to bottom) they read only those rows (the lines where text was found)."""
    if min(picture.gray.shape) < MIN_SIDE:  # too small to show readable text (and to measure its borders)
        return [], frozenset()
    found: dict[str, list[Box]] = {}
    readings = set(readings)
    if GREY in readings:
        found[GREY] = find_text(picture.gray, heights)
    if picture.extra and ADAPTIVE in readings:
        light = picture.gray if float(picture.gray.mean()) >= 128 else 255 - picture.gray  # dark text on light
        found[ADAPTIVE] = find_text(_only(light, bands), heights, strict=True, adaptive=True)
    if picture.extra and LOCAL_CONTRAST in readings:
        found[LOCAL_CONTRAST] = find_text(_only(_contrast(picture.gray), bands), heights, strict=True)
    if picture.extra and OVERLAY in readings and picture.rgb is not None:
        overlay = _overlay(picture.rgb)
        if overlay is not None:
            found[OVERLAY] = find_text(_only(overlay, bands), heights, strict=True)
    boxes = [b for kind in READINGS for b in found.get(kind, [])]
    return along_lines(picture.gray, boxes), frozenset(k for k, v in found.items() if v)


def _only(picture: np.ndarray, bands: list[tuple[int, int]] | None) -> np.ndarray:
    """A dark-on-white ``picture`` blank (white) outside ``bands`` of rows; all of it without bands."""
    if bands is None:
        return picture
    keep = np.zeros(picture.shape[0], dtype=bool)
    for top, bottom in bands:
        keep[max(0, top) : max(0, bottom)] = True
    return np.where(keep[:, np.newaxis], picture, np.uint8(255)).astype(np.uint8)


def along_lines(gray: np.ndarray, boxes: list[Box]) -> list[Box]:
    """The text lines of ``boxes``: each region widened over the glyph-like columns beside it on its line
    (gaps at most :data:`LINE_GAP` of its height, at most :data:`LINE_REACH` heights each way), and regions on
    the same line that then come within :data:`LINE_JOIN` heights of each other joined into one band. A column
    is glyph-like when some of its pixels in the band stand out of their neighbourhood as much as the region's
    own letters do; a run of such columns longer than the band is high has no gap between letters: picture
    texture, where the widening stops."""
    if not boxes:
        return []
    cols = gray.shape[1]
    detail = np.abs(gray.astype(np.float32) - _background(gray))
    widened: list[Box] = []
    for b in boxes:
        h = b.bottom - b.top
        inside = detail[b.top : b.bottom, b.left : b.right]
        if not inside.size:
            continue
        level = max(CONTRAST_FLOOR, LINE_INK * float(np.percentile(inside, 98)))
        ink = (detail[b.top : b.bottom] > level).any(axis=0)
        gap, reach = max(2, round(LINE_GAP * h)), LINE_REACH * h
        right = _reach(ink, b.right, min(cols, b.right + reach), 1, gap, h)
        left = _reach(ink, b.left - 1, max(-1, b.left - 1 - reach), -1, gap, h)
        pad = max(2, h // 5)
        widened.append(
            Box(
                b.top,
                max(0, left - pad) if left < b.left else b.left,
                b.bottom,
                min(cols, right + 1 + pad) if right >= b.right else b.right,
            )
        )
    return _join(widened)


def _reach(ink: np.ndarray, start: int, stop: int, step: int, gap: int, run_limit: int) -> int:
    """The last glyph-like column from ``start`` towards ``stop`` (exclusive, ``step`` +1 or -1) before a gap
    wider than ``gap`` or a run of ink columns longer than ``run_limit`` (texture: the run is not taken);
    ``start - step`` when there is none."""
    last = start - step
    before_run = last
    run_start: int | None = None
    c = start
    while c != stop:
        if ink[c]:
            if run_start is None:
                run_start, before_run = c, last
            if abs(c - run_start) >= run_limit:
                return before_run
            last = c
        else:
            run_start = None
            if abs(c - last) > gap:
                break
        c += step
    return last


def _join(boxes: list[Box]) -> list[Box]:
    """Regions on one line (overlapping by half the smaller height) less than a gap apart become one band."""
    while True:
        joined = _join_once(boxes)
        if len(joined) == len(boxes):
            return joined
        boxes = joined


def _join_once(boxes: list[Box]) -> list[Box]:
    boxes = sorted(boxes, key=lambda b: (b.left, b.top))
    joined: list[Box] = []
    for b in boxes:
        for i, j in enumerate(joined):
            overlap = min(b.bottom, j.bottom) - max(b.top, j.top)
            h = min(b.bottom - b.top, j.bottom - j.top)
            gap = max(b.left, j.left) - min(b.right, j.right)
            if overlap >= h / 2 and gap <= LINE_JOIN * h:
                joined[i] = Box(min(b.top, j.top), min(b.left, j.left), max(b.bottom, j.bottom), max(b.right, j.right))
                break
        else:
            joined.append(b)
    return joined


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
    pictures = _pictures(arr, photometric, view)
    readings: set[str] = {GREY}  # the masked frames are read again by the readings that found text
    regions: list[Box] = []
    try:
        for picture in pictures:
            boxes, kinds = read_picture(picture)
            regions += boxes
            readings |= kinds
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
    # the grey reading reads the whole masked frames again, the extra ones the lines where text was found
    bands = [(b.top - (b.bottom - b.top), b.bottom + (b.bottom - b.top)) for b in regions]
    residual = True
    for _round in range(VERIFY_ROUNDS):
        _mask(arr, found, value)
        try:
            pictures = _pictures(arr, photometric, view)
            found = [b for picture in pictures for b in read_picture(picture, heights, readings, bands)[0]]
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
            + ") reads text is filled with one value in every frame. Each picture is read four ways: its grey "
            "picture; the same with a threshold by neighbourhood (Sauvola); the local contrast of its border zones "
            "(" + f"{CONTRAST_BORDER:.0%}" + " of each side: grey text on grey); the near-white and bright saturated "
            "pixels of a colour picture (white/yellow overlays). The extra readings count only words of at least "
            "3 letters read with high confidence (and the words on their lines). A region is widened over the "
            "glyph-like columns beside it on its text line (gaps under " + f"{LINE_GAP:.0%}" + " of its height, "
            "up to "
            + str(LINE_REACH)
            + " heights; not into texture), and regions on one line less than "
            + f"{LINE_JOIN:g}"
            + " heights apart are masked as one band. The masked frames are read again (the grey reading in full, "
            "the extra readings that found text on the lines found; up to "
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
            + " frames spread over the instance (the grey reading) and their median (all readings) are read; the "
            "regions found are masked in every frame.",
        ),
    ]
