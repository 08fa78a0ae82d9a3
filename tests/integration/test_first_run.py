"""The README's run command, the first time, as a clinic's IT person would: a clean clone (this checkout's
HEAD) with its own virtualenv and a fresh home folder (so the default work folder is new; only pip's download
cache is shared with this machine), ``make run``, the curl it prints, the patient's link, the archive, then
Ctrl-C; then the same again (the second run finds its virtualenv, work folder and demo studies there).
Nothing of it may be left running or listening afterwards.

Debian's Orthanc or another run may hold the default ports here: the run then takes free ones and prints
them, which this test follows (it never stops anything it did not start). The test itself holds the demo
PACS's default DICOM port 4242, as Debian's Orthanc service would, so that path is always taken. The times
to "running" and to the first completed publication are written to tests/artifacts/first-run.json (the
README quotes them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import LOOPBACK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
RUNNING = "StudyPublicator is running."
READY_TIMEOUT = 1500  # a virtualenv from pip's cache and five generated studies, on a shared 2-core machine


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _pip_cache() -> str | None:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "cache", "dir"], capture_output=True, text=True
    )
    return out.stdout.strip() or None if out.returncode == 0 else None


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``, with its start time (so a reused PID is not mistaken for it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                found[child] = started
                todo.append(child)
    return found


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


class Output:
    """The command's merged stdout/stderr, kept in memory and in a log file."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._log = log.open("w")
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("\0EOF")
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> int:
        """Index of the first line containing ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for i, line in enumerate(self.lines):
                    if text in line:
                        return i
                    if line == "\0EOF":
                        raise AssertionError(f"the command ended before {text!r}:\n" + "\n".join(self.lines[-60:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} after {timeout:.0f} s:\n" + "\n".join(self.lines[-60:]))
                self._changed.wait(min(left, 5))

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.lines[-n:])


def _http(url: str, key: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.status, resp.read()


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.fail("git and make are part of the README's fresh machine")
    target = tmp_path / "studypublicator"
    head = _git("rev-parse", "HEAD")
    _git("clone", "--quiet", "--no-checkout", str(ROOT), str(target))
    _git("checkout", "--quiet", "--detach", head, cwd=target)
    return target


def make_run(clone: Path, env: dict[str, str], tmp_path: Path, name: str) -> dict[str, Any]:
    """``make run``, the printed curl until the study is published, the link and its archive, then Ctrl-C;
    checks that nothing is left. Returns the times and the publication's answer."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C below goes to it as a terminal's would
    )
    out = Output(proc, ARTIFACTS / f"{name}.log")
    seen: dict[int, str] = {}
    try:
        first = out.wait_for(RUNNING, READY_TIMEOUT)
        to_running = time.monotonic() - started
        last = out.wait_for("Ctrl-C stops everything.", 30)
        block = "\n".join(out.lines[first : last + 1])
        seen.update(_descendants(proc.pid))
        assert "port 4242 (demo PACS, DICOM) is taken: using " in block, block
        assert "ORTHANC@127.0.0.1:4242 " not in block

        # The ports it printed: the API's and the Prefect UI's URLs, the PACS, its web page, the Storage SCP.
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", block)}
        ports |= {int(p) for p in re.findall(r"on port (\d+)", block)}
        assert len(ports) >= 5, block
        assert all(_listening(p) for p in ports), f"printed but not listening: {ports}\n{block}"

        # The curl exactly as printed (two lines joined by the shell's backslash-newline).
        at = block.index("  curl -s -X POST")
        curl = "\n".join(block[at:].splitlines()[:2])
        key = re.search(r"X-API-Key: (sp_[^']+)'", curl)
        assert key, curl
        answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True).stdout)
        assert answer["status"] in ("QUEUED", "RUNNING", "COMPLETED"), answer
        status: dict[str, Any] = answer
        deadline = time.monotonic() + 600
        while status["status"] != "COMPLETED":
            assert status["status"] != "FAILED", status
            assert time.monotonic() < deadline, f"not published after 600 s: {status}\n{out.tail()}"
            time.sleep(1)
            status = json.loads(_http(answer["status_url"], key.group(1))[1])
        to_published = time.monotonic() - started
        seen.update(_descendants(proc.pid))

        # The patient's link, then the archive it offers.
        code, page = _http(answer["link"])
        assert code == 200 and b"/download" in page
        code, body = _http(answer["link"] + "/download", timeout=120)
        archive = tmp_path / f"{name}.zip"
        archive.write_bytes(body)
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
        images = [n for n in names if n not in ("DICOMDIR", "README.txt")]
        assert "DICOMDIR" in names and "README.txt" in names and len(images) == status["instances"] > 0, names
    except BaseException:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(120)
        raise

    # Ctrl-C: SIGINT to the process group, as a terminal sends it.
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"make run did not stop within 180 s of Ctrl-C:\n{out.tail()}") from None
    time.sleep(1)
    left = {pid for pid, start in seen.items() if _start_time(pid) == start}
    assert not left, f"child processes left after Ctrl-C: {left}\n{out.tail()}"
    still = {p for p in ports if _listening(p)}
    assert not still, f"still listening after Ctrl-C: {still}"
    return {
        "to_running_s": round(to_running, 1),
        "to_first_publication_s": round(to_published, 1),
        "answer": answer,
        "status": status,
    }


def test_make_run_from_a_clean_clone_publishes_the_printed_curl_and_stops_clean(clone: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "USER": os.environ.get("USER", "root"),
    }
    if cache := _pip_cache():
        env["PIP_CACHE_DIR"] = cache
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    holder = socket.socket()  # in the way, as Debian's own Orthanc service would be
    try:
        holder.bind(("0.0.0.0", 4242))
        holder.listen()
    except OSError:  # already taken by something else: the same situation
        holder.close()
    try:
        first = make_run(clone, env, tmp_path, "first-run")
        # The second time: the virtualenv, the work folder, the demo PACS's studies and the database are there.
        second = make_run(clone, env, tmp_path, "second-run")
    finally:
        holder.close()
    assert first["answer"]["status"] in ("QUEUED", "RUNNING")  # a new publication...
    assert second["answer"]["status"] == "COMPLETED"  # ...already published: the same task and link
    assert second["answer"]["link"] == first["answer"]["link"]
    assert second["answer"]["task_id"] == first["answer"]["task_id"]

    timings = {
        "first": {k: first[k] for k in ("to_running_s", "to_first_publication_s")},
        "second": {k: second[k] for k in ("to_running_s", "to_first_publication_s")},
    }
    (ARTIFACTS / "first-run.json").write_text(json.dumps(timings) + "\n")
    print(f"make run from a clean clone: {timings}")
