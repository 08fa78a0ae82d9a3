"""Serving one instance of an archive to the viewer: short-lived signed URLs, and the entry's bytes read
back from storage.

An instance URL (``/s/<key>/view/i/<n>?e=<expiry>&s=<signature>``) is signed by the service (HMAC of the
service secret, the archive's object key, the position and the expiry) and lives minutes; the route also
checks the link on every request, so a revoked link stops serving at once. The object key is part of what is
signed, so a URL made for an archive that was replaced does not open the new one. Expiries are rounded up
to a bucket, so URLs handed out within a few minutes are the same and the browser's cache serves repeats.

Reading: the local header plus the compressed data (plus a little for the local extra field), then inflate.
The archive's ZIP is written with data descriptors, so the sizes come from the index. From S3, ranges are read
in aligned blocks of a few MiB kept in a small in-process cache (:class:`BlockCache`): a viewer asks for the
images of a series in order, which lie one after the other in the archive, so one GET serves a dozen images
(fewer requests to pay for, and far less per-request overhead than one GET per image).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import math
import struct
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

from studypub.errors import StorageUnavailable
from studypub.i18n import N_
from studypub.viewer.index import Entry

LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, lengths
LOCAL_SIGNATURE = b"PK\x03\x04"
EXTRA_ALLOWANCE = 64  # a local extra field longer than this costs a second read (zip64: 20 bytes)
EXPIRY_BUCKET_SECONDS = 300


def _mac(secret: bytes, object_key: str, position: int, expires: int) -> str:
    message = f"studypub-viewer:{object_key}:{position}:{expires}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def expiry(lifetime: int, *, now: float | None = None) -> int:
    """When URLs made now expire: at least ``lifetime`` seconds ahead, rounded up to a bucket."""
    now = time.time() if now is None else now
    return int(math.ceil((now + lifetime) / EXPIRY_BUCKET_SECONDS) * EXPIRY_BUCKET_SECONDS)


def sign(secret: bytes, object_key: str, position: int, expires: int) -> str:
    return _mac(secret, object_key, position, expires)


def verify(
    secret: bytes, object_key: str, position: int, expires: str, signature: str, *, now: float | None = None
) -> bool:
    """True when the signature is ours for this archive and position and it has not expired."""
    try:
        when = int(expires)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if when < now or len(signature) > 64:
        return False
    return hmac.compare_digest(_mac(secret, object_key, position, when), signature)


class BlockCache:
    """Reads ranges of stored objects through aligned blocks, the most recent ``capacity`` kept in memory.
    Objects are immutable under their keys (a republication writes a new key), so a block never goes stale.
    Concurrent misses on one block make one read."""

    def __init__(self, storage: Any, block_size: int = 4 << 20, capacity: int = 16) -> None:
        self.storage = storage
        self.block_size = block_size
        self.capacity = capacity
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def _block(self, key: str, number: int) -> bytes:
        ident = (key, number)
        with self._lock:
            if ident in self._blocks:
                self._blocks.move_to_end(ident)
                return self._blocks[ident]
            loading = self._loading.setdefault(ident, threading.Lock())
        with loading:
            with self._lock:
                if ident in self._blocks:
                    return self._blocks[ident]
            data = self.storage.read_range(key, number * self.block_size, self.block_size)
            with self._lock:
                self._blocks[ident] = data
                while len(self._blocks) > self.capacity:
                    self._blocks.popitem(last=False)
                self._loading.pop(ident, None)
            return data

    def read_range(self, key: str, start: int, length: int) -> bytes:
        first, last = start // self.block_size, (start + length - 1) // self.block_size
        parts = []
        for number in range(first, last + 1):
            block = self._block(key, number)
            lo = max(start - number * self.block_size, 0)
            hi = min(start + length - number * self.block_size, len(block))
            parts.append(block[lo:hi])
            if len(block) < self.block_size:  # the object's end
                break
        return b"".join(parts)


class EntryUnreadable(Exception):
    """The bytes at an index's position are not the ZIP entry it names (a broken index or object)."""


def read_entry(storage: Any, object_key: str, entry: Entry) -> bytes:
    """The instance's bytes (a DICOM Part 10 file) from the archive at ``object_key``."""
    data = read_stored(storage, object_key, entry)
    if entry.method == 0:
        plain = data
    elif entry.method == 8:
        plain = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    else:
        raise EntryUnreadable(f"compression method {entry.method}")
    if len(plain) != entry.size:
        raise EntryUnreadable("entry size differs from the index")
    return plain


def read_stored(storage: Any, object_key: str, entry: Entry) -> bytes:
    """The entry's data as stored in the ZIP (a raw deflate stream for a deflated entry). A browser that
    takes ``Content-Encoding: deflate`` can be sent it as it is: no inflating here, and ~half the bytes."""
    start = entry.offset
    length = LOCAL_HEADER.size + entry.name_length + EXTRA_ALLOWANCE + entry.compressed
    try:
        blob = storage.read_range(object_key, start, length)
        header = LOCAL_HEADER.unpack_from(blob)
        if header[0] != LOCAL_SIGNATURE:
            raise EntryUnreadable("no local header at the indexed offset")
        name_length, extra_length = header[9], header[10]
        data_start = LOCAL_HEADER.size + name_length + extra_length
        data = blob[data_start : data_start + entry.compressed]
        if len(data) < entry.compressed:  # a long extra field: read the rest
            more = storage.read_range(object_key, start + len(blob), entry.compressed - len(data))
            data += more
    except (OSError, ConnectionError) as exc:
        raise StorageUnavailable(N_("Storage is unreachable: %(error)s", error=type(exc).__name__)) from exc
    except struct.error as exc:
        raise EntryUnreadable("short read at the indexed offset") from exc
    if len(data) != entry.compressed:
        raise EntryUnreadable("entry shorter than the index says")
    return data


DEFLATED = "1.2.840.10008.1.2.1.99"


def for_browser(body: bytes) -> bytes:
    """The instance as the browser's decoder takes it. A deflated dataset is served inflated (explicit VR
    little endian, the same attributes and pixels): cornerstone's loader inflates the dataset, then tries to
    inflate the pixel data a second time under the same transfer syntax and fails. Other files as stored."""
    if DEFLATED.encode() not in body[:512]:
        return body
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    ds = dcmread(io.BytesIO(body))
    if str(ds.file_meta.TransferSyntaxUID) != DEFLATED:
        return body
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
