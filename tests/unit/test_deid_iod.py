"""Valid output for every IOD: combined X/Z/D actions follow the attribute's type in the instance's IOD
(iod-types.json, generated from highdicom's module tables), and dciodvfy finds no error in an output of a
real-world file that it does not find in the original."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedMRImageStorage, UltrasoundImageStorage

from studypub.deid.engine import DeidOptions, StudyAnonymiser
from studypub.deid.profile import Profile, iod_types
from tests.unit import deid_hostile as H
from tests.unit.test_deid_real_world import storable_instances


def test_the_checked_in_iod_types_are_what_highdicom_ships() -> None:
    pytest.importorskip("highdicom")
    from studypub.deid.build_iod_types import main

    assert main(["--check"]) == 0, "regenerate with python -m studypub.deid.build_iod_types"


def test_types_come_from_the_iod() -> None:
    types = iod_types()
    enhanced_mr, _ = types.for_sop_class(EnhancedMRImageStorage) or ({}, {})
    ct, _ = types.for_sop_class(CTImageStorage) or ({}, {})
    assert enhanced_mr[0x0008002A] == "1" and enhanced_mr[0x00181000] == "1"  # AcquisitionDateTime, serial
    assert 0x0008002A not in ct and 0x00181000 not in ct  # Type 3 in the CT Image IOD
    assert ct[0x00102297] == "2"  # ResponsiblePerson: Type 2C (animal patients)
    assert types.for_sop_class("1.2.840.10008.5.1.4.1.1.6") is not None  # retired US Image: its successor's
    assert types.for_sop_class("1.2.3.4") is None


def _equipment(sop_class: str, uid: str) -> Dataset:
    ds = H.base_dataset(H.ORIG_ROOT + uid, sop_class=sop_class)
    ds.AcquisitionDateTime = "19330305101010"
    ds.DeviceSerialNumber = "ZQXSERIAL"
    ds.ContentDate = "19330306"
    step = Dataset()
    step.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    step.ReferencedSOPInstanceUID = H.ORIG_ROOT + uid + "1"
    ds.ReferencedPerformedProcedureStepSequence = [step]
    return ds


@pytest.mark.parametrize(
    ("sop_class", "acquired", "serial", "steps"),
    [
        (EnhancedMRImageStorage, "19000101000000", "ANONYMOUS", 1),  # Type 1: dummy, item count kept
        (UltrasoundImageStorage, "19000101000000", None, None),  # AcquisitionDateTime Type 1 in US
        (CTImageStorage, None, None, None),  # Type 3: removed
    ],
    ids=["enhanced-mr", "us", "ct"],
)
def test_combined_actions_follow_the_type(
    tmp_path: Path, sop_class: str, acquired: str | None, serial: str | None, steps: int | None
) -> None:
    src = H.write(_equipment(sop_class, "60"), tmp_path / "in" / "a.dcm")
    StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "out" / "a.dcm")
    out = dcmread(tmp_path / "out" / "a.dcm")
    assert out.get("AcquisitionDateTime") == acquired
    assert out.get("DeviceSerialNumber") == serial
    sequence = out.get("ReferencedPerformedProcedureStepSequence")
    assert (None if sequence is None else len(sequence)) == steps
    assert H.MARKER not in (tmp_path / "out" / "a.dcm").read_bytes().lower()


def test_responsible_person_of_an_animal_stays_present_and_empty(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "61")
    ds.PatientSpeciesDescription = "canine"
    ds.ResponsiblePerson = "ZQXOWNER^ANNA"
    src = H.write(ds, tmp_path / "in" / "dog.dcm")
    StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "out" / "dog.dcm")
    out = dcmread(tmp_path / "out" / "dog.dcm")
    assert "ResponsiblePerson" in out and out.ResponsiblePerson == ""  # X, but Type 2C: zero-length
    assert b"zqxowner" not in (tmp_path / "out" / "dog.dcm").read_bytes().lower()


def test_describe_names_the_iod_rule() -> None:
    rows = {row["keyword"]: row for row in Profile.load().describe()}
    assert "Type 1" in rows["AcquisitionDateTime"]["why"] and "IOD" in rows["AcquisitionDateTime"]["why"]


def _errors(path: Path) -> set[str] | None:
    """dciodvfy's errors with values blanked (UIDs and values change), or None when it cannot read the file."""
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stderr + result.stdout).splitlines()
    if any("read failed" in line for line in lines):
        return None
    return {re.sub(r"=\s*<[^>]*>", "=<>", line) for line in lines if line.startswith("Error")}


@pytest.mark.slow  # about 260 dciodvfy runs (12 s on an idle machine)
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")
def test_dciodvfy_finds_no_new_error_in_real_world_outputs(tmp_path: Path) -> None:
    anonymiser = StudyAnonymiser(bytes(range(32)), DeidOptions(burned_in_policy="include"))
    compared, new_errors = 0, []
    for i, src in enumerate(storable_instances()):
        before = _errors(src)
        if before is None:  # a damaged source (truncated, mislabelled): nothing to compare with
            continue
        dst = tmp_path / f"{i}.dcm"
        if anonymiser.anonymise_file(src, dst).withheld:
            continue
        after = _errors(dst)
        assert after is not None, src.name
        new_errors += [f"{src.name}: {e}" for e in sorted(after - before)]
        compared += 1
    assert compared >= 90
    assert new_errors == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")
def test_dciodvfy_finds_no_error_in_the_dicomdir_of_real_world_outputs(tmp_path: Path) -> None:
    """Records carry only what their type allows (SR records: title modifiers, verification time)."""
    from studypub.dicomdir import DicomDirBuilder
    from tasks.archive import _fill_record_dummies

    anonymiser = StudyAnonymiser(bytes(range(32)), DeidOptions(burned_in_policy="include"))
    builder = DicomDirBuilder()
    out = tmp_path / "fileset"
    types = set()
    for i, src in enumerate(storable_instances()):
        if anonymiser.anonymise_file(src, tmp_path / f"{i}.dcm").withheld:
            continue
        ds = _fill_record_dummies(dcmread(tmp_path / f"{i}.dcm", stop_before_pixels=True))
        try:
            name = builder.add(ds)
        except (KeyError, ValueError, AttributeError):
            continue  # the archive keeps it outside the File-set
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{i}.dcm").rename(out / name)
        types.add(str(ds.Modality))
    with (out / "DICOMDIR").open("wb") as fh:
        builder.write(fh, "2.25.1")
    assert len(builder) >= 100 and {"SR", "CT", "MR"} <= types
    assert _errors(out / "DICOMDIR") == set()
