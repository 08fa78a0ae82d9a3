"""``studypub api``: the API and the patient's link pages, served by uvicorn with the project's logs (studypub.logs).

Client addresses (rate limits, the audit's coarse client info) come from X-Forwarded-For only when the
request comes from a trusted proxy (``STUDYPUB_API__TRUSTED_PROXIES``). Empty (the default) trusts no proxy:
uvicorn's proxy-headers middleware is not even installed, so no client can choose its own address.
"""

from __future__ import annotations

from typing import Any

from studypub.settings import Settings


def trusted_proxies(settings: Settings) -> list[str]:
    """The configured proxies (addresses or CIDR networks); empty: trust none."""
    return [item.strip() for item in settings.api.trusted_proxies.split(",") if item.strip()]


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy options. Never ``forwarded_allow_ips=None``: uvicorn would then trust
    ``$FORWARDED_ALLOW_IPS`` or 127.0.0.1, and any local client could spoof its address."""
    proxies = trusted_proxies(settings)
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies}


def serve_api(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from studypub.db import migrate
    from studypub.logs import uvicorn_log_config

    migrate(settings)  # once, before the workers start (each worker's start-up then finds it done)

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        workers=settings.api.workers,
        **proxy_options(settings),
        log_config=uvicorn_log_config(),
        access_log=False,  # access lines would carry link keys; the app audits what matters
        server_header=False,
        timeout_graceful_shutdown=5,
    )
