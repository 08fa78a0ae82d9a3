"""Anonymiser benchmark with OCR (prints numbers; not a test).

Generates a US-heavy study (ultrasound stills with the patient's name and ID burned into the pixels, half of
them flagged BurnedInAnnotation=YES, half not, and the other half of the series without text) and the
500-slice CT of ``bench/publish.py``, then times the anonymise step's engine on them in its process pool
(``studypub.deid.pool``, all cores): instances/s and MB/s of input, OCR on (``mask``, the default) and off
(the reference, in the same run). Medians of ``--repeat`` runs.

Usage: ``python -m bench.anonymise [--us 60] [--slices 500] [--repeat 3] [--workers 0]``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from studypub.deid.pool import anonymise_one, init_worker, pool_context, warm_up
from studypub.deid.profile import DeidOptions
from studypub.demo.studies import GeneratedStudy, SeriesSpec, StudySpec, ct_study_spec, generate_study


def us_study_spec(images: int) -> StudySpec:
    """Ultrasound stills, 480x640: half with burned-in text (flagged), half RGB without."""
    half = max(1, images // 2)
    return StudySpec(
        patient_id="BENCH-US",
        accession_number="ACC-BENCH-US",
        patient_name="BENCHMARK^PATIENT",
        study_description="US benchmark",
        modality="US",
        series=[
            SeriesSpec(images=half, rows=480, cols=640, burned_in_annotation=True, description="Liver, text"),
            SeriesSpec(images=images - half, rows=480, cols=640, color=True, description="Kidney, colour"),
        ],
        phi_rich=True,
    )


def run(study: GeneratedStudy, options: DeidOptions, workers: int, repeat: int) -> tuple[float, dict[str, int]]:
    """Median seconds to anonymise every instance of ``study`` in a warm pool; withheld reasons of the last run."""
    times: list[float] = []
    withheld: dict[str, int] = {}
    key = secrets.token_bytes(32)
    with ProcessPoolExecutor(
        workers, mp_context=pool_context(), initializer=init_worker, initargs=(key, options)
    ) as pool:
        for fut in [pool.submit(warm_up) for _ in range(workers)]:
            fut.result()
        for _ in range(repeat):
            out = Path(tempfile.mkdtemp(prefix="bench-anon-"))
            try:
                started = time.perf_counter()
                futures = [pool.submit(anonymise_one, str(p), str(out / f"{i}.dcm")) for i, p in enumerate(study.paths)]
                withheld = {}
                for fut in futures:
                    was_withheld, reason = fut.result()
                    if was_withheld:
                        withheld[reason or "?"] = withheld.get(reason or "?", 0) + 1
                times.append(time.perf_counter() - started)
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return statistics.median(times), withheld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--us", type=int, default=60, help="ultrasound stills in the US-heavy study")
    parser.add_argument("--slices", type=int, default=500, help="CT slices (512x512)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="pool size; 0: one per core")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="bench-anonymise-"))
    try:
        studies = {
            f"US-heavy ({args.us} stills 480x640)": generate_study(root / "us", us_study_spec(args.us)),
            f"CT ({args.slices} slices 512x512)": generate_study(root / "ct", ct_study_spec(args.slices)),
        }
        print(f"workers={workers}, repeat={args.repeat} (medians)")
        for name, study in studies.items():
            mb = sum(p.stat().st_size for p in study.paths) / 1e6
            n = len(study.paths)
            for label, options in (
                ("OCR mask", DeidOptions(burned_in_text="mask")),
                ("OCR off", DeidOptions(burned_in_text="off")),
            ):
                seconds, withheld = run(study, options, workers, args.repeat)
                print(
                    f"{name}, {label}: {n} instances ({mb:.1f} MB) in {seconds:.2f} s -> "
                    f"{n / seconds:.1f} instances/s, {mb / seconds:.1f} MB/s; withheld {withheld or 0}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
