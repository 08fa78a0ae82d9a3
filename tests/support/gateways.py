"""Local HTTP servers that behave like the SMS gateways (SMS.ru, Twilio) and a FHIR server, for the tests: they
answer as the real services document, record what they were sent, and can be switched to answer errors."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.support.net import LOOPBACK


class _Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"  # ok | error | down (HTTP 503)
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                owner.handle(self, "POST", self._body())

            def do_PUT(self) -> None:
                owner.handle(self, "PUT", self._body())

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def record(self, **request: Any) -> None:
        with self.lock:
            self.requests.append(request)

    def reply(
        self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeSmsRu(_Server):
    """``POST /sms/send`` with api_id, to, msg, json=1: OK with an sms_id per number; ``error`` mode: the number
    refused (code 207); ``down``: HTTP 503."""

    def handle(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.record(path=handler.path, form=form)
        if self.mode == "down":
            return self.reply(handler, 503, {"status": "ERROR"})
        to = form.get("to", "")
        if self.mode == "error":
            one = {"status": "ERROR", "status_code": 207, "status_text": "cannot send to this number"}
        else:
            one = {
                "status": "OK",
                "status_code": 100,
                "sms_id": f"{secrets.randbelow(10**6):06d}-{secrets.randbelow(10**6)}",
            }
        return self.reply(handler, 200, {"status": "OK", "status_code": 100, "sms": {to: one}, "balance": 100.5})


class FakeTwilio(_Server):
    """``POST /2010-04-01/Accounts/<sid>/Messages.json`` (basic auth): 201 with a message sid; ``error``: 400
    with Twilio's error code 21211 (invalid 'To'); ``down``: 503."""

    def handle(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.record(path=handler.path, form=form, auth=handler.headers.get("Authorization"))
        if self.mode == "down":
            return self.reply(handler, 503, {"code": 20500, "message": "Service unavailable"})
        if self.mode == "error":
            return self.reply(handler, 400, {"code": 21211, "message": "The 'To' number is not valid.", "status": 400})
        sid = "SM" + secrets.token_hex(16)
        return self.reply(handler, 201, {"sid": sid, "status": "queued", "to": form.get("To")})


class FakeFhir(_Server):
    """``PUT /ImagingStudy/<id>``: 201 the first time, 200 after (an update), with an ETag."""

    def handle(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        self.record(
            method=method,
            path=handler.path,
            body=json.loads(body or b"{}"),
            auth=handler.headers.get("Authorization"),
            content_type=handler.headers.get("Content-Type"),
        )
        if self.mode == "down":
            return self.reply(handler, 503, {"resourceType": "OperationOutcome"})
        seen = sum(1 for r in self.requests if r["path"] == handler.path)
        return self.reply(handler, 201 if seen == 1 else 200, json.loads(body), {"ETag": f'W/"{seen}"'})
