"""moto's S3 server over real HTTP: s3fs put/get, private buckets, and stop/start on the same port."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from tests.support.s3 import S3Server


def test_put_get_through_s3fs(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    payload = bytes(range(256)) * 4096  # 1 MiB
    with fs.open(f"{s3_bucket}/studies/a.zip", "wb", block_size=5 * 2**20) as fh:
        fh.write(payload)
    assert fs.cat(f"{s3_bucket}/studies/a.zip") == payload
    assert fs.info(f"{s3_bucket}/studies/a.zip")["size"] == len(payload)
    url = fs.url(f"{s3_bucket}/studies/a.zip", expires=600)
    assert url.startswith(s3_server.endpoint_url) and "Signature" in url
    acl = s3_server.client().get_bucket_acl(Bucket=s3_bucket)
    assert all(g["Grantee"].get("URI", "").rsplit("/", 1)[-1] != "AllUsers" for g in acl["Grants"])


def test_stop_and_start_on_same_port(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem(config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}})
    fs.pipe(f"{s3_bucket}/x.txt", b"before")
    port = s3_server.port
    s3_server.stop()
    assert not s3_server.running()
    with pytest.raises((OSError, EndpointConnectionError)):
        fs.cat(f"{s3_bucket}/x.txt")
    s3_server.start()  # same port; bucket recreated empty (moto state is in memory)
    assert s3_server.port == port
    fresh = s3_server.filesystem()
    assert fresh.ls(s3_bucket) == []
    fresh.pipe(f"{s3_bucket}/x.txt", b"after")
    assert fresh.cat(f"{s3_bucket}/x.txt") == b"after"
