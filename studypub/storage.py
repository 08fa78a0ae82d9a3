"""Archive storage: an S3-compatible bucket (s3fs) or a local folder, behind one small interface.

Uploads are streamed and transactional: an upload that fails leaves no object (S3 multipart uploads are
aborted; local files are written under a temporary name and renamed). Object keys are random and chosen by
the caller, never derived from identifiers. The bucket stays private.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

from studypub.errors import ConfigurationError, StorageUnavailable
from studypub.settings import Settings


@dataclass
class LocalStorage:
    url: str
    root: Path

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError("object key escapes the storage root")
        return path

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".uploading")
        try:
            with tmp.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        """The object's file (for serving it directly; HTTP Range is the server's business)."""
        return self._path(key)


@dataclass
class S3Storage:
    url: str
    bucket: str
    prefix: str
    fs: object  # s3fs.S3FileSystem
    part_size: int
    signer: object = None  # the file system that signs download URLs (public endpoint); None: fs
    region: str = "us-east-1"

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self.prefix}{key}"

    def ensure_ready(self) -> None:
        """Create the bucket when it is missing (private: no ACL is ever set)."""
        try:
            if not self.fs.exists(self.bucket):  # type: ignore[attr-defined]
                # Not s3fs's mkdir: it sends LocationConstraint=us-east-1, which S3 refuses for that region.
                params: dict[str, object] = {"Bucket": self.bucket}
                if self.region and self.region != "us-east-1":
                    params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
                self.fs.call_s3("create_bucket", **params)  # type: ignore[attr-defined]
                self.fs.invalidate_cache()  # type: ignore[attr-defined]
        except (FileExistsError, PermissionError):
            pass  # exists, or a policy that allows PUT/GET only: the upload itself will tell
        except (OSError, Exception) as exc:
            raise StorageUnavailable(f"Storage is unreachable: {type(exc).__name__}") from exc

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        try:
            fh = self.fs.open(  # type: ignore[attr-defined]
                self._path(key), "wb", block_size=self.part_size, autocommit=False
            )
        except Exception as exc:
            raise StorageUnavailable(f"Storage is unreachable: {type(exc).__name__}") from exc
        committed = False
        try:
            yield fh
            fh.close()
            fh.commit()
            committed = True
        except Exception as exc:
            if isinstance(exc, OSError | ConnectionError) or "botocore" in type(exc).__module__:
                raise StorageUnavailable(f"Upload to storage failed: {type(exc).__name__}") from exc
            raise
        finally:
            if not committed:
                with contextlib.suppress(Exception):  # best effort: the upload already failed
                    fh.discard()

    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache()  # type: ignore[attr-defined]
        return bool(self.fs.exists(self._path(key)))  # type: ignore[attr-defined]

    def size(self, key: str) -> int:
        self.fs.invalidate_cache()  # type: ignore[attr-defined]
        return int(self.fs.info(self._path(key))["size"])  # type: ignore[attr-defined]

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key))  # type: ignore[attr-defined]

    def presigned_url(self, key: str, expires: int, filename: str) -> str:
        """A short-lived GET URL (SigV4) for the object that downloads as ``filename`` and is not cached.
        Signing is local (no request to storage); the URL carries the endpoint's host, which the client must
        reach. SigV4 URLs live at most 7 days (``expires`` <= 604800)."""
        try:
            return str(
                (self.signer or self.fs).url(  # type: ignore[attr-defined]
                    self._path(key),
                    expires=expires,
                    ResponseContentDisposition=f'attachment; filename="{filename}"',
                    ResponseContentType="application/zip",
                    ResponseCacheControl="no-store",
                )
            )
        except Exception as exc:
            raise StorageUnavailable(f"Cannot sign a storage URL: {type(exc).__name__}") from exc


def open_storage(settings: Settings) -> LocalStorage | S3Storage:
    url = settings.storage_url_resolved
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(url=url, root=Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        s = settings.storage
        if not parsed.netloc:
            raise ConfigurationError("STUDYPUB_STORAGE__URL must name a bucket: s3://bucket/prefix")
        if s.access_key_id is None or s.secret_access_key is None:
            raise ConfigurationError(
                "S3 storage needs STUDYPUB_STORAGE__ACCESS_KEY_ID and STUDYPUB_STORAGE__SECRET_ACCESS_KEY"
            )
        prefix = parsed.path.strip("/")
        fs = _s3_filesystem(settings, s.endpoint_url)
        # Download URLs are signed locally (no request) for the address patients reach, when it differs.
        signer = _s3_filesystem(settings, s.public_endpoint_url) if s.public_endpoint_url else fs
        return S3Storage(
            url=url,
            bucket=parsed.netloc,
            prefix=f"{prefix}/" if prefix else "",
            fs=fs,
            part_size=s.upload_part_size,
            signer=signer,
            region=s.region,
        )
    raise ConfigurationError(f"Unsupported storage URL scheme {parsed.scheme!r}: use s3:// or file://")


def _s3_filesystem(settings: Settings, endpoint_url: str | None) -> object:
    import s3fs

    s = settings.storage
    assert s.access_key_id is not None and s.secret_access_key is not None
    client_kwargs: dict[str, str] = {"region_name": s.region}
    if endpoint_url:
        client_kwargs["endpoint_url"] = endpoint_url
    fs = s3fs.S3FileSystem(
        key=s.access_key_id.get_secret_value(),
        secret=s.secret_access_key.get_secret_value(),
        client_kwargs=client_kwargs,
        # SigV4 for presigned URLs too (botocore would presign with the deprecated SigV2).
        config_kwargs={
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 10,
            "signature_version": "s3v4",
        },
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    # s3fs retries connection errors 5 times on top of botocore; the upload step's own retries (with
    # backoff, visible in Prefect) are the ones that should wait for storage to come back.
    fs.retries = 2
    return fs


def disk_free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free
