"""SMS through an HTTP gateway behind one small interface (:class:`SmsGateway`), with adapters for SMS.ru and
Twilio and a "log only" one for development, plus what each gateway's delivery-status callback says.

The phone number and the text (it carries the link, or a PIN) are never logged: the log-only adapter writes
that a message would go, to a masked number, and how long it is."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx

from studypub.contacts import mask_phone
from studypub.logs import details, get_logger
from studypub.notify.providers import Accepted, DeliveryError
from studypub.settings import NotifySettings

log = get_logger("notify.sms")
TIMEOUT = 20.0


class SmsGateway(Protocol):
    name: str

    def send(self, phone: str, text: str, *, reference: str, callback_url: str | None) -> Accepted:
        """Hand one SMS to the gateway. Raises DeliveryError (transient or not)."""
        ...


@dataclass(frozen=True)
class StatusReport:
    """A delivery report from a gateway's callback: which message, and what became of it."""

    provider_id: str
    status: str  # delivered | failed | (anything else: still on its way, ignored)
    reason: str | None = None


class LogOnlyGateway:
    """Development: nothing is sent; the log says a message would go (masked number, length, no text)."""

    name = "log"

    def send(self, phone: str, text: str, *, reference: str, callback_url: str | None) -> Accepted:
        provider_id = f"log-{secrets.token_hex(8)}"
        log.info(
            "SMS not sent (log-only gateway)",
            extra=details(to=mask_phone(phone), chars=len(text), reference=reference, provider_id=provider_id),
        )
        return Accepted(provider=self.name, provider_id=provider_id)


def _http_error(exc: Exception) -> DeliveryError:
    return DeliveryError(f"the SMS gateway is unreachable ({type(exc).__name__})", transient=True)


class SmsRuGateway:
    """SMS.ru: ``GET /sms/send?api_id&to&msg&json=1``; the answer says per number OK (with ``sms_id``) or an
    error code. Callbacks (``data[]`` lines ``sms_status\\n<id>\\n<code>``) are set in the SMS.ru account."""

    name = "smsru"
    DELIVERED = frozenset({"103"})
    FAILED = frozenset({"104", "105", "106", "107", "108", "150"})

    def __init__(self, settings: NotifySettings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.client = client or httpx.Client(timeout=TIMEOUT)

    def send(self, phone: str, text: str, *, reference: str, callback_url: str | None) -> Accepted:
        if self.settings.smsru_api_id is None:
            raise DeliveryError("SMS.ru has no api_id configured (STUDYPUB_NOTIFY__SMSRU_API_ID)", transient=True)
        to = phone.lstrip("+")
        params = {"api_id": self.settings.smsru_api_id.get_secret_value(), "to": to, "msg": text, "json": "1"}
        if self.settings.sms_sender:
            params["from"] = self.settings.sms_sender
        try:
            response = self.client.post(f"{self.settings.smsru_url.rstrip('/')}/sms/send", data=params)
        except httpx.HTTPError as exc:
            raise _http_error(exc) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise DeliveryError(f"SMS.ru answered HTTP {response.status_code}", transient=True)
        try:
            body = response.json()
        except ValueError:
            raise DeliveryError(f"SMS.ru answered HTTP {response.status_code} without JSON", transient=True) from None
        if body.get("status") != "OK":
            code = body.get("status_code")
            # 200-series: the request itself (api_id, balance, sender...): retrying will not help until fixed,
            # but it is the clinic's account, not the patient's number: keep trying for a while.
            raise DeliveryError(f"SMS.ru refused the request (code {code})", transient=True)
        one = (body.get("sms") or {}).get(to) or {}
        if one.get("status") != "OK":
            raise DeliveryError(f"SMS.ru refused the number (code {one.get('status_code')})", transient=False)
        return Accepted(provider=self.name, provider_id=str(one.get("sms_id") or ""))

    @classmethod
    def reports(cls, form: Mapping[str, list[str]]) -> list[StatusReport]:
        result = []
        for key, values in form.items():
            if not key.startswith("data"):
                continue
            for value in values:
                lines = value.split("\n")
                if len(lines) >= 3 and lines[0].strip() == "sms_status":
                    provider_id, code = lines[1].strip(), lines[2].strip()
                    status = "delivered" if code in cls.DELIVERED else "failed" if code in cls.FAILED else "sent"
                    result.append(StatusReport(provider_id, status, None if status != "failed" else f"SMS.ru {code}"))
        return result


class TwilioGateway:
    """Twilio: ``POST /2010-04-01/Accounts/<sid>/Messages.json`` (basic auth), with a StatusCallback URL; the
    callback is signed (``X-Twilio-Signature``, HMAC-SHA1 of the URL and the sorted form with the token)."""

    name = "twilio"
    DELIVERED = frozenset({"delivered", "read"})
    FAILED = frozenset({"failed", "undelivered", "canceled"})

    def __init__(self, settings: NotifySettings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.client = client or httpx.Client(timeout=TIMEOUT)

    def send(self, phone: str, text: str, *, reference: str, callback_url: str | None) -> Accepted:
        sid, token = self.settings.twilio_account_sid, self.settings.twilio_auth_token
        if not sid or token is None:
            raise DeliveryError("Twilio has no account SID or token configured", transient=True)
        form = {"To": phone, "Body": text}
        if self.settings.sms_sender.startswith("MG"):
            form["MessagingServiceSid"] = self.settings.sms_sender
        else:
            form["From"] = self.settings.sms_sender
        if callback_url:
            form["StatusCallback"] = callback_url
        url = f"{self.settings.twilio_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        try:
            response = self.client.post(url, data=form, auth=(sid, token.get_secret_value()))
        except httpx.HTTPError as exc:
            raise _http_error(exc) from None
        if response.status_code in (200, 201):
            body = response.json()
            if body.get("status") in self.FAILED:
                raise DeliveryError(f"Twilio refused the message ({body.get('error_code')})", transient=False)
            return Accepted(provider=self.name, provider_id=str(body.get("sid") or ""))
        code = None
        with contextlib.suppress(ValueError):
            code = response.json().get("code")
        transient = response.status_code >= 500 or response.status_code in (401, 403, 429)
        raise DeliveryError(f"Twilio answered HTTP {response.status_code} (code {code})", transient=transient)

    @staticmethod
    def signature(auth_token: str, url: str, form: Mapping[str, str]) -> str:
        payload = url + "".join(f"{key}{form[key]}" for key in sorted(form))
        digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    @classmethod
    def report(cls, form: Mapping[str, str]) -> StatusReport | None:
        sid, state = form.get("MessageSid"), (form.get("MessageStatus") or "").lower()
        if not sid:
            return None
        status = "delivered" if state in cls.DELIVERED else "failed" if state in cls.FAILED else "sent"
        reason = f"Twilio {state} ({form.get('ErrorCode')})" if status == "failed" else None
        return StatusReport(sid, status, reason)


def gateway(settings: NotifySettings) -> SmsGateway:
    if settings.sms_provider == "smsru":
        return SmsRuGateway(settings)
    if settings.sms_provider == "twilio":
        return TwilioGateway(settings)
    return LogOnlyGateway()
