"""A person's name or ID hidden in an attribute the profile keeps (not listed in Table E.1-1) never reaches
the archive: the verification fails closed and leaves no output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from studypub.deid.engine import DeidOptions, StudyAnonymiser
from studypub.deid.errors import DeidVerificationError


def _instance(path: Path, **extra: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "ZHUKOVA^OLGA", "PID-998877", "ACC-55667788"
    ds.Modality, ds.BodyPartExamined = "CT", "HEAD"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ImageType", ["ORIGINAL", "PRIMARY", "ZHUKOVA"]),  # a name component in a kept code string
        ("ImageType", ["ORIGINAL", "PID-998877"]),  # the patient ID
        ("Manufacturer", "ACC-55667788 scanner"),  # the accession number in kept free text
    ],
)
def test_identity_in_a_kept_attribute_fails_closed(tmp_path: Path, keyword: str, value: object) -> None:
    src = _instance(tmp_path / "in.dcm", **{keyword: value})
    dst = tmp_path / "out.dcm"
    with pytest.raises(DeidVerificationError):
        StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, dst)
    assert not dst.exists() and not list(tmp_path.glob(".out.dcm*"))


def test_kept_vocabulary_that_is_not_identity_passes(tmp_path: Path) -> None:
    src = _instance(tmp_path / "in.dcm", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    outcome = StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, tmp_path / "out.dcm")
    assert not outcome.withheld and (tmp_path / "out.dcm").exists()
