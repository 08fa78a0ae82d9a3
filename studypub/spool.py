"""A publication's work folder and the hand-over between its steps.

Steps run as separate Prefect tasks that may overlap: each writes complete files atomically into its output
folder and, when finished, a ``<step>.done`` marker (JSON). The next step follows its input as it grows and
stops when the marker is there and nothing new is left. If any step fails for good, the flow writes an
``abort`` marker and the followers stop. Names carry no identifiers (task ids and keyed hashes only).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studypub.errors import Aborted
from studypub.i18n import N_

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class WorkPaths:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def clean(self) -> Path:
        return self.root / "clean"

    @property
    def archive(self) -> Path:
        return self.root / "archive.zip"

    def marker(self, name: str) -> Path:
        return self.root / f"{name}.done"

    @property
    def abort_marker(self) -> Path:
        return self.root / "abort"

    def create(self) -> WorkPaths:
        for p in (self.root, self.raw, self.clean):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def remove_identifiable(self) -> None:
        """Drop the raw instances as received (they carry PHI). Anonymised outputs stay for a resume; a
        resume that needs the raw instances retrieves them again from the PACS."""
        shutil.rmtree(self.raw, ignore_errors=True)
        self.marker("raw").unlink(missing_ok=True)


def work_paths(work_dir: Path, task_id: str) -> WorkPaths:
    return WorkPaths(work_dir / "tasks" / task_id)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def mark_done(paths: WorkPaths, name: str, info: dict[str, Any]) -> None:
    write_json_atomic(paths.marker(name), info)


def read_done(paths: WorkPaths, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(paths.marker(name).read_text()))
    except (FileNotFoundError, ValueError):
        return None


def clear_done(paths: WorkPaths, *names: str) -> None:
    for name in names:
        paths.marker(name).unlink(missing_ok=True)


def signal_abort(paths: WorkPaths, reason: str) -> None:
    if paths.root.exists():
        paths.abort_marker.write_text(reason)


def clear_abort(paths: WorkPaths) -> None:
    paths.abort_marker.unlink(missing_ok=True)


def check_abort(paths: WorkPaths) -> None:
    if paths.abort_marker.exists():
        raise Aborted(N_("stopped because another step of this publication failed"))


def follow_files(
    folder: Path,
    paths: WorkPaths,
    upstream: str,
    *,
    suffix: str = ".dcm",
    on_idle: Callable[[], None] | None = None,
) -> Iterator[Path]:
    """Yield each complete file in ``folder`` once, as it appears, until ``upstream`` is done and no new file
    is left. Raises Aborted when the publication is aborted."""
    seen: set[str] = set()
    while True:
        check_abort(paths)
        finished = paths.marker(upstream).exists()  # read before listing: no file can be missed
        fresh = sorted(e.name for e in os.scandir(folder) if e.name.endswith(suffix) and e.name not in seen)
        for name in fresh:
            seen.add(name)
            yield folder / name
        if not fresh:
            if finished:
                return
            if on_idle:
                on_idle()
            time.sleep(POLL_SECONDS)


def follow_growing_file(
    path: Path, paths: WorkPaths, upstream: str, *, chunk_size: int = 1024 * 1024
) -> Iterator[bytes]:
    """Yield the bytes of ``path`` as it is written (append-only), until ``upstream`` is done and all bytes
    were read. Raises Aborted when the publication is aborted."""
    while not path.exists():
        check_abort(paths)
        if paths.marker(upstream).exists() and not path.exists():
            raise FileNotFoundError("the archive is missing although the zip step is done")
        time.sleep(POLL_SECONDS)
    with path.open("rb") as fh:
        while True:
            check_abort(paths)
            finished = paths.marker(upstream).exists()
            data = fh.read(chunk_size)
            if data:
                yield data
                continue
            if finished:
                return
            time.sleep(POLL_SECONDS)
