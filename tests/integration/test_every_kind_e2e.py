"""Every instance the PACS offers can be received, and text burned into ultrasound pixels leaves the clinic
blacked out (issue 11), through the real path: Orthanc → C-MOVE → ``studypub publish`` → local storage.

The study is an ultrasound of the retired Ultrasound Image Storage SOP class (1.2.840.10008.5.1.4.1.1.6),
which the Storage SCP offered no presentation context for ("partial retrieval: received 0 of 1 instances
(... 0xC000 Failure)"), with the patient's name drawn into one image's pixels."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread

from studypub.deid import burned_in
from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.integration.test_publish_e2e import base_env, orthanc_env, run_publish  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _retired_ultrasound(study: GeneratedStudy, text: str) -> None:
    """Rewrite the study's instances as the retired US SOP class; draw ``text`` into the first one."""
    for n, path in enumerate(study.paths):
        ds = dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RETIRED_US
        if n == 0:
            pixels = ds.pixel_array.copy()
            if pixels.ndim == 3:
                pixels = pixels[..., 0]
            canvas = Image.fromarray(np.zeros(pixels.shape, dtype=np.uint8))
            ImageDraw.Draw(canvas).text((10, 8), text, fill=255, font=ImageFont.truetype(FONT, 18))
            ink = np.asarray(canvas) > 0
            pixels[ink] = pixels.max() if pixels.max() > 0 else 255
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(path, enforce_file_format=True)


def test_retired_ultrasound_is_received_and_its_burned_in_text_masked(
    orthanc_env: dict[str, str],  # noqa: F811
    orthanc: OrthancServer,
    study_factory: Callable[..., GeneratedStudy],
) -> None:
    study = study_factory(
        modality="US",
        series=[SeriesSpec(images=2, rows=240, cols=320, transfer_syntax="explicit", description="Liver")],
    )
    _retired_ultrasound(study, "PETROVA ANNA 1970")
    assert len(
        burned_in.find_text(burned_in._gray(dcmread(study.paths[0]).pixel_array[..., np.newaxis], "MONOCHROME2", None))
    )
    orthanc.upload(study.paths)
    storage = Path(orthanc_env["STUDYPUB_WORK_DIR"]).parent / "published"
    code, result, stderr = run_publish(dict(orthanc_env, STUDYPUB_STORAGE__URL=storage.as_uri()), study)
    assert code == 0, (result, stderr[-3000:])
    assert result["instances"] == 2 and result["withheld"] == 0, result
    with zipfile.ZipFile(storage / result["object_key"]) as zf:
        images = [dcmread(BytesIO(zf.read(n))) for n in zf.namelist() if n not in ("DICOMDIR", "README.txt")]
        note = zf.read("README.txt").decode("utf-8")
    assert {str(ds.SOPClassUID) for ds in images} == {RETIRED_US}
    for ds in images:  # OCR of the published pixels' top band, where the name was drawn, finds no text
        gray = burned_in._gray(ds.pixel_array[..., np.newaxis], "MONOCHROME2", None)
        assert [box for box in burned_in.find_text(gray) if box.top < 40] == []
    assert "NO" in {ds.get("BurnedInAnnotation") for ds in images}  # the masked one says it is clean now
    assert "blacked out" in note
