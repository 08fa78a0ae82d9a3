"""The viewer index and instance access: an archive written the way the zip step writes it (sequentially, an
unseekable stream, deflated and stored entries, zip64 local extras) gives back every instance byte for byte
from its indexed range; signatures bind the archive, the position and the expiry."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from studypub.storage import LocalStorage
from studypub.viewer.access import BlockCache, EntryUnreadable, expiry, for_browser, read_entry, sign, verify
from studypub.viewer.index import Entry, instance_metadata
from tasks.archive import AppendOnlyWriter


def _instance(number: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID-1"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = os.urandom(16 * 16 * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_every_indexed_entry_reads_back_exactly(tmp_path: Path) -> None:
    storage = LocalStorage(url=f"file://{tmp_path}", root=tmp_path)
    blobs = [_instance(n) for n in range(1, 6)]
    entries = []
    with (
        (tmp_path / "a.zip").open("wb") as raw,
        zipfile.ZipFile(AppendOnlyWriter(raw), "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
    ):
        for n, blob in enumerate(blobs):
            method = zipfile.ZIP_STORED if n == 2 else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(f"PT000000/ST000000/SE000000/IM{n:06d}")
            info.compress_type = method
            with zf.open(info, "w", force_zip64=(n == 3)) as fout:
                fout.write(blob)
            entries.append(Entry.from_zipinfo(zf.filelist[-1]))
        zf.writestr("README.txt", b"note")
    for blob, entry in zip(blobs, entries, strict=True):
        assert Entry.from_list(entry.to_list()) == entry
        assert read_entry(storage, "a.zip", entry) == blob
    broken = Entry(entries[1].offset + 7, entries[1].compressed, entries[1].size, 8, entries[1].name_length)
    with pytest.raises(EntryUnreadable):
        read_entry(storage, "a.zip", broken)


def test_metadata_keeps_what_a_viewer_needs_and_no_identity() -> None:
    ds = dcmread(io.BytesIO(_instance(3)))
    meta = instance_metadata(ds)
    assert meta["Rows"] == 16 and meta["PixelSpacing"] == [0.5, 0.5] and meta["ImagePositionPatient"][2] == 3.0
    assert meta["WindowWidth"] == 400 and meta["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert "PatientName" not in meta and "PatientID" not in meta and "PixelData" not in meta


def test_signatures_bind_archive_position_and_expiry() -> None:
    secret = b"s" * 32
    expires = expiry(600, now=1_000_000)
    assert expires >= 1_000_600 and expires % 300 == 0
    assert expiry(600, now=1_000_001) == expires  # URLs made minutes apart are the same (cacheable)
    signature = sign(secret, "archives/a.zip", 4, expires)
    assert verify(secret, "archives/a.zip", 4, str(expires), signature, now=1_000_100)
    assert not verify(secret, "archives/a.zip", 5, str(expires), signature, now=1_000_100)
    assert not verify(secret, "archives/b.zip", 4, str(expires), signature, now=1_000_100)
    assert not verify(secret, "archives/a.zip", 4, str(expires + 300), signature, now=1_000_100)
    assert not verify(b"t" * 32, "archives/a.zip", 4, str(expires), signature, now=1_000_100)
    assert not verify(secret, "archives/a.zip", 4, str(expires), signature, now=expires + 1)  # expired
    assert not verify(secret, "archives/a.zip", 4, "soon", signature, now=1_000_100)


class _CountingStorage:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def read_range(self, key: str, start: int, length: int) -> bytes:
        self.reads += 1
        return self.data[start : start + length]


def test_block_cache_reads_any_range_with_few_storage_reads() -> None:
    data = os.urandom(10_000)
    storage = _CountingStorage(data)
    cache = BlockCache(storage, block_size=1024, capacity=4)
    for start, length in [(0, 10), (1000, 100), (1023, 2), (2047, 3000), (9990, 100), (5000, 0 + 1)]:
        assert cache.read_range("k", start, length) == data[start : start + length]
    reads = storage.reads
    assert cache.read_range("k", 9300, 500) == data[9300:9800]  # block 9: cached
    assert storage.reads == reads
    assert reads <= 10  # one read per distinct block, not per request


def test_a_deflated_instance_is_served_inflated_with_the_same_content() -> None:
    ds = dcmread(io.BytesIO(_instance(2)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    packed = io.BytesIO()
    ds.save_as(packed, enforce_file_format=True)
    served = dcmread(io.BytesIO(for_browser(packed.getvalue())))
    assert served.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert served.PixelData == ds.PixelData and served.SOPInstanceUID == ds.SOPInstanceUID
    plain = _instance(3)
    assert for_browser(plain) is plain
