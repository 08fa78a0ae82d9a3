"""Container health checks: ``python -m deployments.healthcheck api|worker|prefect`` exits 0 when healthy.

Standard library only, so a check costs a few milliseconds: it runs every 15 s in every container.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import urllib.request


def _http_ok(url: str, auth: str | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 - a fixed http URL on this host
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def check(kind: str) -> bool:
    if kind == "api":
        return _http_ok(f"http://127.0.0.1:{os.environ.get('STUDYPUB_API__PORT', '8000')}/health")
    if kind == "worker":  # the Storage SCP listens (the process serving the deployments is the same one)
        return _port_open(int(os.environ.get("STUDYPUB_PACS__SCP_PORT", "11113")))
    if kind == "prefect":
        return _http_ok("http://127.0.0.1:4200/api/health", os.environ.get("PREFECT_API_AUTH_STRING") or None)
    raise SystemExit(f"unknown check {kind!r}: api, worker or prefect")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m deployments.healthcheck api|worker|prefect")
    return 0 if check(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
