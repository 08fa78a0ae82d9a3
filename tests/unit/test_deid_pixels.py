"""Pixel data shorter than its header says is withheld with a reason, never published as is (issue 10)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import MPEG4HP41, JPEGBaseline8Bit, RLELossless

from studypub.deid.engine import DeidOptions, InstanceOutcome, StudyAnonymiser, pixel_data_reason
from studypub.deid.pixels import PIXEL_DATA_REASONS, expected_native_length
from studypub.settings import Settings
from studypub.spool import WorkPaths, mark_done
from tasks.anonymise import anonymise_spool, withheld_text
from tests.unit import deid_hostile as H


def _anonymise(tmp_path: Path, ds: FileDataset, name: str, options: DeidOptions | None = None) -> InstanceOutcome:
    src = H.write(ds, tmp_path / "in" / f"{name}.dcm")
    return StudyAnonymiser(H.KEY, options).anonymise_file(src, tmp_path / "out" / f"{name}.dcm")


def _assert_withheld(tmp_path: Path, outcome: InstanceOutcome, name: str, reason: str) -> None:
    assert outcome.withheld and outcome.withheld_reason == reason, outcome.withheld_reason
    assert outcome.bytes_written == 0 and not (tmp_path / "out" / f"{name}.dcm").exists()
    assert outcome.sop_instance_uid.startswith("2.25.")  # the outcome names no original UID
    assert (outcome.study_instance_uid or "").startswith("2.25.")


def _assert_published(tmp_path: Path, outcome: InstanceOutcome, name: str, ds: FileDataset) -> None:
    assert not outcome.withheld and outcome.withheld_reason is None
    assert dcmread(tmp_path / "out" / f"{name}.dcm").PixelData == ds.PixelData  # byte-for-byte


def _item(fragment: bytes) -> bytes:
    """One encapsulated item (pydicom's own helpers refuse to write an empty fragment)."""
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(fragment)) + fragment


def _compressed(ds: FileDataset, fragments: list[bytes], *, offsets: list[int] | None = None) -> FileDataset:
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    bot = struct.pack(f"<{len(offsets)}I", *offsets) if offsets else b""
    ds.PixelData = _item(bot) + b"".join(_item(f) for f in fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


# --------------------------------------------------------------------------------------------------- native


def test_native_pixel_data_shorter_than_its_header_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "700")  # 8 x 8, 16 bits: 128 bytes
    ds.PixelData = ds.PixelData[:-2]
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "short"), "short", "pixel_data_short")
    ds.PixelData = b""
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "empty"), "empty", "pixel_data_short")


def test_native_file_cut_short_in_its_pixel_data_is_withheld(tmp_path: Path) -> None:
    """The usual way it happens: the file ends before the length its Pixel Data element announces."""
    src = H.write(H.base_dataset(H.ORIG_ROOT + "701"), tmp_path / "in" / "cut.dcm")
    src.write_bytes(src.read_bytes()[:-40])
    outcome = StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "out" / "cut.dcm")
    _assert_withheld(tmp_path, outcome, "cut", "pixel_data_short")


def test_native_pixel_data_exact_or_longer_is_published(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "702")
    assert len(ds.PixelData) == 8 * 8 * 2
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "exact"), "exact", ds)
    ds.PixelData = ds.PixelData + b"\x00\x00"  # trailing padding is not a defect
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "padded"), "padded", ds)


def test_multiframe_missing_a_frame_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "703", frames=3)
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "three"), "three", ds)
    ds.PixelData = ds.PixelData[: 8 * 8 * 2 * 2]  # two frames' worth under a header that says three
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "two"), "two", "pixel_data_short")


@pytest.mark.parametrize(("frames", "size"), [(1, 4), (3, 10)], ids=["one-frame", "three-frames"])
def test_one_bit_pixels_count_bits_not_bytes(tmp_path: Path, frames: int, size: int) -> None:
    """BitsAllocated 1: 5 x 5 pixels are 25 bits (4 bytes); 3 frames are packed together (75 bits, 10 bytes)."""
    ds = H.base_dataset(H.ORIG_ROOT + "704")
    ds.Rows = ds.Columns = 5
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    if frames > 1:
        ds.NumberOfFrames = str(frames)
    ds.PixelData = b"\x55" * size
    assert expected_native_length(ds) == get_expected_length(ds, "bytes") == size
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "bits"), "bits", ds)
    ds.PixelData = b"\x55" * (size - 2)  # pydicom pads odd lengths: two bytes short stays short on disk
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "fewbits"), "fewbits", "pixel_data_short")


def test_expected_length_follows_samples_and_ybr_full_422(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "705", rows=4)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    assert expected_native_length(ds) == get_expected_length(ds, "bytes") == 4 * 4 * 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    assert expected_native_length(ds) == get_expected_length(ds, "bytes") == 4 * 4 * 2
    ds.PixelData = b"\x10" * (4 * 4 * 2)
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "ybr"), "ybr", ds)


def test_pixel_data_without_dimensions_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "706")
    del ds.Rows
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "norows"), "norows", "pixel_data_undescribed")


def test_float_pixel_data_is_checked_too(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "707", rows=4)
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = b"\x00" * (4 * 4 * 4 - 4)
    assert pixel_data_reason(ds) == "pixel_data_short"
    ds.FloatPixelData = b"\x00" * (4 * 4 * 4)
    assert pixel_data_reason(ds) is None


def test_no_pixel_data_is_no_defect() -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "708")
    del ds.PixelData
    assert pixel_data_reason(ds) is None
    assert set(PIXEL_DATA_REASONS) == {
        "pixel_data_short",
        "pixel_data_missing_frames",
        "pixel_data_malformed",
        "pixel_data_undescribed",
    }


@pytest.mark.parametrize("policy", ["withhold", "include", "fail"])
def test_damaged_pixels_are_withheld_whatever_the_burned_in_policy(tmp_path: Path, policy: str) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "709")
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = ds.PixelData[:64]
    outcome = _anonymise(tmp_path, ds, "both", DeidOptions(burned_in_policy=policy))  # type: ignore[arg-type]
    _assert_withheld(tmp_path, outcome, "both", "pixel_data_short")


# ------------------------------------------------------------------------------------------------ encapsulated


def test_compressed_with_an_empty_fragment_for_a_frame_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "710", rows=16)
    ds.NumberOfFrames = "2"
    _compressed(ds, [b"\xff\xd8first!\xff\xd9", b""])
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "empty"), "empty", "pixel_data_missing_frames")
    _compressed(ds, [b"\xff\xd8first!\xff\xd9", b"\xff\xd8second\xff\xd9"])
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "full"), "full", ds)


def test_compressed_frame_of_empty_fragments_per_offset_table_is_withheld(tmp_path: Path) -> None:
    """Three fragments for two frames: enough with data in all, but the offset table gives frame 2 only the
    empty one."""
    ds = H.base_dataset(H.ORIG_ROOT + "711", rows=16)
    ds.NumberOfFrames = "2"
    first_a, first_b = b"\xff\xd8fi", b"rst\xff\xd9\x00"  # fragments are even-length items
    _compressed(ds, [first_a, first_b, b""], offsets=[0, 16 + len(first_a) + len(first_b)])
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "bot"), "bot", "pixel_data_missing_frames")
    second = b"\xff\xd8second\xff\xd9"
    _compressed(ds, [first_a + first_b, second], offsets=[0, 8 + len(first_a + first_b)])
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "botok"), "botok", ds)


def test_compressed_real_encoder_output_is_published(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "712", rows=16, frames=3)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "rle"), "rle", ds)
    ds.PixelData = encapsulate([b"\xff\xd8ab\xff\xd9"])  # one fragment for three frames
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "rle1"), "rle1", "pixel_data_missing_frames")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_compressed_file_cut_inside_a_fragment_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "713", rows=16)
    _compressed(ds, [b"\xff\xd8" + b"\x42" * 60 + b"\xff\xd9"])
    src = H.write(ds, tmp_path / "in" / "cut.dcm")
    src.write_bytes(src.read_bytes()[:-30])  # mid-fragment: no sequence delimiter either
    outcome = StudyAnonymiser(H.KEY).anonymise_file(src, tmp_path / "out" / "cut.dcm")
    _assert_withheld(tmp_path, outcome, "cut", "pixel_data_short")


def test_compressed_fragment_announcing_more_than_there_is_is_withheld(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "716", rows=16)
    _compressed(ds, [b"\xff\xd8" + b"\x42" * 18 + b"\xff\xd9"])
    value = bytearray(ds.PixelData)
    struct.pack_into("<I", value, 12, 64)  # the fragment's item says 64 bytes; 22 follow, then the delimiter
    ds.PixelData = bytes(value)
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "long"), "long", "pixel_data_short")


def test_compressed_garbage_is_withheld_as_malformed(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "714", rows=16)
    _compressed(ds, [b"\xff\xd8data\xff\xd9"])
    ds.PixelData = ds.PixelData[:8] + b"\x01\x02\x03\x04\x05\x06\x07\x08" + ds.PixelData[8:]
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "junk"), "junk", "pixel_data_malformed")


def test_video_is_one_stream_for_all_frames(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "715", rows=16)
    ds.NumberOfFrames = "30"
    _compressed(ds, [b"\x00\x00\x00\x01" + b"\x65" * 40])
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    _assert_published(tmp_path, _anonymise(tmp_path, ds, "video"), "video", ds)
    _compressed(ds, [b""])
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    _assert_withheld(tmp_path, _anonymise(tmp_path, ds, "novideo"), "novideo", "pixel_data_missing_frames")


# ------------------------------------------------------------------------------------ through the anonymise step


def test_anonymise_step_counts_damaged_instances_as_withheld_with_their_reason(tmp_path: Path) -> None:
    paths = WorkPaths(tmp_path / "task").create()
    good = H.base_dataset(H.ORIG_ROOT + "720")
    short = H.base_dataset(H.ORIG_ROOT + "721")
    short.PixelData = short.PixelData[:100]
    burned = H.base_dataset(H.ORIG_ROOT + "722")
    burned.BurnedInAnnotation = "YES"
    for name, ds in (("a", good), ("b", short), ("c", burned)):
        H.write(ds, paths.raw / f"{name}.dcm")
    mark_done(paths, "raw", {"instances": 3})
    result = anonymise_spool(Settings(), H.KEY, paths)
    assert result["instances"] == 1 and result["withheld"] == 2
    assert result["withheld_reasons"] == {"pixel_data_short": 1, "burned_in_annotation": 1}
    assert sorted(p.name for p in paths.clean.iterdir()) == ["a.dcm"]
    text = withheld_text({"withheld": 2, "withheld_reasons": result["withheld_reasons"]})
    assert text == "all 2 instances were withheld (burned_in_annotation: 1, pixel_data_short: 1)"
