"""``studypub worker`` as the tests run it: a subprocess with the test's environment whose log is kept in
tests/artifacts/ for diagnosis, and deployments looked up without raising while they are not registered."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STUDYPUB = Path(sys.executable).with_name("studypub")
ARTIFACTS = Path(__file__).parents[1] / "artifacts"


@contextlib.contextmanager
def running_worker(env: dict[str, str], log_path: Path, artifact_name: str) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("w") as log_file:
        worker = subprocess.Popen([str(STUDYPUB), "worker"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / artifact_name).write_text(log_path.read_text(errors="replace"))


def find_deployment(client: Any, name: str) -> Any:
    """The deployment named ``flow/deployment``, or None while it is not registered."""
    try:
        return client.read_deployment_by_name(name)
    except Exception:
        return None
