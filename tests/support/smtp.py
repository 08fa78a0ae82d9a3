"""A real SMTP server for the tests (aiosmtpd, on a free loopback port) that keeps what it receives; it can be
stopped and started again on the same port (a mail server down, then up)."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import warnings
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.net import LOOPBACK, free_port


class _Keep:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.box.lock:
            self.box.received.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"


class SmtpServer:
    """``security``: None (plain), "starttls" (required before anything else) or "tls" (TLS from the start),
    with ``cert_dir`` holding ``tls.crt``/``tls.key``; ``credentials``: (user, password) required to send."""

    def __init__(
        self,
        port: int | None = None,
        *,
        security: str | None = None,
        cert_dir: Path | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.received: list[tuple[list[str], EmailMessage]] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        self.lock = threading.Lock()
        self.security = security
        self.cert_dir = cert_dir
        self.credentials = credentials
        self._controller: Controller | None = None

    def _context(self) -> ssl.SSLContext:
        assert self.cert_dir is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_dir / "tls.crt", self.cert_dir / "tls.key")
        return context

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        user = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        ok = isinstance(auth_data, LoginPassword) and (user, auth_data.password.decode()) == self.credentials
        with self.lock:
            self.logins.append((user, ok))
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.security == "starttls":
            kwargs.update(tls_context=self._context(), require_starttls=True)
        elif self.security == "tls":
            kwargs.update(ssl_context=self._context(), server_hostname=LOOPBACK)
        if self.credentials is not None:
            # aiosmtpd counts only STARTTLS as TLS: with TLS from the start the connection is encrypted anyway.
            kwargs.update(
                authenticator=self._authenticate, auth_required=True, auth_require_tls=self.security == "starttls"
            )
        self._controller = Controller(_Keep(self), hostname=LOOPBACK, port=self.port, **kwargs)
        with warnings.catch_warnings():  # "AUTH without TLS": with TLS from the start, it is under TLS
            warnings.simplefilter("ignore", UserWarning)
            self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        with self.lock:
            return list(self.received)
