"""A person's name or ID hidden in an attribute the profile keeps (not listed in Table E.1-1) never reaches
the archive: the value (or the one value of a multi-valued attribute) that holds it is cleaned to the dummy,
the instance is withheld when the standard enumerates that value, and the verification still fails closed
when a removed value survives (no output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
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
    ("keyword", "value", "cleaned"),
    [
        # a name component in a kept code string: that value only becomes the dummy
        ("ImageType", ["ORIGINAL", "PRIMARY", "ZHUKOVA"], ["ORIGINAL", "PRIMARY", "ANONYMOUS"]),
        ("Manufacturer", "ACC-55667788 scanner", "ANONYMOUS"),  # the accession number in kept free text
        # a removed institution inside a kept manufacturer (real-world: InstitutionName TOSHIBA, TOSHIBA_MEC)
        ("Manufacturer", "CITYCLINIC_MEC", "ANONYMOUS"),
    ],
)
def test_identity_in_a_kept_attribute_is_cleaned(tmp_path: Path, keyword: str, value: object, cleaned: object) -> None:
    src = _instance(tmp_path / "in.dcm", InstitutionName="CITYCLINIC", **{keyword: value})
    dst = tmp_path / "out.dcm"
    outcome = StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, dst)
    assert not outcome.withheld
    out = dcmread(dst)
    assert out[keyword].value == cleaned
    raw = dst.read_bytes().lower()
    assert all(marker not in raw for marker in (b"zhukova", b"998877", b"55667788", b"cityclinic"))
    assert not list(tmp_path.glob(".out.dcm*"))


def test_identity_in_an_enumerated_value_withholds_the_instance(tmp_path: Path) -> None:
    """ImageType's second value is enumerated (PRIMARY/SECONDARY): no dummy is valid there."""
    src = _instance(tmp_path / "in.dcm", ImageType=["ORIGINAL", "PID-998877"])
    dst = tmp_path / "out.dcm"
    outcome = StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, dst)
    assert outcome.withheld and outcome.withheld_reason == "identity_in_required_value"
    assert not dst.exists() and not list(tmp_path.glob(".out.dcm*"))
    assert outcome.study_instance_uid and outcome.study_instance_uid.startswith("2.25.")


def test_a_leak_the_cleaning_misses_still_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the cleaning (as if it missed a value) the verification refuses the output and leaves none."""
    monkeypatch.setattr(StudyAnonymiser, "_clean_values", lambda self, *args: None)
    src = _instance(tmp_path / "in.dcm", Manufacturer="ACC-55667788 scanner")
    dst = tmp_path / "out.dcm"
    with pytest.raises(DeidVerificationError) as info:
        StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, dst)
    assert info.value.code == "deid_leak" and "Manufacturer" in info.value.reason
    assert "55667788" not in info.value.reason
    assert not dst.exists() and not list(tmp_path.glob(".out.dcm*"))


def test_kept_vocabulary_that_is_not_identity_passes(tmp_path: Path) -> None:
    src = _instance(tmp_path / "in.dcm", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    outcome = StudyAnonymiser(b"k" * 32, DeidOptions()).anonymise_file(src, tmp_path / "out.dcm")
    assert not outcome.withheld and (tmp_path / "out.dcm").exists()
