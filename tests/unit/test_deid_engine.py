"""Anonymisation of hostile files: nothing identifying survives, the output stays valid Part-10 DICOM."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from studypub.deid.engine import (
    BLANK_PDF,
    IMPLEMENTATION_CLASS_UID,
    DeidOptions,
    InstanceOutcome,
    StudyAnonymiser,
)
from studypub.deid.errors import BurnedInPolicyError, UnreadableDicomError
from studypub.deid.profile import IOD_AWARE_ACTIONS, iod_types, resolve_by_type
from tests.unit import deid_hostile as H

DUMMY_BY_VR = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "UR": "urn:anonymous",
}
BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
NUMBER_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"}


def _anonymise(tmp_path: Path, ds: FileDataset, name: str = "a", **kw: object) -> tuple[Path, InstanceOutcome]:
    src = H.write(ds, tmp_path / "in" / f"{name}.dcm", implicit=bool(kw.pop("implicit", False)))
    dst = tmp_path / "out" / f"{name}.dcm"
    options = kw.pop("options", DeidOptions())
    outcome = StudyAnonymiser(kw.pop("key", H.KEY), options).anonymise_file(src, dst)  # type: ignore[arg-type]
    return dst, outcome


def _assert_clean_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    assert H.MARKER not in data.lower(), "a ZQX marker survived"
    assert H.ORIG_ROOT.encode() not in data, "an original UID survived"
    assert not any(name.startswith(".") for name in (p.name for p in path.parent.iterdir())), "temp file left"
    return data


def _assert_structure(out: Dataset) -> None:
    for elem in H.walk(out):
        assert not elem.tag.is_private, f"private {elem.tag}"
        assert elem.tag.group & 0xFF00 not in (0x5000, 0x6000), f"curve/overlay {elem.tag}"
        assert elem.tag != H.UNKNOWN_PUBLIC_TAG and elem.tag != H.RETIRED_UNLISTED_TAG
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            for v in values:
                assert v.startswith("2.25.") or v.startswith("1.2.840.10008."), f"{elem.tag} keeps a UID"
        if elem.VR == "DA" and elem.tag != 0x00000000:
            assert elem.value in ("", "19000101"), f"{elem.tag} keeps a date"
    assert set(out.file_meta.keys()) == {
        0x00020000,
        0x00020001,
        0x00020002,
        0x00020003,
        0x00020010,
        0x00020012,
        0x00020013,
    }
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
    assert out.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert out.preamble == b"\x00" * 128
    assert out.PatientIdentityRemoved == "YES"
    assert "PS3.15-2026c" in out.DeidentificationMethod
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_hostile_file_every_table_attribute(tmp_path: Path, implicit: bool) -> None:
    ds, added = H.hostile_dataset()
    assert len(added) > 600  # every exact Table E.1-1 row outside groups 0000/0002
    pixels = ds.PixelData
    dst, outcome = _anonymise(tmp_path, ds, implicit=implicit)
    source = dcmread(tmp_path / "in" / "a.dcm")
    assert ("UN" if implicit else "LO") == source[0x00091001].VR  # implicit VR: private tags read back as UN
    assert source.file_meta.SourceApplicationEntityTitle == "ZQXSOURCEAE"
    data = _assert_clean_bytes(dst)
    for i in range(len(added)):
        assert H.marker_date(i).encode() not in data
    out = dcmread(dst)
    _assert_structure(out)
    assert out.file_meta.TransferSyntaxUID == (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    assert out.PixelData == pixels
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert (out.Manufacturer, out.BodyPartExamined, out.Modality) == ("ACME", "HEAD", "CT")  # kept
    assert outcome.sop_instance_uid == out.SOPInstanceUID and outcome.bytes_written == dst.stat().st_size
    assert (outcome.instance_number, outcome.series_number, outcome.modality) == (7, 3, "CT")
    assert not outcome.withheld

    top_types, _nested_types = iod_types().for_sop_class(str(out.SOPClassUID)) or ({}, {})
    assert top_types  # the CT Image IOD is described: combined actions follow its types
    for tag, action in added.items():
        elem = out.get(tag)
        vr = elem.VR if elem is not None else ""
        if action in IOD_AWARE_ACTIONS:  # Type 1 -> D, Type 2 -> Z, Type 3 -> X where allowed
            action = resolve_by_type(action, top_types.get(tag, "3"))[0]
        if action == "X":
            assert elem is None, f"{tag} ({action}) kept"
        elif action in ("Z", "X/Z", "X/Z/D") or (action == "X/Z/U*" and vr not in ("SQ", "UI")):
            assert elem is not None and elem.is_empty, f"{tag} ({action}) not empty"
        elif vr == "SQ":
            assert elem is not None and len(elem.value) == 1, f"{tag} ({action}): sequence dropped"
        elif vr == "UI":
            assert str(elem.value).startswith("2.25."), f"{tag} ({action})"
        elif action in ("D", "Z/D", "X/D"):
            assert elem is not None, f"{tag} ({action}) missing"
            if vr in BINARY_VRS:
                assert elem.value in (b"\x00\x00", b"\x00" * 4, b"\x00" * 8), f"{tag}"
            elif vr in NUMBER_VRS:
                assert float(elem.value) == 0, f"{tag}"
            else:
                assert str(elem.value) == DUMMY_BY_VR.get(vr, "ANONYMOUS"), f"{tag} ({action})"
        elif action in ("U", "X/Z/U*"):
            assert elem is None or elem.is_empty or str(elem.value).startswith("2.25."), f"{tag}"
        else:
            pytest.fail(f"unexpected action {action}")


def test_nested_sequences_three_levels(tmp_path: Path) -> None:
    ds, _ = H.hostile_dataset()
    dst, _ = _anonymise(tmp_path, ds)
    _assert_clean_bytes(dst)
    out = dcmread(dst)
    level1 = out.ReferencedSeriesSequence[0]
    level2 = level1.ReferencedInstanceSequence[0]
    level3 = level2.ContentSequence[0]
    assert level1.PatientName == "" and level1.SeriesInstanceUID.startswith("2.25.")
    assert "OperatorsName" not in level2 and level2.ReferencedSOPInstanceUID.startswith("2.25.")  # X/Z/D, Type 3
    assert level3.TextValue == "ANONYMOUS" and level3.PersonName == "ANONYMOUS"
    assert level3.Manufacturer == "ANONYMOUS"  # any free text inside a D sequence
    assert level3.DateTime == "19000101000000" and level3.UID.startswith("2.25.")
    assert level3.ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # coded structure kept
    assert "RequestAttributesSequence" not in out  # X
    assert "ReferencedStudySequence" not in out  # X/Z, not in the CT Image IOD -> X
    assert "OperatorIdentificationSequence" not in out  # X/D, Type 3 in the CT Image IOD -> X
    # An IOD the types do not describe (a retired SOP class): the conservative resolution, X/D -> D
    retired, _ = H.hostile_dataset()
    retired.SOPClassUID = retired.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.5"
    dst, _ = _anonymise(tmp_path / "retired", retired)
    _assert_clean_bytes(dst)
    person = dcmread(dst).OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert person.CodeValue == person.CodeMeaning == "ANONYMOUS"  # identity code sequence: dummied


def test_references_across_instances_follow_the_new_uids(tmp_path: Path) -> None:
    b = H.base_dataset(H.ORIG_ROOT + "200")
    a = H.base_dataset(H.ORIG_ROOT + "201")
    ref = Dataset()
    ref.ReferencedSOPClassUID = b.SOPClassUID
    ref.ReferencedSOPInstanceUID = b.SOPInstanceUID
    a.SourceImageSequence = [ref]
    a.ReferencedImageSequence = [ref]
    b_out, b_outcome = _anonymise(tmp_path, b, "b")
    a_out, a_outcome = _anonymise(tmp_path, a, "a")
    ra, rb = dcmread(a_out), dcmread(b_out)
    assert ra.SourceImageSequence[0].ReferencedSOPInstanceUID == rb.SOPInstanceUID == b_outcome.sop_instance_uid
    assert ra.ReferencedImageSequence[0].ReferencedSOPInstanceUID == rb.SOPInstanceUID
    assert ra.SourceImageSequence[0].ReferencedSOPClassUID == b.SOPClassUID  # class UIDs kept
    assert ra.StudyInstanceUID == rb.StudyInstanceUID == a_outcome.study_instance_uid
    assert ra.FrameOfReferenceUID == rb.FrameOfReferenceUID != H.FRAME_OF_REFERENCE_UID
    assert ra.SOPInstanceUID != rb.SOPInstanceUID


def test_determinism_same_key_same_bytes_other_key_other_uids(tmp_path: Path) -> None:
    first, o1 = _anonymise(tmp_path / "1", H.hostile_dataset()[0])
    second, o2 = _anonymise(tmp_path / "2", H.hostile_dataset()[0])
    _other, o3 = _anonymise(tmp_path / "3", H.hostile_dataset()[0], key=H.OTHER_KEY)
    assert first.read_bytes() == second.read_bytes()
    assert o1 == o2
    assert o3.sop_instance_uid != o1.sop_instance_uid and o3.study_instance_uid != o1.study_instance_uid
    anon = StudyAnonymiser(H.KEY)
    assert anon.new_uid(H.STUDY_UID) == o1.study_instance_uid
    clone = pickle.loads(pickle.dumps(anon))
    assert clone.new_uid(H.STUDY_UID) == o1.study_instance_uid and clone.options == anon.options
    import hashlib
    import hmac

    expected = int.from_bytes(hmac.new(H.KEY, H.STUDY_UID.encode(), hashlib.sha256).digest()[:16], "big")
    assert o1.study_instance_uid == f"2.25.{expected}"


@pytest.mark.parametrize("syntax", ["rle", "jpeg", "deflate"])
def test_compressed_and_deflated_pixel_data_pass_byte_for_byte(tmp_path: Path, syntax: str) -> None:
    ds, _ = H.hostile_dataset(rows=16)
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == "jpeg":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([b"\xff\xd8ZQX-not-decoded-fragment\xff\xd9", b"\xff\xd8second\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.NumberOfFrames = "2"
    else:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    src_pixels = ds.PixelData
    dst, outcome = _anonymise(tmp_path, ds)
    out = dcmread(dst)
    _assert_structure(out)
    assert out.PixelData == src_pixels  # never decoded, byte-for-byte
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID == outcome.transfer_syntax
    data = dst.read_bytes()
    if syntax == "jpeg":  # the marker lives inside the (opaque) pixel data only
        data = data.replace(b"ZQX-not-decoded-fragment", b"")
        assert outcome.number_of_frames == 2
    if syntax != "deflate":
        assert H.MARKER not in data.lower()
    assert H.ORIG_ROOT.encode() not in data or syntax == "deflate"


def test_multiframe_and_waveform_data_untouched(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "300", frames=3)
    waveform = Dataset()
    waveform.NumberOfWaveformChannels = 1
    waveform.NumberOfWaveformSamples = 4
    waveform.WaveformBitsAllocated = 16
    waveform.WaveformSampleInterpretation = "SS"
    waveform.WaveformData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    ds.WaveformSequence = [waveform]
    dst, outcome = _anonymise(tmp_path, ds)
    _assert_clean_bytes(dst)
    out = dcmread(dst)
    assert outcome.number_of_frames == 3 and out.NumberOfFrames == 3
    assert out.PixelData == ds.PixelData
    assert out.WaveformSequence[0].WaveformData == waveform.WaveformData


def test_options_retain_characteristics_and_device(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "400")
    ds.PatientAge, ds.PatientSex, ds.PatientWeight = "042Y", "F", "61"
    ds.DeviceSerialNumber, ds.StationName, ds.DeviceUID = "SN123", "CT01", H.ORIG_ROOT + "401"
    dst, _ = _anonymise(tmp_path, ds)
    out = dcmread(dst)
    assert "PatientAge" not in out and out.PatientSex == "" and "DeviceSerialNumber" not in out  # Type 3 in CT
    options = DeidOptions(retain_patient_characteristics=True, retain_device_identity=True)
    dst, _ = _anonymise(tmp_path / "opt", ds, options=options)
    out = dcmread(dst)
    assert (out.PatientAge, out.PatientSex, out.PatientWeight) == ("042Y", "F", 61)
    assert (out.DeviceSerialNumber, out.StationName) == ("SN123", "CT01")
    assert out.DeviceUID.startswith("2.25.")
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113108", "113109"]


def test_burned_in_annotation_policies(tmp_path: Path) -> None:
    ds, _ = H.hostile_dataset()
    ds.BurnedInAnnotation = "YES"
    src = H.write(ds, tmp_path / "in" / "burned.dcm")
    dst = tmp_path / "out" / "burned.dcm"
    outcome = StudyAnonymiser(H.KEY).anonymise_file(src, dst)
    assert outcome.withheld and outcome.withheld_reason == "burned_in_annotation" and outcome.bytes_written == 0
    assert not dst.exists()
    assert outcome.sop_instance_uid.startswith("2.25.")
    assert (outcome.study_instance_uid or "").startswith("2.25.")
    with pytest.raises(BurnedInPolicyError):
        StudyAnonymiser(H.KEY, DeidOptions(burned_in_policy="fail")).anonymise_file(src, dst)
    assert not dst.exists()
    included = StudyAnonymiser(H.KEY, DeidOptions(burned_in_policy="include")).anonymise_file(src, dst)
    assert not included.withheld and dst.exists()
    _assert_clean_bytes(dst)
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES"
    src = H.write(ds, tmp_path / "in" / "face.dcm")
    assert StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "x.dcm").withheld_reason == (
        "recognizable_visual_features"
    )


def test_encapsulated_pdf_withheld_included_or_failed(tmp_path: Path) -> None:
    src = H.write(H.pdf_dataset(H.ORIG_ROOT + "500"), tmp_path / "in" / "doc.dcm")
    dst = tmp_path / "out" / "doc.dcm"
    outcome = StudyAnonymiser(H.KEY).anonymise_file(src, dst)
    assert outcome.withheld and outcome.withheld_reason == "encapsulated_document" and not dst.exists()
    with pytest.raises(BurnedInPolicyError):
        StudyAnonymiser(H.KEY, DeidOptions(burned_in_policy="fail")).anonymise_file(src, dst)
    outcome = StudyAnonymiser(H.KEY, DeidOptions(burned_in_policy="include")).anonymise_file(src, dst)
    assert not outcome.withheld
    _assert_clean_bytes(dst)
    out = dcmread(dst)
    assert out.EncapsulatedDocument == BLANK_PDF and out.EncapsulatedDocumentLength == len(BLANK_PDF)
    assert out.DocumentTitle == ""  # studypub addition: X/Z -> Z


def test_descriptions_equal_to_kept_values_do_not_fail(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "650")
    ds.StudyDescription = ds.ProtocolName = "Brain"
    ds.PositionReferenceIndicator = "BRAIN"  # kept, not identifying
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "MRBRAIN", "99LOCAL", "MR Brain routine"
    ds.ProcedureCodeSequence = [code]
    ds.SeriesDescription = "MR Brain"
    dst, _ = _anonymise(tmp_path, ds)
    out = dcmread(dst)
    assert out.PositionReferenceIndicator == "BRAIN" and "StudyDescription" not in out


def test_unicode_identity_is_removed(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "600")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Петров^Иван^Иванович"
    ds.InstitutionName = "Клиника Химки"
    dst, _ = _anonymise(tmp_path, ds)
    data = dst.read_bytes()
    for word in ("Петров", "Иван", "Химки"):
        assert word.encode("utf-8") not in data
    assert dcmread(dst).SpecificCharacterSet == "ISO_IR 192"


def test_unreadable_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(UnreadableDicomError):
        StudyAnonymiser(H.KEY).anonymise_file(bad, tmp_path / "out.dcm")
    with pytest.raises(ValueError):
        StudyAnonymiser(b"short")
