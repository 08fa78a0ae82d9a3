"""A private Orthanc (the demo/test PACS): its own config, storage and free ports, started as a child.

    with OrthancServer(Path("/tmp/pacs"), modalities={"STUDYPUB": ("STUDYPUB", "127.0.0.1", 11113)}) as pacs:
        pacs.upload(study.paths)
        ... C-FIND / C-MOVE against 127.0.0.1:pacs.dicom_port, called AE pacs.aet ...

Orthanc 1.10 (Debian) listens on all interfaces and has no loopback-only option; ports are therefore
chosen free at start unless given. HTTP is limited to loopback by ``RemoteAccessAllowed: false``.
Modalities added through :meth:`OrthancServer.add_modality` live in memory (lost when Orthanc restarts);
the ones passed to the constructor are written into the config file.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from studypub.demo.net import LOOPBACK, ManagedProcess, free_port, port_open, wait_until

__all__ = ["ORTHANC_BINARY", "OrthancClient", "OrthancError", "OrthancServer", "orthanc_available"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed."""


def orthanc_available(binary: str = ORTHANC_BINARY) -> str | None:
    """``None`` when the Orthanc binary is here, else a reason (for ``pytest.skip``)."""
    if Path(binary).exists() or shutil.which(binary):
        return None
    return f"Orthanc not found at {binary} (Debian package 'orthanc')"


class OrthancClient:
    """Orthanc's REST API over keep-alive ``http.client`` connections (one per thread), e.g. for an
    Orthanc run elsewhere (``OrthancClient("http://orthanc:8042", ("user", "pass"))``)."""

    def __init__(self, url: str, credentials: tuple[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("an http://host:port URL is expected")
        self.host = parts.hostname
        self.http_port = parts.port or 80
        self.credentials = credentials
        self._local = threading.local()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        headers.update(extra or {})
        return headers

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.port != self.http_port:
            conn = http.client.HTTPConnection(self.host, self.http_port, timeout=120, blocksize=1 << 20)
            self._local.conn = conn
        return conn

    def _close_connections(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self, method: str, path: str, body: bytes | Any = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """One REST call; returns parsed JSON (or ``None`` for an empty body). Raises OrthancError."""
        hdrs = self._headers(headers)
        if body is not None and not isinstance(body, bytes | bytearray) and not hasattr(body, "read"):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self._local.conn = None
                if attempt == 2 or hasattr(body, "read"):
                    raise
        if resp.status >= 400:
            raise OrthancError(f"{method} {path}: HTTP {resp.status} {data[:300]!r}")
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def _system_ok(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=2)
        try:
            conn.request("GET", "/system", headers=self._headers())
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until GET /system answers 200 (e.g. an Orthanc container that is starting)."""
        wait_until(self._system_ok, timeout, f"Orthanc at {self.url}")

    def system(self) -> dict[str, Any]:
        return dict(self.request("GET", "/system"))

    def upload_file(self, path: Path) -> dict[str, Any]:
        """POST one Part-10 file to /instances (streamed from disk)."""
        size = Path(path).stat().st_size
        with Path(path).open("rb") as fh:
            return dict(
                self.request(
                    "POST",
                    "/instances",
                    body=fh,
                    headers={"Content-Type": "application/dicom", "Content-Length": str(size)},
                )
            )

    def upload(self, paths: Iterable[Path], workers: int = 4) -> list[str]:
        """Upload files (in parallel, one keep-alive connection per worker); returns Orthanc instance IDs."""
        files = [Path(p) for p in paths]
        if not files:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
            results = list(pool.map(self.upload_file, files))
        failed = [r for r in results if r.get("Status") not in ("Success", "AlreadyStored")]
        if failed:
            raise OrthancError(f"{len(failed)} instance(s) were not stored: {failed[0]}")
        return [str(r["ID"]) for r in results]

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DICOM peer at run time: PUT /modalities/{name}."""
        body = {"AET": aet, "Host": host, "Port": port}
        self.request("PUT", f"/modalities/{quote(name, safe='')}", body=body)

    def remove_modality(self, name: str) -> None:
        self.request("DELETE", f"/modalities/{quote(name, safe='')}")

    def list_modalities(self) -> list[str]:
        return list(self.request("GET", "/modalities"))

    def statistics(self) -> dict[str, Any]:
        return dict(self.request("GET", "/statistics"))

    def instance_count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def study_count(self) -> int:
        return int(self.statistics()["CountStudies"])

    def find_studies(self, **tags: str) -> list[str]:
        """Orthanc IDs of the studies matching DICOM tags, e.g. ``find_studies(AccessionNumber=...)``."""
        return list(self.request("POST", "/tools/find", body={"Level": "Study", "Query": tags}))

    def delete_all(self) -> None:
        """Delete every patient (and so every study/instance)."""
        for pid in self.request("GET", "/patients") or []:
            self.request("DELETE", f"/patients/{pid}")


class OrthancServer(OrthancClient):
    """Runs ``Orthanc config.json`` in ``work_dir`` (storage, index, config and log live there).

    ``modalities`` maps a symbolic name to ``(AET, host, port)`` (the DICOM peers Orthanc may send
    C-MOVE results to; a calling AE must be one of them for C-FIND/C-MOVE unless
    ``allow_any_scu=True``). ``http_auth=True`` enables HTTP basic auth with a generated user
    (see :attr:`credentials`); otherwise HTTP is open but limited to loopback.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        aet: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        allow_any_scu: bool = False,
        http_auth: bool = False,
        stable_age: int = 2,
        name: str = "StudyPublicator demo PACS",
        binary: str = ORTHANC_BINARY,
        startup_timeout: float = 60.0,
        verbose: bool = False,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < len(aet) <= 16:
            raise ValueError("an AE title has 1 to 16 characters")
        self.work_dir = Path(work_dir)
        self.aet = aet
        self.host = LOOPBACK
        self._fixed_dicom_port = dicom_port
        self._fixed_http_port = http_port
        self.dicom_port = dicom_port or 0
        self.http_port = http_port or 0
        self.modalities: dict[str, tuple[str, str, int]] = dict(modalities or {})
        self.allow_any_scu = allow_any_scu
        self.stable_age = stable_age
        self.name = name
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.extra_config = dict(extra_config or {})
        self.credentials: tuple[str, str] | None = ("studypub", secrets.token_urlsafe(18)) if http_auth else None
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self.startup_seconds: float | None = None
        self._proc: ManagedProcess | None = None
        self._local = threading.local()

    # ----------------------------------------------------------------------------- life cycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    def config(self) -> dict[str, Any]:
        """The configuration written to :attr:`config_path` (ports must be set)."""
        storage = self.work_dir / "storage"
        cfg: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpCompressionEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.credentials is not None,
            "RegisteredUsers": dict([self.credentials]) if self.credentials else {},
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": self.allow_any_scu,
            "DicomAlwaysAllowMove": self.allow_any_scu,
            "DicomAlwaysAllowGet": self.allow_any_scu,
            "DicomScuTimeout": 30,
            "DefaultEncoding": "Utf8",
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "OverwriteInstances": True,
            "DeidentifyLogs": True,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> OrthancServer:
        """Write the config, start Orthanc and wait until HTTP answers and the DICOM port accepts."""
        if self.running():
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if (self._fixed_dicom_port and self._fixed_http_port) else 3
        for attempt in range(1, attempts + 1):
            self.dicom_port = self._fixed_dicom_port or free_port()
            self.http_port = self._fixed_http_port or free_port()
            while self.http_port == self.dicom_port:
                self.http_port = free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            argv = [self.binary, *(["--verbose"] if self.verbose else []), "--no-jobs", str(self.config_path)]
            self._proc = ManagedProcess(argv, self.log_path, cwd=self.work_dir)
            started = time.monotonic()
            self._proc.start()
            try:
                wait_until(
                    lambda: self._system_ok() and port_open(self.dicom_port),
                    self.startup_timeout,
                    "Orthanc",
                    alive=self._proc.running,
                )
            except RuntimeError as exc:  # exited early: most likely lost a race for a port
                tail = self._proc.log_tail()
                self._proc.stop()
                if attempt < attempts:
                    continue
                raise OrthancError(f"{exc}; log {self.log_path}:\n{tail}") from exc
            except TimeoutError as exc:
                tail = self._proc.log_tail()
                self._proc.stop()
                raise OrthancError(f"{exc}; log {self.log_path}:\n{tail}") from exc
            self.startup_seconds = time.monotonic() - started
            return self
        raise OrthancError("Orthanc did not start")  # pragma: no cover

    def stop(self) -> None:
        """SIGTERM Orthanc, wait, then SIGKILL. Idempotent."""
        self._close_connections()
        if self._proc is not None:
            self._proc.stop(timeout=15)

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        super().add_modality(name, aet, host, port)
        self.modalities[name] = (aet, host, port)

    def remove_modality(self, name: str) -> None:
        super().remove_modality(name)
        self.modalities.pop(name, None)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
