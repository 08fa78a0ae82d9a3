"""The hand-over between overlapping steps through the work folder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flows.publish import plan
from studypub.errors import Aborted
from studypub.models import Step
from studypub.spool import follow_files, follow_growing_file, mark_done, signal_abort, work_paths


def test_follow_files_sees_every_file_written_while_following(tmp_path: Path) -> None:
    paths = work_paths(tmp_path, "t").create()

    def producer() -> None:
        for i in range(20):
            tmp = paths.raw / f"{i:03d}.part"
            tmp.write_bytes(b"x")
            tmp.rename(paths.raw / f"{i:03d}.dcm")
            time.sleep(0.005)
        mark_done(paths, "raw", {"instances": 20})

    thread = threading.Thread(target=producer)
    thread.start()
    seen = [p.name for p in follow_files(paths.raw, paths, "raw")]
    thread.join()
    assert sorted(seen) == [f"{i:03d}.dcm" for i in range(20)]


def test_follow_files_stops_on_abort(tmp_path: Path) -> None:
    paths = work_paths(tmp_path, "t").create()
    threading.Timer(0.2, signal_abort, args=(paths, "boom")).start()
    with pytest.raises(Aborted):
        list(follow_files(paths.raw, paths, "raw"))


def test_follow_growing_file_reads_everything_appended(tmp_path: Path) -> None:
    paths = work_paths(tmp_path, "t").create()
    payload = bytes(range(256)) * 4096

    def producer() -> None:
        with paths.archive.open("wb") as fh:
            for i in range(0, len(payload), 10000):
                fh.write(payload[i : i + 10000])
                fh.flush()
                time.sleep(0.001)
        mark_done(paths, "archive", {})

    thread = threading.Thread(target=producer)
    thread.start()
    got = b"".join(follow_growing_file(paths.archive, paths, "archive", chunk_size=7000))
    thread.join()
    assert got == payload


def test_plan_resumes_after_the_last_available_output(tmp_path: Path) -> None:
    paths = work_paths(tmp_path, "t").create()
    assert plan({}, paths) == [Step.RETRIEVE, Step.ANONYMISE, Step.ZIP, Step.UPLOAD]
    mark_done(paths, "raw", {})
    assert plan({}, paths) == [Step.ANONYMISE, Step.ZIP, Step.UPLOAD]
    mark_done(paths, "clean", {})
    assert plan({}, paths) == [Step.ZIP, Step.UPLOAD]
    mark_done(paths, "archive", {})
    assert plan({}, paths) == [Step.ZIP, Step.UPLOAD]  # the marker alone is not the archive
    paths.archive.write_bytes(b"PK")
    assert plan({}, paths) == [Step.UPLOAD]
    assert plan({"upload": {"size_bytes": 2}}, paths) == []
