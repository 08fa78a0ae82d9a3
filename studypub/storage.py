"""Archive storage: an S3-compatible bucket (s3fs) or a local folder, behind one small interface.

Uploads are streamed and transactional: an upload that fails leaves no object (S3 multipart uploads are
aborted; local files are written under a temporary name and renamed). Object keys are random and chosen by
the caller, never derived from identifiers. The bucket stays private.

A process killed mid-upload aborts nothing: its S3 multipart upload stays pending (its parts are stored, and
billed, until someone aborts it) and a local upload leaves its ``.uploading`` file. So the next upload of a
key first aborts what an earlier attempt at that key left (``abort_pending``), and retention lists what is
pending or stored (``pending_uploads``, ``stored_objects``) to abort and delete what no publication needs.
Only plain S3 calls are used (ListMultipartUploads, AbortMultipartUpload, ListObjectsV2), so it works the same
on AWS, MinIO and other S3-compatible storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from studypub.errors import ConfigurationError, StorageUnavailable
from studypub.i18n import N_
from studypub.settings import Settings

UPLOADING_SUFFIX = ".uploading"  # a local upload in progress (or left by a killed process)


@dataclass(frozen=True)
class PendingUpload:
    """An upload that was started and neither finished nor aborted: an S3 multipart upload, or a local
    ``.uploading`` file (``upload_id`` None)."""

    key: str
    upload_id: str | None
    started: datetime  # timezone-aware UTC; a local file: when it was last written


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime  # timezone-aware UTC


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


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
        tmp = final.with_name(final.name + UPLOADING_SUFFIX)
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

    def delete(self, key: str) -> bool:
        """Delete an object (a missing one is fine). True for the call that deleted it (of two at once, one)."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def abort_pending(self, key: str) -> int:
        """Remove what an interrupted upload of ``key`` left (its ``.uploading`` file). Returns how many
        leftovers were removed (0 or 1). Call it before writing the key, never while another writer of the
        same key may be running."""
        tmp = self._path(key + UPLOADING_SUFFIX)
        try:
            tmp.unlink()
        except FileNotFoundError:
            return 0
        return 1

    def _files_under(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        folder = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root.resolve()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    yield base + entry.name, entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                continue

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """The ``.uploading`` files directly under the folder ``prefix`` (e.g. ``archives/``), by key."""
        return [
            PendingUpload(key=name[: -len(UPLOADING_SUFFIX)], upload_id=None, started=_utc(st.st_mtime))
            for name, st in self._files_under(prefix)
            if name.endswith(UPLOADING_SUFFIX)
        ]

    def abort_upload(self, upload: PendingUpload) -> bool:
        """Remove one leftover ``.uploading`` file. True for the call that removed it."""
        return self.abort_pending(upload.key) == 1

    def stored_objects(self, prefix: str) -> list[StoredObject]:
        """The finished objects directly under the folder ``prefix`` (not the uploads in progress)."""
        return [
            StoredObject(key=name, modified=_utc(st.st_mtime))
            for name, st in self._files_under(prefix)
            if not name.endswith(UPLOADING_SUFFIX)
        ]

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes of the object from ``start`` (fewer at its end)."""
        with self._path(key).open("rb") as fh:
            fh.seek(start)
            return fh.read(length)

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
            raise StorageUnavailable(N_("Storage is unreachable: %(error)s", error=type(exc).__name__)) from exc

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        try:
            fh = self.fs.open(  # type: ignore[attr-defined]
                self._path(key), "wb", block_size=self.part_size, autocommit=False
            )
        except Exception as exc:
            raise StorageUnavailable(N_("Storage is unreachable: %(error)s", error=type(exc).__name__)) from exc
        committed = False
        try:
            yield fh
            fh.close()
            fh.commit()
            committed = True
        except Exception as exc:
            if isinstance(exc, OSError | ConnectionError) or "botocore" in type(exc).__module__:
                raise StorageUnavailable(N_("Upload to storage failed: %(error)s", error=type(exc).__name__)) from exc
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

    def delete(self, key: str) -> bool:
        """Delete an object (a missing one is fine). S3 does not say whether it was there: always True."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key))  # type: ignore[attr-defined]
        return True

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        """One S3 call through s3fs (its credentials, endpoint and retries); errors become typed ones."""
        try:
            return dict(self.fs.call_s3(method, Bucket=self.bucket, **params))  # type: ignore[attr-defined]
        except FileNotFoundError:
            raise  # NoSuchUpload, NoSuchBucket: the caller decides
        except PermissionError as exc:  # retrying does not help: the access key's policy must change
            raise ConfigurationError(
                f"Storage refused {method}: the access key needs s3:ListBucket, s3:ListBucketMultipartUploads "
                "and s3:AbortMultipartUpload on the bucket"
            ) from exc
        except Exception as exc:
            raise StorageUnavailable(N_("Storage is unreachable: %(error)s", error=type(exc).__name__)) from exc

    def _uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Pending multipart uploads whose full key starts with the storage prefix + ``prefix``."""
        params: dict[str, Any] = {"Prefix": self.prefix + prefix}
        while True:
            try:
                page = self._call("list_multipart_uploads", **params)
            except FileNotFoundError:  # no bucket (yet): nothing pending
                return
            for upload in page.get("Uploads") or []:
                full = str(upload["Key"])
                if full.startswith(self.prefix):
                    yield PendingUpload(
                        key=full[len(self.prefix) :], upload_id=str(upload["UploadId"]), started=upload["Initiated"]
                    )
            if not page.get("IsTruncated"):
                return
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def abort_upload(self, upload: PendingUpload) -> bool:
        """Abort one pending multipart upload (its parts are deleted). True if this call aborted it; False
        if it was gone already (finished, or aborted by someone else)."""
        try:
            self._call("abort_multipart_upload", Key=self.prefix + upload.key, UploadId=upload.upload_id)
        except FileNotFoundError:
            return False
        return True

    def abort_pending(self, key: str) -> int:
        """Abort every pending multipart upload of exactly ``key``: what an interrupted earlier attempt left.
        Returns how many this call aborted. Call it before writing the key, never while another writer of
        the same key may be running (it would abort that writer's upload)."""
        return sum(self.abort_upload(u) for u in list(self._uploads(key)) if u.key == key)

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Every pending multipart upload under ``prefix`` (e.g. ``archives/``), keys without the storage
        prefix."""
        return list(self._uploads(prefix))

    def stored_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix`` (e.g. ``archives/``) with its LastModified, keys without the storage
        prefix. (An object made by a multipart upload appears when the upload is completed; AWS dates it from
        the upload's start.)"""
        found: list[StoredObject] = []
        params: dict[str, Any] = {"Prefix": self.prefix + prefix}
        while True:
            try:
                page = self._call("list_objects_v2", **params)
            except FileNotFoundError:  # no bucket (yet): nothing stored
                return found
            for obj in page.get("Contents") or []:
                full = str(obj["Key"])
                if full.startswith(self.prefix):
                    found.append(StoredObject(key=full[len(self.prefix) :], modified=obj["LastModified"]))
            if not page.get("IsTruncated"):
                return found
            params["ContinuationToken"] = page["NextContinuationToken"]

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes of the object from ``start`` (one ranged GET; fewer at its end)."""
        try:
            data = self.fs.cat_file(self._path(key), start=start, end=start + length)  # type: ignore[attr-defined]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageUnavailable(N_("Storage is unreachable: %(error)s", error=type(exc).__name__)) from exc
        return bytes(data)

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
            raise StorageUnavailable(N_("Cannot sign a storage URL: %(error)s", error=type(exc).__name__)) from exc


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
