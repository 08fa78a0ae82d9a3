"""The linear-time DICOMDIR builder: pydicom's FileSet reads what it writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from studypub.demo.studies import SeriesSpec, StudySpec, generate_study
from studypub.dicomdir import DicomDirBuilder


def test_pydicom_reads_the_dicomdir_and_every_reference_resolves(tmp_path: Path) -> None:
    studies = [
        generate_study(
            tmp_path / "a",
            StudySpec(
                patient_id="PA",
                accession_number="AA",
                series=[
                    SeriesSpec(images=5, rows=32, cols=32),
                    SeriesSpec(images=2, rows=32, cols=32, modality="US", frames=3),
                ],
                include_pdf=True,
            ),
        ),
        generate_study(
            tmp_path / "b",
            StudySpec(
                patient_id="PB",
                accession_number="AB",
                modality="MR",
                series=[SeriesSpec(images=3, rows=32, cols=32)],
            ),
        ),
    ]
    builder = DicomDirBuilder()
    out = tmp_path / "fileset"
    names = []
    for study in studies:
        for path in study.paths:
            name = builder.add(dcmread(path, stop_before_pixels=True))
            names.append(name)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / name)
    assert len(set(names)) == len(names) == len(builder)
    assert all(len(part) <= 8 and part.isalnum() and part.isupper() for n in names for part in n.split("/"))
    with (out / "DICOMDIR").open("wb") as fh:
        builder.write(fh, "2.25.42")
    fs = FileSet(out / "DICOMDIR")
    assert len(fs) == len(names)
    assert len(fs.find(PatientID="PA")) == 8 and len(fs.find(PatientID="PB")) == 3
    for instance in fs:
        assert dcmread(instance.path, stop_before_pixels=True).SOPInstanceUID == instance.SOPInstanceUID
    assert {i.DirectoryRecordType for i in fs} == {"IMAGE", "ENCAP DOC"}


def test_names_are_fixed_when_added_and_a_failed_add_changes_nothing(tmp_path: Path) -> None:
    study = generate_study(
        tmp_path / "s",
        StudySpec(patient_id="P", accession_number="A", series=[SeriesSpec(images=3, rows=16, cols=16)]),
    )
    builder = DicomDirBuilder()
    first = builder.add(dcmread(study.paths[0], stop_before_pixels=True))
    broken = dcmread(study.paths[1], stop_before_pixels=True)
    del broken.StudyDate  # Type 1 in the STUDY record... but the study record exists already
    del broken.InstanceNumber  # Type 1 in the IMAGE record: this add must fail
    with pytest.raises((KeyError, ValueError, AttributeError)):
        builder.add(broken)
    assert len(builder) == 1
    second = builder.add(dcmread(study.paths[2], stop_before_pixels=True))
    assert (first, second) == ("PT000000/ST000000/SE000000/IM000000", "PT000000/ST000000/SE000000/IM000001")


def test_structured_report_records_carry_only_their_title_modifiers(tmp_path: Path) -> None:
    """pydicom's SR DOCUMENT recorder copies the whole Content Sequence (other relationship types, nested
    items, references outside the evidence); a record keeps only the root's HAS CONCEPT MOD items."""
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset

    def read() -> Dataset:  # empty in the file; the records need them (the archive fills dummies likewise)
        ds = dcmread(get_testdata_file("test-SR.dcm"), stop_before_pixels=True)
        ds.PatientID, ds.StudyDate, ds.StudyTime, ds.StudyID = "P1", "20010213", "000000", "1"
        return ds

    sr = read()
    modifier = Dataset()
    modifier.RelationshipType, modifier.ValueType = "HAS CONCEPT MOD", "CODE"
    modifier.ConceptNameCodeSequence = [sr.ConceptNameCodeSequence[0]]
    modifier.ConceptCodeSequence = [sr.ConceptNameCodeSequence[0]]
    modifier.ContentSequence = [sr.ContentSequence[0]]  # nested content: not for a directory record
    with_modifier = read()
    with_modifier.SOPInstanceUID = "2.25.7"
    with_modifier.ContentSequence = [modifier, *with_modifier.ContentSequence]
    builder = DicomDirBuilder()
    names = [builder.add(sr), builder.add(with_modifier)]
    out = tmp_path / "fileset"
    for name, ds in zip(names, (sr, with_modifier), strict=True):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out / name)
    with (out / "DICOMDIR").open("wb") as fh:
        builder.write(fh, "2.25.42")
    records = [r for r in dcmread(out / "DICOMDIR").DirectoryRecordSequence if r.DirectoryRecordType == "SR DOCUMENT"]
    assert len(records) == 2
    assert "ContentSequence" not in records[0]  # test-SR has no title modifier
    assert records[0].VerificationDateTime == "20010213184746"  # VERIFIED: from its verifying observers
    (item,) = records[1].ContentSequence
    assert item.RelationshipType == "HAS CONCEPT MOD" and "ContentSequence" not in item
    assert set(item.keys()) <= {0x0040A010, 0x0040A040, 0x0040A043, 0x0040A168, 0x0040A160}
    assert len(FileSet(out / "DICOMDIR")) == 2
