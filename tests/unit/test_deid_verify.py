"""Verification fails closed: one leaked attribute, original UID or private tag in an output raises."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset

from studypub.deid.engine import DeidOptions, StudyAnonymiser, VerificationContext, verify_file
from studypub.deid.errors import DeidError, DeidVerificationError
from tests.unit import deid_hostile as H

SOP = H.ORIG_ROOT + "700"
ORIGINALS = frozenset({SOP, H.STUDY_UID, H.SERIES_UID, H.FRAME_OF_REFERENCE_UID, H.ORIG_ROOT + "701"})
MARKERS = frozenset({"zqxpatient", "zqxgiven", "zqxpid0001", "zqxinstitution", "19330303"})
DESCRIPTORS = frozenset({"zqxstudydesc", "zqximagecomment for patient"})


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("verify")
    ds = H.base_dataset(SOP)
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = H.ORIG_ROOT + "701"
    ds.ReferencedImageSequence = [ref]
    src = H.write(ds, tmp / "src.dcm")
    dst = tmp / "good.dcm"
    StudyAnonymiser(H.KEY).anonymise_file(src, dst)
    return dst


def _context(path: Path) -> VerificationContext:
    new = frozenset(str(e.value) for e in H.walk(dcmread(path)) if e.VR == "UI" and str(e.value).startswith("2.25."))
    return VerificationContext(original_uids=ORIGINALS, new_uids=new, markers=MARKERS, descriptors=DESCRIPTORS)


def _tampered(good: Path, tmp_path: Path, change: Callable[[FileDataset], None]) -> Path:
    ds = dcmread(good)
    change(ds)
    out = tmp_path / "tampered.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_the_untampered_output_passes(good: Path) -> None:
    verify_file(good)
    verify_file(good, context=_context(good))


def _private_in_sequence(ds: FileDataset) -> None:
    ds.ReferencedImageSequence[0].add_new(0x00091010, "LO", "x")


def _free_text_in_content(ds: FileDataset) -> None:
    item = Dataset()
    item.ValueType = "TEXT"
    item.Manufacturer = "free text"  # inside a D sequence free text must be the dummy
    ds.ContentSequence = [item]


def _local_code_in_content(ds: FileDataset) -> None:
    concept = Dataset()  # a local scheme's code is free text: inside a D sequence it must be the dummy
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "X1", "99HOSP", "Ivanov follow-up"
    item = Dataset()
    item.ValueType = "CONTAINER"
    item.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = [item]


TAMPERINGS: dict[str, Callable[[FileDataset], None]] = {
    "X attribute present": lambda ds: setattr(ds, "PatientBirthDate", "19330303"),
    "Z attribute with a value": lambda ds: setattr(ds, "PatientName", "Someone^Else"),
    "D attribute not the dummy": lambda ds: setattr(ds, "PatientID", "12345"),
    "private tag with creator": lambda ds: ds.private_block(0x0009, "ACME", create=True).add_new(1, "LO", "x"),
    "private tag without creator": lambda ds: ds.add_new(0x00111001, "LO", "x"),
    "private tag in a sequence": _private_in_sequence,
    "free text inside a Content Sequence": _free_text_in_content,
    "local code inside a Content Sequence": _local_code_in_content,
    "overlay group": lambda ds: ds.add_new(0x60000010, "US", 8),
    "curve group": lambda ds: ds.add_new(0x50000005, "US", 1),
    "unknown public tag": lambda ds: ds.add_new(H.UNKNOWN_PUBLIC_TAG, "LO", "x"),
    "retired attribute not in the table": lambda ds: ds.add_new(H.RETIRED_UNLISTED_TAG, "LO", "x"),
    "file meta extra": lambda ds: setattr(ds.file_meta, "SourceApplicationEntityTitle", "PACS"),
    "identity stamp missing": lambda ds: delattr(ds, "PatientIdentityRemoved"),
    "element after pixel data": lambda ds: setattr(ds, "DataSetTrailingPadding", b"\x00\x00"),
    "foreign UID": lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.3.4.5.6.7.8"),
}


@pytest.mark.parametrize("change", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_structural_leaks_raise_even_without_context(good: Path, tmp_path: Path, change: Callable) -> None:
    bad = _tampered(good, tmp_path, change)
    with pytest.raises(DeidVerificationError):
        verify_file(bad)


ORIGINAL_UID_TAMPERINGS: dict[str, tuple[Callable[[FileDataset], None], str]] = {
    "top level": (lambda ds: setattr(ds, "StudyInstanceUID", H.STUDY_UID), "StudyInstanceUID"),
    "nested reference": (
        lambda ds: setattr(ds.ReferencedImageSequence[0], "ReferencedSOPInstanceUID", SOP),
        "ReferencedSOPInstanceUID",
    ),
    "multi-valued": (
        lambda ds: setattr(ds, "SourceFrameOfReferenceUID", [ds.SOPInstanceUID, H.SERIES_UID]),
        "SourceFrameOfReferenceUID",
    ),
    "inside a kept text (bytes scan)": (
        lambda ds: setattr(ds, "SoftwareVersions", H.FRAME_OF_REFERENCE_UID),
        "original UID occurs in the output bytes",
    ),
}


@pytest.mark.parametrize(("change", "where"), ORIGINAL_UID_TAMPERINGS.values(), ids=ORIGINAL_UID_TAMPERINGS.keys())
def test_original_uid_anywhere_raises(good: Path, tmp_path: Path, change: Callable, where: str) -> None:
    bad = _tampered(good, tmp_path, change)
    with pytest.raises(DeidVerificationError) as info:
        verify_file(bad, context=_context(good))
    assert info.value.code == "deid_original_uid"
    assert where in str(info.value)  # the check that should catch it did
    assert H.ORIG_ROOT not in str(info.value)  # errors name tags, never values


LEAKS: dict[str, Callable[[FileDataset], None]] = {
    "name copied to a kept attribute": lambda ds: setattr(ds, "Manufacturer", "ZQXPATIENT"),
    "name in lower case in a longer text": lambda ds: setattr(ds, "Manufacturer", "made for zqxgiven"),
    "patient id in a nested kept text": lambda ds: setattr(ds.ReferencedImageSequence[0], "Manufacturer", "ZQXPID0001"),
    "birth date in a kept text": lambda ds: setattr(ds, "SoftwareVersions", "build 19330303"),
    "description inside a longer kept text": lambda ds: setattr(ds, "ManufacturerModelName", "zqxstudydesc 2"),
    "name inside a kept binary value (bytes scan)": lambda ds: setattr(ds, "ICCProfile", b"xxZQXPATIENTxx"),
}


@pytest.mark.parametrize("change", LEAKS.values(), ids=LEAKS.keys())
def test_leak_scan_finds_source_values(good: Path, tmp_path: Path, change: Callable) -> None:
    bad = _tampered(good, tmp_path, change)
    with pytest.raises(DeidVerificationError):
        verify_file(bad, context=_context(good))


def test_vocabulary_is_not_a_leak(good: Path, tmp_path: Path) -> None:
    """A removed description equal to a kept code meaning / CS value is not identity (no false alarm)."""
    context = VerificationContext(
        original_uids=ORIGINALS,
        new_uids=_context(good).new_uids,
        markers=MARKERS | {"head", "ct head"},
        descriptors=DESCRIPTORS | {"brain"},
    )
    verify_file(good, context=context)  # BodyPartExamined = HEAD is kept
    same = _tampered(good, tmp_path, lambda ds: setattr(ds, "PositionReferenceIndicator", "BRAIN"))
    verify_file(same, context=context)  # a removed description equal to a whole kept value
    name = _tampered(good, tmp_path, lambda ds: setattr(ds, "PositionReferenceIndicator", "ZQXPATIENT"))
    with pytest.raises(DeidVerificationError):
        verify_file(name, context=context)  # ...but never an identity value
    code = Dataset()  # a public code whose meaning is the one pydicom's dictionary gives it (SCT Head)
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "69536005", "SCT", "Head"
    ok = _tampered(good, tmp_path, lambda ds: setattr(ds, "AnatomicRegionSequence", [code]))
    verify_file(ok, context=context)
    local = Dataset()  # the same words from a local scheme are free text: a removed value inside is a leak
    local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning = "CTHEAD", "99LOCAL", "CT Head"
    bad_code = _tampered(good, tmp_path, lambda ds: setattr(ds, "AnatomicRegionSequence", [local]))
    with pytest.raises(DeidVerificationError):
        verify_file(bad_code, context=context)
    unknown = Dataset()  # ...and so is a public scheme's code whose meaning is not the dictionary's
    unknown.CodeValue, unknown.CodingSchemeDesignator, unknown.CodeMeaning = "69536005", "SCT", "CT head of zqx"
    bad_meaning = _tampered(good, tmp_path, lambda ds: setattr(ds, "AnatomicRegionSequence", [unknown]))
    with pytest.raises(DeidVerificationError):
        verify_file(bad_meaning, context=context)
    bad = _tampered(good, tmp_path, lambda ds: setattr(ds, "Manufacturer", "CT HEAD"))
    with pytest.raises(DeidVerificationError):
        verify_file(bad, context=context)


def test_burned_in_output_fails_unless_policy_includes(good: Path, tmp_path: Path) -> None:
    bad = _tampered(good, tmp_path, lambda ds: setattr(ds, "BurnedInAnnotation", "YES"))
    with pytest.raises(DeidVerificationError):
        verify_file(bad)
    verify_file(bad, options=DeidOptions(burned_in_policy="include"))


def test_anonymise_file_fails_closed_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = H.base_dataset(SOP)
    ds.ManufacturerModelName = "zqxpatient scanner"  # a kept attribute quoting the (removed) patient name
    src = H.write(ds, tmp_path / "in" / "leak.dcm")
    out_dir = tmp_path / "out"
    StudyAnonymiser(H.KEY).anonymise_file(src, out_dir / "leak.dcm")  # cleaned to the dummy
    assert dcmread(out_dir / "leak.dcm").ManufacturerModelName == "ANONYMOUS"
    assert b"zqx" not in (out_dir / "leak.dcm").read_bytes().lower()
    (out_dir / "leak.dcm").unlink()
    monkeypatch.setattr(StudyAnonymiser, "_clean_values", lambda self, *args: None)  # as if cleaning missed it
    with pytest.raises(DeidVerificationError) as info:
        StudyAnonymiser(H.KEY).anonymise_file(src, out_dir / "leak.dcm")
    assert isinstance(info.value, DeidError) and info.value.code == "deid_leak"
    assert "ManufacturerModelName" in str(info.value) and "zqx" not in str(info.value).lower()
    assert list(out_dir.iterdir()) == []


def test_not_dicom_output_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    with pytest.raises(DeidVerificationError):
        verify_file(junk)


def test_leak_scan_is_case_insensitive_beyond_ascii(tmp_path: Path) -> None:
    ds = H.base_dataset(SOP)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "ПЕТРОВ^Иван"
    ds.ManufacturerModelName = "сканер петрова"  # lower-case copy of the family name in a kept attribute
    src = H.write(ds, tmp_path / "in" / "ru.dcm")
    StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "out" / "ru.dcm")
    out = (tmp_path / "out" / "ru.dcm").read_bytes()
    assert "петров".encode() not in out.lower() and "ПЕТРОВ".encode() not in out
    assert dcmread(tmp_path / "out" / "ru.dcm").ManufacturerModelName == "ANONYMOUS"
