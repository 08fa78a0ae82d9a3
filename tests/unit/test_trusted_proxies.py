"""No proxy is trusted unless configured: uvicorn takes X-Forwarded-For only from STUDYPUB_API__TRUSTED_PROXIES."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn

from deployments.api import proxy_options
from studypub.settings import Settings


async def _echo_client(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{scope['client'][0]} {scope['scheme']}".encode()})


def _seen_by_the_app(options: dict[str, Any], client: str, forwarded_for: str) -> str:
    """What the app sees as the client's address and scheme, through uvicorn's own wrapping of the app."""
    config = uvicorn.Config(_echo_client, **options)
    config.load()
    scope = {
        "type": "http",
        "client": (client, 50000),
        "scheme": "http",
        "headers": [(b"x-forwarded-for", forwarded_for.encode()), (b"x-forwarded-proto", b"https")],
    }
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message["body"])

    asyncio.run(config.loaded_app(scope, receive, send))
    return b"".join(body).decode()


def test_the_default_trusts_no_proxy_not_even_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own fallback must not come into play either
    options = proxy_options(Settings())
    assert options == {"proxy_headers": False, "forwarded_allow_ips": []}
    assert _seen_by_the_app(options, "127.0.0.1", "198.51.100.7") == "127.0.0.1 http"


@pytest.mark.parametrize("configured", ["", " ", " , "])
def test_empty_lists_trust_no_proxy(monkeypatch: pytest.MonkeyPatch, configured: str) -> None:
    monkeypatch.setenv("STUDYPUB_API__TRUSTED_PROXIES", configured)
    options = proxy_options(Settings())
    assert not options["proxy_headers"] and options["forwarded_allow_ips"] == []
    assert _seen_by_the_app(options, "127.0.0.1", "198.51.100.7") == "127.0.0.1 http"


def test_configured_proxies_are_trusted_and_only_they(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_API__TRUSTED_PROXIES", "127.0.0.1, 172.28.0.0/24")
    options = proxy_options(Settings())
    assert options == {"proxy_headers": True, "forwarded_allow_ips": ["127.0.0.1", "172.28.0.0/24"]}
    assert _seen_by_the_app(options, "127.0.0.1", "198.51.100.7") == "198.51.100.7 https"
    assert _seen_by_the_app(options, "172.28.0.5", "198.51.100.8") == "198.51.100.8 https"
    assert _seen_by_the_app(options, "10.1.2.3", "198.51.100.9") == "10.1.2.3 http"  # not a proxy of ours
