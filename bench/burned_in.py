"""Burned-in text benchmark: how much of the text drawn into generated images the OCR masking covers (prints
numbers; not a test).

Every image is generated from a fixed seed, so two runs see the same pixels: small fonts (the 5x7 bitmap font
that ``studypub/demo/studies.py`` draws, DejaVu TrueType at 8-12 px), low contrast (grey on grey), white and
yellow text on colour ultrasound-like speckle, dark text on a bright X-ray, text in the corners and the bottom
band, Cyrillic, dates and IDs alone, images from 128 to 1024 pixels, a multi-frame cine; and images without
text (CT, ultrasound speckle, colour Doppler, X-ray, endoscopy, a secondary capture) for false masks.

Each image goes through ``burned_in.scrub`` (policy ``mask``) of two versions of the module in the same run:
the one at ``--before`` (a git revision, read with ``git show``) and the working tree's. For each the bench
prints, per case and in total:

- **detected**: images whose text pixels (the ink: antialiased pixels at least half covered) all lie in the
  masked boxes, so nothing of the text can be read back;
- **withheld**: images where OCR still read text after the last masking round (BurnedInAnnotation stays YES and
  the image is withheld: safe, but lost to the patient);
- **leaked**: images published (not withheld) with some ink outside the masked boxes;
- **ink**: the mean fraction of ink pixels covered; **area**: the median fraction of the image masked;
- **false mask**: images without text where anything was masked;
- **s/image**: the median seconds of one ``scrub`` (decode, OCR, masking, reading again).

Usage: ``python -m bench.burned_in [--seeds 3] [--workers 2] [--before REV] [--only CASE]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from studypub.demo.studies import _text_mask

BEFORE = "e25655a"  # the masking before the bright-text, contrast and line passes
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
DEJAVU_MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
SURNAMES = ["IVANOV", "PETROVA", "SMIRNOV", "KUZNETSOVA", "MUELLER", "GARCIA", "DUBOIS", "JOHNSON"]
GIVEN = ["IVAN", "MARIA", "SERGEI", "ANNA", "KLAUS", "LUCIA", "PIERRE", "EMILY"]
CYRILLIC = ["ИВАНОВ ИВАН", "ПЕТРОВА МАРИЯ", "СМИРНОВ СЕРГЕЙ", "КУЗНЕЦОВА АННА"]
US_SOP = "1.2.840.10008.5.1.4.1.1.6.1"
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"
ES_SOP = "1.2.840.10008.5.1.4.1.1.77.1.1"
US_MF_SOP = "1.2.840.10008.5.1.4.1.1.3.1"


# ------------------------------------------------------------------------------------------ backgrounds


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))).astype(np.float32)


def us_gray(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A speckled ultrasound sector on black, 0..255 float."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    apex = rows * 0.08
    r = np.hypot(yy - apex, xx - cols / 2)
    angle = np.arctan2(xx - cols / 2, yy - apex)
    sector = (np.abs(angle) < 0.65) & (r < rows * 0.9) & (yy > apex)
    speck = rng.rayleigh(45, size=(rows, cols))
    picture = np.where(sector, np.clip(speck, 0, 230), 0)
    return _blur(picture, 1.2)


def us_color(rng: np.random.Generator, rows: int, cols: int, doppler: bool = True) -> np.ndarray:
    """Ultrasound speckle in a warm tint with colour-Doppler blobs (red/blue), (rows, cols, 3)."""
    g = us_gray(rng, rows, cols)
    rgb = np.stack([g, g * 0.93, g * 0.8], axis=-1)
    if doppler:
        yy, xx = np.mgrid[0:rows, 0:cols]
        for _ in range(3):
            cy, cx = rng.uniform(0.35, 0.8) * rows, rng.uniform(0.35, 0.65) * cols
            blob = ((yy - cy) / (rows * 0.07)) ** 2 + ((xx - cx) / (cols * 0.05)) ** 2 < 1
            colour = (230, 40, 30) if rng.random() < 0.5 else (30, 60, 230)
            rgb[blob] = colour
        # a colour bar at the right edge, as consoles show
        bar = (yy > rows * 0.2) & (yy < rows * 0.6) & (xx > cols - 18) & (xx < cols - 8)
        ramp = (yy - rows * 0.2) / (rows * 0.4)
        rgb[bar] = np.stack([255 * (1 - ramp), 40 + 0 * ramp, 255 * ramp], axis=-1)[bar]
    return rgb


def ct(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    y, x = (yy - rows / 2) / (rows / 2), (xx - cols / 2) / (cols / 2)
    img = np.zeros((rows, cols), np.float32)
    img[(y / 0.78) ** 2 + (x / 0.92) ** 2 <= 1] = 110
    img[((y + 0.05) / 0.48) ** 2 + ((x + 0.42) / 0.28) ** 2 <= 1] = 20
    img[((y + 0.05) / 0.48) ** 2 + ((x - 0.42) / 0.28) ** 2 <= 1] = 20
    img[((y - 0.55) / 0.11) ** 2 + (x / 0.11) ** 2 <= 1] = 230
    return np.clip(img + rng.normal(0, 6, size=img.shape) * (img > 0), 0, 255)


def dx(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A chest X-ray-like picture: bright body, darker lungs, dark air at the edges (0..255 float)."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    y, x = (yy - rows / 2) / (rows / 2), (xx - cols / 2) / (cols / 2)
    img = 215 - 70 * np.hypot(y, x)
    img[((y + 0.05) / 0.55) ** 2 + ((x + 0.4) / 0.3) ** 2 <= 1] -= 80
    img[((y + 0.05) / 0.55) ** 2 + ((x - 0.4) / 0.3) ** 2 <= 1] -= 80
    return np.clip(_blur(np.clip(img, 0, 255), 3) + rng.normal(0, 4, size=img.shape), 0, 255)


def endoscopy(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = np.hypot(yy - rows / 2, xx - cols / 2) / (min(rows, cols) / 2)
    tissue = _blur(rng.uniform(0, 255, size=(rows, cols)), 6) / 255.0
    base = np.stack([200 * tissue + 40, 90 * tissue + 20, 70 * tissue + 15], axis=-1)
    return np.where((r < 0.92)[..., None], base, 0)


def flat(rng: np.random.Generator, rows: int, cols: int, level: float) -> np.ndarray:
    return np.clip(level + _blur(rng.normal(0, 25, size=(rows, cols)) + 128, 2) - 128, 0, 255)


# ---------------------------------------------------------------------------------------------- text


def _lines(rng: np.random.Generator, kind: str) -> list[str]:
    name = f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)}"
    pid = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(7, 11))))
    day = f"{int(rng.integers(1, 29)):02d}.{int(rng.integers(1, 13)):02d}.{int(rng.integers(1940, 2020))}"
    if kind == "cyrillic":
        return [str(rng.choice(CYRILLIC)), f"{day}"]
    if kind == "digits":
        return [pid, day]
    return [name, f"ID {pid}", day]


def _ink_ttf(lines: list[str], rows: int, cols: int, size: int, where: str, mono: bool = False) -> np.ndarray:
    """The text's coverage (0..1) drawn with DejaVu at ``size`` px in the place named by ``where``."""
    font = ImageFont.truetype(DEJAVU_MONO if mono else DEJAVU, size)
    layer = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(layer)
    step = int(size * 1.35)
    widths = [int(draw.textlength(line, font=font)) for line in lines]
    margin = max(3, size // 3)
    block = step * len(lines)
    for i, (line, w) in enumerate(zip(lines, widths, strict=True)):
        if where in ("top-left", "top"):
            x, y = margin, margin + i * step
        elif where == "top-right":
            x, y = cols - w - margin, margin + i * step
        elif where == "bottom-left":
            x, y = margin, rows - block - margin + i * step
        elif where == "bottom-right":
            x, y = cols - w - margin, rows - block - margin + i * step
        elif where == "middle":  # over the picture itself
            x, y = cols // 4, rows // 2 + i * step
        else:  # "bottom": one band along the bottom edge
            x, y = margin, rows - step - margin
            x += sum(widths[:i]) + i * size * 2
        draw.text((x, y), line, fill=255, font=font)
    return np.asarray(layer).astype(np.float32) / 255.0


def _ink_bitmap(lines: list[str], rows: int, cols: int) -> np.ndarray:
    return _text_mask([line.upper() for line in lines], rows, cols).astype(np.float32)


def _draw(picture: np.ndarray, ink: np.ndarray, colour: tuple[float, ...] | float) -> np.ndarray:
    """Alpha-blend text of ``colour`` over ``picture`` with coverage ``ink``."""
    if picture.ndim == 3:
        col = np.asarray(colour if isinstance(colour, tuple) else (colour,) * 3, dtype=np.float32)
        return picture * (1 - ink[..., None]) + col * ink[..., None]
    return picture * (1 - ink) + float(colour if not isinstance(colour, tuple) else colour[0]) * ink


# ----------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Image_:
    pixels: np.ndarray  # (frames, rows, cols[, 3]) uint8 or uint16
    ink: np.ndarray  # (rows, cols) bool: pixels at least half covered by text; all False without text
    modality: str
    sop_class: str


def _one(picture: np.ndarray, ink: np.ndarray, modality: str, sop: str, bits16: bool = False) -> Image_:
    if bits16:
        px = (np.clip(picture, 0, 255) * 16).astype(np.uint16)  # 12-bit range
    else:
        px = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return Image_(px[np.newaxis], ink >= 0.5, modality, sop)


Case = Callable[[np.random.Generator], Image_]


def _case_ttf(
    background: Callable[[np.random.Generator, int, int], np.ndarray],
    rows: int,
    cols: int,
    size: int,
    colour: tuple[float, ...] | float,
    where: str = "top-left",
    kind: str = "name",
    modality: str = "US",
    sop: str = US_SOP,
) -> Case:
    def make(rng: np.random.Generator) -> Image_:
        picture = background(rng, rows, cols)
        ink = _ink_ttf(_lines(rng, kind), rows, cols, size, where)
        return _one(_draw(picture, ink, colour), ink, modality, sop)

    return make


def _case_bitmap(rows: int, cols: int, background: str) -> Case:
    def make(rng: np.random.Generator) -> Image_:
        picture = us_gray(rng, rows, cols) if background == "us" else flat(rng, rows, cols, 60)
        ink = _ink_bitmap(_lines(rng, "name"), rows, cols)
        return _one(
            _draw(picture, ink, 255),
            ink,
            "US" if background == "us" else "OT",
            US_SOP if background == "us" else SC_SOP,
        )

    return make


def _case_low_contrast(text: float, back: float, size: int) -> Case:
    def make(rng: np.random.Generator) -> Image_:
        rows = cols = 512
        picture = ct(rng, rows, cols) * 0.0 + flat(rng, rows, cols, back)
        picture[rows // 4 :, cols // 4 : 3 * cols // 4] = ct(rng, rows, cols)[rows // 4 :, cols // 4 : 3 * cols // 4]
        ink = _ink_ttf(_lines(rng, "name"), rows, cols, size, "top-left")
        return _one(_draw(picture, ink, text), ink, "OT", SC_SOP)

    return make


def _case_multiframe(rng: np.random.Generator) -> Image_:
    rows, cols, frames = 240, 320, 8
    ink = _ink_ttf(_lines(rng, "name"), rows, cols, 10, "top-left")
    pics = [_draw(us_gray(rng, rows, cols), ink, 255) for _ in range(frames)]
    px = np.clip(np.rint(np.stack(pics)), 0, 255).astype(np.uint8)
    return Image_(px, ink >= 0.5, "US", US_MF_SOP)


def _case_blank(
    background: Callable[[np.random.Generator, int, int], np.ndarray],
    rows: int,
    cols: int,
    modality: str,
    sop: str,
    bits16: bool = False,
) -> Case:
    def make(rng: np.random.Generator) -> Image_:
        picture = background(rng, rows, cols)
        return _one(picture, np.zeros((rows, cols)), modality, sop, bits16)

    return make


YELLOW = (250.0, 235.0, 40.0)
TEXT_CASES: dict[str, Case] = {
    "bitmap5x7 on US 128": _case_bitmap(128, 128, "us"),
    "bitmap5x7 on SC 256": _case_bitmap(256, 256, "sc"),
    "bitmap5x7 on US 512 (x3)": _case_bitmap(512, 512, "us"),
    "ttf 8px white, US 512": _case_ttf(us_gray, 512, 512, 8, 255),
    "ttf 10px white, US 480x640": _case_ttf(us_gray, 480, 640, 10, 255),
    "ttf 12px white, US 1024": _case_ttf(us_gray, 1024, 1024, 12, 255),
    "ttf 11px yellow, colour US": _case_ttf(us_color, 480, 640, 11, YELLOW),
    "ttf 10px white, colour US": _case_ttf(us_color, 480, 640, 10, 240, where="top-right"),
    "ttf 12px yellow over colour speckle": _case_ttf(us_color, 480, 640, 12, YELLOW, where="middle"),
    "ttf 12px white over grey speckle": _case_ttf(us_gray, 480, 640, 12, 255, where="middle"),
    "ttf 12px grey 150 on 110": _case_low_contrast(150, 110, 12),
    "ttf 12px grey 60 on 35": _case_low_contrast(60, 35, 12),
    "ttf 12px black on DX 1024": _case_ttf(dx, 1024, 1024, 12, 15, "bottom-left", modality="DX", sop=DX_SOP),
    "ttf 14px white on DX 1024": _case_ttf(dx, 1024, 1024, 14, 255, "top-right", modality="DX", sop=DX_SOP),
    "ttf 10px corners, SC 512": _case_ttf(ct, 512, 512, 10, 230, "bottom-right", modality="OT", sop=SC_SOP),
    "ttf 10px bottom band, US": _case_ttf(us_gray, 480, 640, 10, 255, "bottom"),
    "ttf 12px Cyrillic, US": _case_ttf(us_gray, 480, 640, 12, 255, kind="cyrillic"),
    "ttf 10px digits only, ES": _case_ttf(endoscopy, 480, 640, 10, 255, "bottom-left", "digits", "ES", ES_SOP),
    "ttf 9px, US 256": _case_ttf(us_gray, 256, 256, 9, 255),
    "multi-frame US 8x240x320": _case_multiframe,
}
BLANK_CASES: dict[str, Case] = {
    "CT 512 (12-bit, flagged)": _case_blank(ct, 512, 512, "CT", CT_SOP, bits16=True),
    "US speckle 480x640": _case_blank(us_gray, 480, 640, "US", US_SOP),
    "colour Doppler US": _case_blank(us_color, 480, 640, "US", US_SOP),
    "DX 1024": _case_blank(dx, 1024, 1024, "DX", DX_SOP),
    "endoscopy 480x640": _case_blank(endoscopy, 480, 640, "ES", ES_SOP),
}


# ------------------------------------------------------------------------------------------- running


def _dataset(image: Image_) -> Dataset:
    """A minimal DICOM instance of ``image``, read back from bytes as the anonymiser reads a file."""
    px = image.pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = image.sop_class
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = image.sop_class, uid, image.modality
    if image.modality == "CT":
        ds.BurnedInAnnotation = "YES"  # CT is read only when flagged
    frames, rows, cols = px.shape[:3]
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    bits = 16 if px.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if px.ndim == 4:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return dcmread(io.BytesIO(buf.getvalue()))


def _module_at(rev: str) -> types.ModuleType:
    """``studypub.deid.burned_in`` as it was at git revision ``rev``."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:studypub/deid/burned_in.py"], cwd=root, capture_output=True, check=True
    ).stdout
    path = Path(tempfile.gettempdir()) / f"studypub_burned_in_{rev}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(f"_burned_in_{rev}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_MODULES: dict[str, types.ModuleType] = {}


def _init(before: str) -> None:
    from studypub.deid import burned_in

    _MODULES["before"] = _module_at(before)
    _MODULES["after"] = burned_in


def measure(version: str, group: str, case: str, seed: int) -> dict[str, float]:
    """Scrub one generated image with one version of the module; what was covered, and how long it took."""
    module = _MODULES[version]
    cases = TEXT_CASES if group == "text" else BLANK_CASES
    image = cases[case](np.random.default_rng([seed, sum(map(ord, case))]))
    ds = _dataset(image)
    boxes: list[tuple[int, int, int, int]] = []
    real_mask = module._mask

    def recording(arr: np.ndarray, regions: list, value: int) -> None:
        boxes.extend((b.top, b.left, b.bottom, b.right) for b in regions)
        real_mask(arr, regions, value)

    module._mask = recording
    try:
        started = time.perf_counter()
        result = module.scrub(ds, str(ExplicitVRLittleEndian), "mask")
        seconds = time.perf_counter() - started
    finally:
        module._mask = real_mask
    rows, cols = image.ink.shape
    covered = np.zeros((rows, cols), bool)
    for top, left, bottom, right in boxes:
        covered[top:bottom, left:right] = True
    ink = int(image.ink.sum())
    ink_covered = float((covered & image.ink).sum() / ink) if ink else 1.0
    withheld = bool(result.withheld) or bool(result.residual)
    return {
        "seconds": seconds,
        "ink": ink_covered,
        "detected": float(ink > 0 and ink_covered >= 1.0),
        "withheld": float(withheld),
        "leaked": float(ink > 0 and ink_covered < 1.0 and not withheld),
        "area": float(covered.mean()),
        "masked": float(bool(boxes)),
    }


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        "n": len(rows),
        "detected": statistics.mean(r["detected"] for r in rows),
        "withheld": statistics.mean(r["withheld"] for r in rows),
        "leaked": statistics.mean(r["leaked"] for r in rows),
        "ink": statistics.mean(r["ink"] for r in rows),
        "area": statistics.median(r["area"] for r in rows),
        "masked": statistics.mean(r["masked"] for r in rows),
        "seconds": statistics.median(r["seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="images per case")
    parser.add_argument("--workers", type=int, default=2, help="processes (each OCR runs on one thread)")
    parser.add_argument("--before", default=BEFORE, help="git revision of the reference version")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args()
    jobs = [
        (version, group, case, seed)
        for group, cases in (("text", TEXT_CASES), ("blank", BLANK_CASES))
        for case in cases
        if args.only.lower() in case.lower()
        for seed in range(args.seeds)
        for version in ("before", "after")
    ]
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.before,)) as pool:
        results = list(pool.map(measure, *zip(*jobs, strict=True)))
    by: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for (version, group, case, _seed), result in zip(jobs, results, strict=True):
        by.setdefault((group, case, version), []).append(result)
        by.setdefault((group, "ALL", version), []).append(result)

    print(
        f"before={args.before}, after=working tree; {args.seeds} seed(s) per case, {args.workers} workers, "
        f"{time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'text case':35} {'version':7} {'detected':>8} {'withheld':>8} {'leaked':>6} {'ink':>6} {'area':>6} "
        f"{'s/image':>7}"
    )
    cases = [c for c in TEXT_CASES if ("text", c, "after") in by] + ["ALL"]
    for case in cases:
        for version in ("before", "after"):
            s = _summary(by[("text", case, version)])
            print(
                f"{case:35} {version:7} {s['detected']:8.0%} {s['withheld']:8.0%} {s['leaked']:6.0%} "
                f"{s['ink']:6.1%} {s['area']:6.1%} {s['seconds']:7.2f}"
            )
    blanks = [c for c in BLANK_CASES if ("blank", c, "after") in by]
    if blanks:
        print(f"\n{'image without text':34} {'version':7} {'false mask':>10} {'area':>6} {'s/image':>7}")
        for case in [*blanks, "ALL"]:
            for version in ("before", "after"):
                s = _summary(by[("blank", case, version)])
                print(f"{case:34} {version:7} {s['masked']:10.0%} {s['area']:6.1%} {s['seconds']:7.2f}")


if __name__ == "__main__":
    main()
