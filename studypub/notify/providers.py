"""What every provider (SMTP, an SMS gateway, a FHIR server) answers the outbox: taken (with the provider's
id for the message), or a :class:`DeliveryError` that says whether trying again later can help."""

from __future__ import annotations

from dataclasses import dataclass


class DeliveryError(Exception):
    """The provider did not take the message. ``transient``: unreachable, busy, a temporary refusal (tried
    again later, with backoff); otherwise refused for good (a bad address, a rejected number)."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason[:500]
        self.transient = transient


@dataclass(frozen=True)
class Accepted:
    provider: str
    provider_id: str | None = None
    status: str = "sent"  # or "delivered" when the provider knows at once
