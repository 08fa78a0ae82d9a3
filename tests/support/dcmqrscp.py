"""dcmtk's ``dcmqrscp`` as a second, independent Query/Retrieve SCP for tests.

Its configuration (written to ``work_dir/dcmqrscp.cfg``) has one storage area (AE title ``aet``), a
HostTable with the move destinations (``peers``: symbolic name -> (AET, host, port)) and an AETable entry
open to any peer. Studies are loaded by copying files into the storage area and registering them with
``dcmqridx`` (no network, any transfer syntax), or over the network with dcmtk's ``storescu``.

Limits of dcmqrscp to know when writing a test (dcmtk 3.6.7):
- On C-MOVE it sends each SOP class over the first presentation context accepted for it, whatever the
  file's transfer syntax, and converts only between uncompressed syntaxes (and from deflated). So by
  default (``propose="-x="``) only uncompressed/deflated files can be moved; ``propose`` takes one of
  dcmqrscp's ``-x?`` options (e.g. ``"-xs"`` JPEG lossless, ``"-xr"`` RLE) to serve a study whose
  instances are all in that syntax.
- Incoming C-STORE accepts uncompressed syntaxes only (its default ``+x=``); use :meth:`load` for others.
- Quota per storage area: 500 studies of at most 1 GiB (dcmqrscp's maximum).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from tests.support.net import LOOPBACK, ManagedProcess, free_port, port_open, wait_until

__all__ = ["DcmQrScp", "dcmqrscp_available"]

_TOOLS = ("dcmqrscp", "dcmqridx", "storescu")


def dcmqrscp_available() -> str | None:
    """``None`` when dcmtk's dcmqrscp, dcmqridx and storescu are on PATH, else a reason."""
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    return f"dcmtk tools missing: {', '.join(missing)} (Debian package 'dcmtk')" if missing else None


class DcmQrScp:
    def __init__(
        self,
        work_dir: Path,
        peers: Mapping[str, tuple[str, str, int]],
        *,
        aet: str = "DCMQRSCP",
        port: int | None = None,
        max_pdu: int = 65536,
        propose: str = "-x=",
        startup_timeout: float = 20.0,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.peers = dict(peers)
        self.aet = aet
        self.host = LOOPBACK
        self._fixed_port = port
        self.port = port or 0
        self.max_pdu = max_pdu
        self.propose = propose
        self.startup_timeout = startup_timeout
        self.storage_dir = self.work_dir / "storage" / aet
        self.config_path = self.work_dir / "dcmqrscp.cfg"
        self.log_path = self.work_dir / "dcmqrscp.log"
        self.startup_seconds: float | None = None
        self._proc: ManagedProcess | None = None

    def config_text(self) -> str:
        hosts = "\n".join(f"{name:<16} = ({aet}, {host}, {port})" for name, (aet, host, port) in self.peers.items())
        return (
            f"NetworkTCPPort  = {self.port}\n"
            f"MaxPDUSize      = {self.max_pdu}\n"
            "MaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            "AETable BEGIN\n"
            f"{self.aet} {self.storage_dir} RW (500, 1024mb) ANY\n"
            "AETable END\n"
        )

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> DcmQrScp:
        if self.running():
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port or free_port()
            self.config_path.write_text(self.config_text())
            # Fork per association (the default), as a real archive would; host lookups off (speed).
            argv = ["dcmqrscp", "-c", str(self.config_path), "--disable-host-lookup", self.propose]
            argv.append(str(self.port))
            self._proc = ManagedProcess(argv, self.log_path, cwd=self.work_dir)
            started = time.monotonic()
            self._proc.start()
            try:
                wait_until(lambda: port_open(self.port), self.startup_timeout, "dcmqrscp", alive=self._proc.running)
            except RuntimeError as exc:
                tail = self._proc.log_tail()
                self._proc.stop()
                if attempt < attempts:
                    continue
                raise RuntimeError(f"{exc}; log {self.log_path}:\n{tail}") from exc
            except TimeoutError:
                self._proc.stop()
                raise
            self.startup_seconds = time.monotonic() - started
            return self
        raise RuntimeError("dcmqrscp did not start")  # pragma: no cover

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=10)

    def __enter__(self) -> DcmQrScp:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def load(self, paths: Iterable[Path]) -> int:
        """Copy files into the storage area and register them in its index (``dcmqridx``)."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        copies: list[str] = []
        for p in paths:
            src = Path(p)
            dst = self.storage_dir / f"{src.parent.parent.name}_{src.parent.name}_{src.name}"
            shutil.copyfile(src, dst)
            copies.append(str(dst))
        for i in range(0, len(copies), 200):
            subprocess.run(["dcmqridx", str(self.storage_dir), *copies[i : i + 200]], check=True, capture_output=True)
        return len(copies)

    def store(self, paths: Iterable[Path], calling_aet: str = "STORESCU") -> None:
        """C-STORE files over the network with dcmtk's ``storescu`` (its default presentation contexts)."""
        files = [str(p) for p in paths]
        argv = ["storescu", "-aet", calling_aet, "-aec", self.aet, "--required", self.host, str(self.port)]
        proc = subprocess.run([*argv, *files], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-800:]}")

    def instance_count(self) -> int:
        """Number of instances in the index (``dcmqridx -p``)."""
        out = subprocess.run(
            ["dcmqridx", "-p", str(self.storage_dir)], capture_output=True, text=True, check=False
        ).stdout
        return sum(1 for line in out.splitlines() if "filename" in line.lower())
