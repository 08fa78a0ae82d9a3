"""moto's S3 server as a real HTTP server in a subprocess, for tests that talk S3 over the network.

moto keeps its state in memory: :meth:`S3Server.stop` loses every bucket and object. :meth:`S3Server.start`
after a stop (same port) recreates, empty, the buckets made through :meth:`S3Server.create_bucket` unless
``recreate_buckets=False``; objects are gone.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import LOOPBACK, ManagedProcess, free_port, wait_until

__all__ = ["S3Server"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


class S3Server:
    access_key = "studypub-test-key"
    secret_key = "studypub-test-secret"
    region = "us-east-1"

    def __init__(self, work_dir: Path, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.work_dir = Path(work_dir)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_path = self.work_dir / "moto.log"
        self.startup_seconds: float | None = None
        self.buckets: set[str] = set()
        self._proc: ManagedProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, recreate_buckets: bool = True) -> S3Server:
        """Start (again) on the same port and wait until it answers HTTP."""
        if self.running():
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self._proc = ManagedProcess(argv, self.log_path, cwd=self.work_dir)
        started = time.monotonic()
        self._proc.start()
        try:
            wait_until(
                lambda: _answers(self.endpoint_url + "/"),
                self.startup_timeout,
                "moto server",
                alive=self._proc.running,
            )
        except (RuntimeError, TimeoutError) as exc:
            tail = self._proc.log_tail()
            self._proc.stop()
            raise RuntimeError(f"{exc}; log {self.log_path}:\n{tail}") from exc
        self.startup_seconds = time.monotonic() - started
        if recreate_buckets:
            client = self.client()
            for name in sorted(self.buckets):
                client.create_bucket(Bucket=name)
        return self

    def stop(self) -> None:
        """Stop the server (all its data is lost). Idempotent."""
        if self._proc is not None:
            self._proc.stop(timeout=10)

    def restart(self, recreate_buckets: bool = True) -> S3Server:
        self.stop()
        return self.start(recreate_buckets=recreate_buckets)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem(**options)``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
            "skip_instance_cache": True,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", **self.client_kwargs())

    def filesystem(self, **overrides: Any) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**{**self.storage_options(), **overrides})

    def create_bucket(self, name: str | None = None) -> str:
        """Create a private bucket (a fresh unique name unless given); remembered for restarts."""
        name = name or f"studypub-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.add(name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (ignores a server that is down)."""
        self.buckets.discard(name)
        if not self.running():
            return
        client = self.client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)
