"""Burned-in text is found in the pixels by OCR and blacked out (issue 11): real-world files with text burned in
(pydicom's bundled ultrasound examples) and generated ones with text rendered by PIL; the output, read again
by OCR, shows no text; CT slices are not read unless flagged; the policies mask / withhold / off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from studypub.deid import burned_in
from studypub.deid.engine import DeidOptions, StudyAnonymiser
from tests.unit import deid_hostile as H

pytestmark = pytest.mark.skipif(burned_in.tesseract_path() is None, reason="Debian tesseract-ocr not installed")

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LINES = ["IVANOV IVAN PETROVICH", "ID 1000001158664", "ИВАНОВ ИВАН 12.03.1970"]


def _text_in(path: Path) -> list[burned_in.Box]:
    """What OCR reads in a file's pixels (every sampled frame), with the anonymiser's own rules."""
    ds = dcmread(path)
    arr, view = burned_in._decode(ds, str(ds.file_meta.TransferSyntaxUID))
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        photometric = "RGB"
    return [
        box
        for i in burned_in.sampled_frames(arr.shape[0])
        for box in burned_in.find_text(burned_in._gray(arr[i], photometric, view))
    ]


def _render(rows: int, cols: int, *, color: bool) -> tuple[np.ndarray, np.ndarray]:
    """A speckled ultrasound-like picture with LINES drawn in a band at the top; and where the text is."""
    rng = np.random.default_rng(7)
    picture = np.zeros((rows, cols), dtype=np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    sector = ((yy - 90) ** 2 + (xx - cols / 2) ** 2 < (rows * 0.7) ** 2) & (yy > 90)
    picture[sector] = rng.integers(20, 140, size=int(sector.sum()), dtype=np.uint8)
    picture = np.asarray(Image.fromarray(picture).filter(ImageFilter.GaussianBlur(2))).copy()  # speckle-like
    text = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(text)
    font = ImageFont.truetype(FONT, 16)
    for i, line in enumerate(LINES):
        draw.text((12, 8 + 22 * i), line, fill=255, font=font)
    ink = np.asarray(text) > 0
    picture[ink] = 255
    if color:
        picture = np.stack([picture, picture, np.where(ink, 0, picture)], axis=-1)  # yellow text
    return picture, ink


def _dataset(
    uid: str, picture: np.ndarray, *, modality: str, sop_class: str, ts: str = ExplicitVRLittleEndian
) -> FileDataset:
    ds = H.base_dataset(H.ORIG_ROOT + uid, transfer_syntax=ts, sop_class=sop_class)
    ds.Modality = modality
    ds.Rows, ds.Columns = picture.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if picture.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = picture.tobytes()
    return ds


def _run(tmp_path: Path, src: Path, name: str, **options: object) -> tuple[object, Path]:
    out = tmp_path / "out" / f"{name}.dcm"
    outcome = StudyAnonymiser(H.KEY, DeidOptions(**options)).anonymise_file(src, out)  # type: ignore[arg-type]
    return outcome, out


@pytest.mark.parametrize(
    ("name", "color", "modality", "sop_class"),
    [("us", False, "US", UltrasoundImageStorage), ("sc", True, "OT", SecondaryCaptureImageStorage)],
)
def test_rendered_text_is_masked_and_ocr_of_the_output_finds_none(
    tmp_path: Path, name: str, color: bool, modality: str, sop_class: str
) -> None:
    picture, ink = _render(300, 400, color=color)
    src = H.write(
        _dataset("80" + str(int(color)), picture, modality=modality, sop_class=sop_class), tmp_path / f"{name}.dcm"
    )
    assert len(_text_in(src)) >= 3  # the source shows the text: OCR reads it

    outcome, out = _run(tmp_path, src, name)
    assert not outcome.withheld and out.exists()
    ds = dcmread(out)
    assert ds.BurnedInAnnotation == "NO"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "113101" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]  # Clean Pixel Data
    masked = ds.pixel_array
    assert not (masked[ink] == 255).any()  # every pixel of the text is covered
    assert _text_in(out) == []  # and OCR of the output finds no text
    sector_kept = (masked[150:, :] == picture[150:, :]).mean()
    assert sector_kept > 0.9, sector_kept  # the image below the text band is (nearly) untouched


def test_real_world_ultrasound_with_burned_in_text_is_masked(tmp_path: Path) -> None:
    """pydicom's examples_jpeg2k.dcm: a GE ultrasound (JPEG 2000 lossless) with the institution and
    identifiers burned into its top band, and no BurnedInAnnotation."""
    src = Path(get_testdata_file("examples_jpeg2k.dcm"))
    assert "BurnedInAnnotation" not in dcmread(src, stop_before_pixels=True)
    assert len(_text_in(src)) >= 10

    outcome, out = _run(tmp_path, src, "ge")
    assert not outcome.withheld
    ds = dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # lossless: decoded, stored native
    assert ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "RGB"
    assert _text_in(out) == []


def test_real_world_multiframe_lossy_ultrasound_every_frame_masked(tmp_path: Path) -> None:
    """pydicom's examples_ybr_color.dcm: 30 frames of JPEG baseline (lossy) ultrasound with text; the
    regions found on the sampled frames are masked in every frame, and the output says it was lossy."""
    src = Path(get_testdata_file("examples_ybr_color.dcm"))
    assert _text_in(src)
    outcome, out = _run(tmp_path, src, "ybr")
    assert not outcome.withheld
    ds = dcmread(out)
    assert ds.NumberOfFrames == 30 and ds.LossyImageCompression == "01"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    frames = ds.pixel_array
    for i in (0, 7, 13, 22, 29):
        assert burned_in.find_text(burned_in._gray(frames[i], "RGB", ds)) == [], i


def test_policy_withhold_leaves_an_image_with_text_out(tmp_path: Path) -> None:
    picture, _ = _render(300, 400, color=False)
    src = H.write(_dataset("810", picture, modality="US", sop_class=UltrasoundImageStorage), tmp_path / "w.dcm")
    outcome, out = _run(tmp_path, src, "w", burned_in_text="withhold")
    assert outcome.withheld and outcome.withheld_reason == "burned_in_text" and not out.exists()


def test_policy_off_reads_nothing_and_keeps_the_pixels(tmp_path: Path) -> None:
    picture, _ = _render(300, 400, color=False)
    ds = _dataset("811", picture, modality="US", sop_class=UltrasoundImageStorage)
    src = H.write(ds, tmp_path / "off.dcm")
    outcome, out = _run(tmp_path, src, "off", burned_in_text="off")
    assert not outcome.withheld and dcmread(out).PixelData == ds.PixelData


def test_an_image_without_text_is_written_as_it_was(tmp_path: Path) -> None:
    picture, ink = _render(300, 400, color=False)
    picture[ink] = 0
    ds = _dataset("812", picture, modality="US", sop_class=UltrasoundImageStorage, ts=ImplicitVRLittleEndian)
    src = H.write(ds, tmp_path / "plain.dcm")
    outcome, out = _run(tmp_path, src, "plain")
    assert not outcome.withheld
    written = dcmread(out)
    assert written.PixelData == ds.PixelData and written.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert "BurnedInAnnotation" not in written or written.BurnedInAnnotation != "NO"


def test_ct_slices_are_not_read_unless_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picture, _ = _render(256, 400, color=False)
    ct = _dataset("813", picture, modality="CT", sop_class=CTImageStorage)
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert burned_in.ocr_reason(ct) is None
    src = H.write(ct, tmp_path / "ct.dcm")

    calls: list[int] = []
    real = burned_in.find_text
    monkeypatch.setattr(
        burned_in, "find_text", lambda gray, heights=None, **kw: calls.append(1) or real(gray, heights, **kw)
    )
    outcome, out = _run(tmp_path, src, "ct")
    assert not outcome.withheld and calls == []  # not read: written as it came
    assert dcmread(out).PixelData == ct.PixelData

    ct.BurnedInAnnotation = "YES"  # flagged: read and masked
    assert burned_in.ocr_reason(ct) == "flagged"
    flagged = H.write(ct, tmp_path / "ct-flagged.dcm")
    outcome, out = _run(tmp_path, flagged, "ct-flagged")
    assert calls and not outcome.withheld
    assert dcmread(out).BurnedInAnnotation == "NO" and _text_in(out) == []


def test_flagged_image_where_ocr_finds_nothing_is_still_withheld(tmp_path: Path) -> None:
    """BurnedInAnnotation=YES and no text read: the header's word stands, the burned-in policy withholds."""
    picture, ink = _render(300, 400, color=False)
    picture[ink] = 0
    ds = _dataset("814", picture, modality="US", sop_class=UltrasoundImageStorage)
    ds.BurnedInAnnotation = "YES"
    outcome, _ = _run(tmp_path, H.write(ds, tmp_path / "flag.dcm"), "flag")
    assert outcome.withheld and outcome.withheld_reason == "burned_in_annotation"


def test_an_image_that_cannot_be_decoded_is_withheld(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    picture, _ = _render(64, 64, color=False)
    ds = _dataset("815", picture, modality="US", sop_class=UltrasoundImageStorage, ts=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    outcome, out = _run(tmp_path, H.write(ds, tmp_path / "bad.dcm"), "bad")
    assert outcome.withheld and outcome.withheld_reason == "pixel_data_undecodable" and not out.exists()


def test_frames_sampled_over_a_long_cine() -> None:
    assert burned_in.sampled_frames(3) == [0, 1, 2]
    sampled = burned_in.sampled_frames(300)
    assert len(sampled) == burned_in.MAX_SAMPLED_FRAMES and sampled[0] == 0 and sampled[-1] == 299


def _speckle(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Ultrasound-like speckle over the whole picture (0..230)."""
    speck = np.clip(rng.rayleigh(45, size=(rows, cols)), 0, 230).astype(np.uint8)
    return np.asarray(Image.fromarray(speck).filter(ImageFilter.GaussianBlur(1.2))).astype(np.float32)


def _ink(rows: int, cols: int, at: tuple[int, int], size: int = 12) -> np.ndarray:
    """How much of each pixel the lines of text cover (0..1), drawn with DejaVu at ``size`` px from ``at``."""
    layer = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(layer)
    font = ImageFont.truetype(FONT, size)
    for i, line in enumerate(["PETROVA MARIA", "ID 4039145361", "20.06.1957"]):
        draw.text((at[1], at[0] + i * round(size * 1.35)), line, fill=255, font=font)
    return np.asarray(layer).astype(np.float32) / 255.0


def _scrub_covers(tmp_path: Path, name: str, picture: np.ndarray, ink: np.ndarray, modality: str) -> None:
    """Anonymise ``picture``: published, flagged NO, and every pixel at least half covered by text masked."""
    sop_class = UltrasoundImageStorage if modality == "US" else SecondaryCaptureImageStorage
    ds = _dataset("82" + str(len(name)), picture, modality=modality, sop_class=sop_class)
    outcome, out = _run(tmp_path, H.write(ds, tmp_path / f"{name}.dcm"), name)
    assert not outcome.withheld and out.exists()
    written = dcmread(out)
    assert written.BurnedInAnnotation == "NO"
    masked = written.pixel_array.reshape(picture.shape)
    changed = masked != picture if picture.ndim == 2 else (masked != picture).any(axis=-1)
    text = ink >= 0.5
    assert changed[text].all(), f"{int((text & ~changed).sum())} of {int(text.sum())} text pixels left"
    assert changed.mean() < 0.05, changed.mean()  # the lines of text, not the picture


def test_low_contrast_grey_text_beside_a_bright_image_is_masked(tmp_path: Path) -> None:
    """Grey 150 text on a grey 110 band beside a CT-like image with black lungs and a white spine: one global
    threshold (the grey reading) separates the body from the air and loses the text; the local-contrast
    reading of the border zones finds it."""
    rng = np.random.default_rng(11)
    rows, cols = 512, 512
    noise = rng.normal(0, 25, size=(rows, cols)) + 128
    picture = np.clip(
        110 + np.asarray(Image.fromarray(noise.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))) - 128, 0, 255
    )
    picture[200:, 140:380] = 20
    picture[260:420, 200:320] = 230
    ink = _ink(rows, cols, (6, 6))
    picture = np.rint(picture * (1 - ink) + 150 * ink).astype(np.uint8)
    _scrub_covers(tmp_path, "lowcontrast", picture, ink, "OT")


def test_yellow_text_over_colour_speckle_is_masked(tmp_path: Path) -> None:
    """A yellow annotation over the colour ultrasound picture itself (not in the black band): the grey reading
    sees it no brighter than the speckle; the overlay reading of the bright saturated pixels finds it."""
    rng = np.random.default_rng(12)
    rows, cols = 480, 640
    grey = _speckle(rng, rows, cols)
    rgb = np.stack([grey, grey * 0.93, grey * 0.8], axis=-1)
    ink = _ink(rows, cols, (240, 160))
    picture = rgb * (1 - ink[..., None]) + np.array([250.0, 235.0, 40.0]) * ink[..., None]
    _scrub_covers(tmp_path, "yellow", np.rint(picture).astype(np.uint8), ink, "US")


def test_a_found_word_is_widened_along_its_line_and_not_into_texture() -> None:
    """OCR read the first word of a line and not the digits beside it: the region grows over the glyph-like
    columns on its line (gaps narrower than the text is tall) and stops at a gap; beside texture (no gap
    between 'letters') it does not grow."""
    gray = np.zeros((60, 400), dtype=np.uint8)
    ink = _ink(60, 400, (10, 10)) >= 0.5
    gray[ink] = 255
    words = burned_in.along_lines(gray, [burned_in.Box(8, 8, 24, 24)])  # "PE" of the first line
    line = ink[:26]
    covered = np.zeros_like(gray, dtype=bool)
    for b in words:
        covered[b.top : b.bottom, b.left : b.right] = True
    assert covered[:26][line].all()  # the whole first line
    assert not covered[:, 200:].any()  # and not the empty rest of the row

    rng = np.random.default_rng(13)
    textured = _speckle(rng, 60, 400).astype(np.uint8)
    textured[:, :30] = 0
    textured[:, :30][ink[:, :30]] = 255  # "PE", then speckle
    [box] = burned_in.along_lines(textured, [burned_in.Box(8, 8, 24, 28)])
    assert box.right <= 40, box  # the speckle beside it is no text


def test_the_profile_describes_the_ocr_rules() -> None:
    from studypub.deid.profile import Profile

    rows = {row["tag"]: row for row in Profile.load().describe(DeidOptions(burned_in_text="mask"))}
    assert rows["burned-in text"]["applied_action"] == "mask" and "US" in rows["OCR scope"]["why"]
    assert "Sauvola" in rows["burned-in text"]["why"] and "text line" in rows["burned-in text"]["why"]


@pytest.mark.parametrize("side", [1, 2, 23])
def test_a_picture_too_small_for_text_is_not_read(side: int) -> None:
    """Tiny frames (icons, a 1x1 placeholder) cannot show readable text: nothing is read, nothing fails (the
    border statistics of the extra readings have no pixels to measure there)."""
    gray = np.full((side, side), 200, dtype=np.uint8)
    rgb = np.zeros((side, side, 3), dtype=np.uint8)
    assert burned_in.read_picture(burned_in.Picture(gray, rgb)) == ([], frozenset())
