"""Benchmark of the engine: ``python -m studypub.deid.engine --bench DIR --generate 400 --processes 1,2``.

Generates realistic 512x512 16-bit CT slices (≈530 KB each, identity in the usual places, private Siemens-like
blocks, a few sequences) and times ``anonymise_file`` (read, clean, write, verify, rename) in 1..N processes.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset

from studypub.deid.engine import StudyAnonymiser
from studypub.deid.profile import DeidOptions


def make_synthetic_ct(path: Path, index: int, study_uid: str, series_uid: str, rows: int = 512) -> None:
    """A realistic 512x512 16-bit CT slice with identity, private tags and a few sequences (bench input)."""
    import numpy as np
    from pydicom.dataset import FileDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "PACS_AE"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20250201"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "161802.123"
    ds.AccessionNumber = "KP125706548L"
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.InstitutionName = "Khimki Clinic"
    ds.InstitutionAddress = "Leningradskaya 1, Khimki"
    ds.ReferringPhysicianName = "Ivanov^Petr"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT HEAD"
    ds.SeriesDescription = "HEAD 5mm"
    ds.OperatorsName = "Sidorova^Anna"
    ds.ManufacturerModelName = "SOMATOM"
    ds.PatientName = "Petrov^Ivan^Ivanovich"
    ds.PatientID = "1000001158664"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.PatientAge = "055Y"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "5.0"
    ds.KVP = "120"
    ds.DeviceSerialNumber = "12345"
    ds.SoftwareVersions = "syngo CT VA48A"
    ds.ProtocolName = "Head routine"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = "2"
    ds.InstanceNumber = str(index + 1)
    ds.ImagePositionPatient = ["-250.0", "-250.0", str(-index * 5.0)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = series_uid[:-1] + "9"
    ds.SliceLocation = str(-index * 5.0)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.PixelSpacing = ["0.48", "0.48"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = series_uid[:-1] + "1"
    ds.ReferencedImageSequence = [ref]
    req = Dataset()
    req.RequestedProcedureID = "RP123456"
    req.ScheduledProcedureStepID = "SPS123456"
    req.RequestedProcedureDescription = "CT HEAD"
    ds.RequestAttributesSequence = [req]
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "CT Head"
    ds.ProcedureCodeSequence = [code]
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    block.add_new(0x10, "OB", b"SV10" + bytes(6000))
    block.add_new(0x20, "OB", b"SV10" + bytes(3000))
    pblock = ds.private_block(0x0019, "SIEMENS CT VA0  COAD", create=True)
    for i in range(20):
        pblock.add_new(0x10 + i, "DS", str(i))
    ds.PixelData = np.random.default_rng(index).integers(0, 4096, (rows, rows), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


_WORKER: StudyAnonymiser | None = None


def _pool_init(key: bytes, options: DeidOptions) -> None:
    global _WORKER  # per worker process, set once by the pool initializer
    _WORKER = StudyAnonymiser(key, options)


def _pool_run(job: tuple[str, str]) -> int:
    assert _WORKER is not None
    return _WORKER.anonymise_file(Path(job[0]), Path(job[1])).bytes_written


def run_bench(directory: Path, generate: int, processes: list[int], repeat: int) -> None:
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor

    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    if generate:
        study, series = generate_uid(None), generate_uid(None)
        for i in range(generate):
            make_synthetic_ct(directory / f"ct{i:05d}.dcm", i, study, series)
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"no files in {directory} (use --generate N)")
    key = secrets.token_bytes(32)
    options = DeidOptions()
    mb = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory() as out:
        outdir = Path(out)
        jobs = [(str(p), str(outdir / p.name)) for p in files]
        for n in processes:
            best = float("inf")
            cpu = float("inf")
            if n == 1:
                for _ in range(repeat):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    anon = StudyAnonymiser(key, options)
                    for s, d in jobs:
                        anon.anonymise_file(Path(s), Path(d))
                    best = min(best, time.perf_counter() - start)
                    cpu = min(cpu, time.process_time() - start_cpu)
            else:
                # the pool is started and warmed up (imports, profile) before timing: workers are long-lived
                with ProcessPoolExecutor(n, initializer=_pool_init, initargs=(key, options)) as pool:
                    list(pool.map(_pool_run, jobs[: n * 2], chunksize=1))
                    for _ in range(repeat):
                        start = time.perf_counter()
                        list(pool.map(_pool_run, jobs, chunksize=8))
                        best = min(best, time.perf_counter() - start)
            cpu_note = f", CPU {cpu / len(files) * 1000:.2f} ms/file" if cpu != float("inf") else ""
            print(
                f"processes={n}: {len(files)} files ({mb:.1f} MB) in {best:.2f} s -> "
                f"{len(files) / best:.0f} images/s, {best / len(files) * 1000 * n:.2f} ms/file/core{cpu_note}"
            )
