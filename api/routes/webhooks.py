"""Delivery-status callbacks of the SMS gateways: ``POST /webhooks/sms/{provider}/{token}``.

Authenticated twice over where the gateway allows: the secret token in the URL (``notify.webhook_token``,
compared in constant time; without one configured the route answers 404) and, for Twilio, the request's
``X-Twilio-Signature``. A report moves a sent message to delivered or failed (with the gateway's reason)."""

from __future__ import annotations

import hmac
from typing import Literal

from fastapi import APIRouter, Request, Response

from api.deps import PublicSessionDep, SettingsDep
from studypub.errors import NotFound, Unauthorized
from studypub.i18n import N_
from studypub.notify.outbox import record_report
from studypub.notify.sms import SmsRuGateway, TwilioGateway

router = APIRouter(prefix="/webhooks", include_in_schema=False)


@router.post("/sms/{provider}/{token}")
async def sms_status(
    provider: Literal["smsru", "twilio"], token: str, request: Request, session: PublicSessionDep, settings: SettingsDep
) -> Response:
    await request.body()  # read (and checked for a NUL, like every route's body) before anything is decided
    expected = settings.notify.webhook_token
    if expected is None or not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise NotFound(N_("no such page"))
    form = await request.form()
    if provider == "twilio":
        fields = {key: str(value) for key, value in form.items()}
        auth = settings.notify.twilio_auth_token
        url = f"{settings.links.public_base_url.rstrip('/')}{request.url.path}"
        signature = request.headers.get("X-Twilio-Signature", "")
        if auth is None or not hmac.compare_digest(
            signature, TwilioGateway.signature(auth.get_secret_value(), url, fields)
        ):
            raise Unauthorized(N_("the callback's signature does not match"))
        report = TwilioGateway.report(fields)
        if report is not None:
            record_report(session, "twilio", report.provider_id, report.status, report.reason)
        return Response(status_code=204)
    multi: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        multi.setdefault(key, []).append(str(value))
    for report in SmsRuGateway.reports(multi):
        record_report(session, "smsru", report.provider_id, report.status, report.reason)
    return Response("100", media_type="text/plain")  # what SMS.ru expects back
