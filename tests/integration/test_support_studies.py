"""The synthetic study generator writes valid, decodable Part-10 files full of known identifying values."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from studypub.demo.cli import describe
from studypub.demo.studies import (
    TRANSFER_SYNTAXES,
    SeriesSpec,
    StudySpec,
    TransferSyntaxUnavailable,
    ct_study_spec,
    demo_studies,
    find_leaks,
    generate_study,
    resolve_transfer_syntax,
    transfer_syntax_unavailable_reason,
)
from tests.support.fixtures import small_study_spec

ALL_TS = list(TRANSFER_SYNTAXES)


def _skip_unavailable(*names: str) -> None:
    for name in names:
        reason = transfer_syntax_unavailable_reason(name)
        if reason:
            pytest.skip(reason)


def test_every_transfer_syntax_round_trips(tmp_path: Path) -> None:
    _skip_unavailable(*ALL_TS)
    series = [
        SeriesSpec(images=2, rows=64, cols=80, bits=8 if ts == "jpeg-baseline" else None, transfer_syntax=ts)
        for ts in ALL_TS
    ]
    study = generate_study(tmp_path, small_study_spec(modality="CR", series=series, include_pdf=True))
    assert study.instance_count == 2 * len(ALL_TS) + 1
    assert study.total_bytes > 0
    seen_ts = set()
    sop_uids = set()
    for inst in study.instances:
        ds = pydicom.dcmread(inst.path)
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert ds.SeriesInstanceUID == inst.series_instance_uid
        assert ds.SOPInstanceUID == inst.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == inst.sop_class_uid == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid
        assert ds.PatientID == study.patient_id and ds.AccessionNumber == study.accession_number
        sop_uids.add(ds.SOPInstanceUID)
        seen_ts.add(str(ds.file_meta.TransferSyntaxUID))
        if "PixelData" in ds:
            px = ds.pixel_array
            assert px.shape == (64, 80)
            assert px.std() > 1, "pixel data should look like something"
        else:
            assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
            assert bytes(ds.EncapsulatedDocument).startswith(b"%PDF-")
    assert len(sop_uids) == study.instance_count
    assert {str(resolve_transfer_syntax(t)) for t in ALL_TS} <= seen_ts


def test_phi_rich_values_are_in_the_files(tmp_path: Path) -> None:
    study = generate_study(tmp_path, small_study_spec(include_pdf=True, burned_in_annotation=True))
    values = study.identifying_values
    assert study.spec.patient_name in values and study.spec.patient_id in values
    for where in (
        "PatientAddress",
        "InstitutionAddress",
        "OperatorsName",
        "StationName",
        "private",
        "pdf",
        "ScheduledProcedureStepID",
        "pixels",
    ):
        assert study.identifying_by_keyword.get(where), where
    blob = b"".join(p.read_bytes() for p in study.paths if "S001" in str(p))  # uncompressed series
    for value in study.identifying_by_keyword["PatientAddress"] | study.identifying_by_keyword["private"]:
        assert value.encode() in blob
    # Every file leaks, every text value is found somewhere; a clean value is not.
    leaks = study.leaks(study.paths)
    assert set(leaks) == set(study.paths)
    assert set().union(*leaks.values()) == values
    assert find_leaks(study.paths, {"NOT-IN-ANY-FILE-42"}) == {}
    assert study.instances[0].burned_in_box is not None
    ds = pydicom.dcmread(study.paths[0])
    assert ds.BurnedInAnnotation == "YES"
    assert ds.RequestAttributesSequence[0].AccessionNumber == study.accession_number
    creators = [e.value for e in ds if e.tag.is_private_creator]
    assert any(study.spec.patient_name.split("^")[0] in c for c in creators)


def test_ct_geometry_stacks(tmp_path: Path) -> None:
    study = generate_study(tmp_path, ct_study_spec(slices=6, rows=64, cols=64))
    z = []
    for p in study.paths:
        ds = pydicom.dcmread(p)
        assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
        assert ds.FrameOfReferenceUID and ds.PixelSpacing
        z.append(float(ds.ImagePositionPatient[2]))
    assert z == sorted(z) and len(set(z)) == 6


def test_multiframe_colour_and_bad_specs(tmp_path: Path) -> None:
    _skip_unavailable("rle")
    spec = small_study_spec(
        modality="US",
        series=[SeriesSpec(images=1, frames=5, rows=60, cols=80, color=True, transfer_syntax="rle")],
    )
    ds = pydicom.dcmread(generate_study(tmp_path / "us", spec).paths[0])
    assert ds.NumberOfFrames == 5 and ds.pixel_array.shape == (5, 60, 80, 3)
    with pytest.raises(ValueError):
        generate_study(tmp_path / "bad", small_study_spec(series=[SeriesSpec(bits=8)]))
    with pytest.raises(ValueError):
        generate_study(tmp_path / "bad2", small_study_spec(modality="MR", series=[SeriesSpec(frames=3)]))
    with pytest.raises(ValueError):
        resolve_transfer_syntax("jpeg-xl")
    assert issubclass(TransferSyntaxUnavailable, RuntimeError)


def test_demo_studies_are_distinct() -> None:
    specs = demo_studies()
    assert len({s.patient_id for s in specs}) == len(specs) == len({s.accession_number for s in specs})
    assert {s.modality for s in specs} >= {"CT", "MR", "CR", "US", "OT"}
    assert any(s.include_pdf for s in specs) and any(s.burned_in_annotation for s in specs)
    assert any(sr.frames > 1 for s in specs for sr in s.series)


def test_describe_prints_ids_not_names(tmp_path: Path) -> None:
    study = generate_study(tmp_path, small_study_spec())
    table = describe([study])
    assert study.patient_id in table and study.accession_number in table
    assert study.spec.patient_name not in table and study.spec.patient_name.split("^")[0] not in table


def test_same_spec_same_uids(tmp_path: Path) -> None:
    spec = StudySpec(patient_id="P1", accession_number="A1", series=[SeriesSpec(images=1, rows=32, cols=32)])
    a = generate_study(tmp_path / "a", spec)
    b = generate_study(tmp_path / "b", spec)
    assert a.study_instance_uid == b.study_instance_uid
    assert [i.sop_instance_uid for i in a.instances] == [i.sop_instance_uid for i in b.instances]


@pytest.mark.slow
def test_benchmark_ct_is_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    study = generate_study(tmp_path, ct_study_spec())
    elapsed = time.monotonic() - started
    assert study.instance_count == 500
    assert 250e6 < study.total_bytes < 280e6
    assert elapsed < 30, f"500-slice CT took {elapsed:.1f} s"
