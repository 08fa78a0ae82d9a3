"""Push a published study's ImagingStudy to the configured FHIR server: ``PUT <base>/ImagingStudy/<task id>``
(an update that creates the resource when it is new, so a repeat changes nothing). Sent through the outbox
like the patient's messages: an unreachable or busy server is tried again later; a refusal is final."""

from __future__ import annotations

import httpx

from studypub.fhir.publication import resource_for
from studypub.models import Task
from studypub.notify.providers import Accepted, DeliveryError
from studypub.settings import Settings

TIMEOUT = 30.0


def push(settings: Settings, task: Task, client: httpx.Client | None = None) -> Accepted:
    base = settings.notify.fhir_push_url.rstrip("/")
    if not base:
        raise DeliveryError("no FHIR server is configured", transient=False)
    resource = resource_for(settings, task, settings.notify.fhir_push_version)
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if settings.notify.fhir_push_token is not None:
        headers["Authorization"] = f"Bearer {settings.notify.fhir_push_token.get_secret_value()}"
    http = client or httpx.Client(timeout=TIMEOUT)
    try:
        response = http.put(f"{base}/ImagingStudy/{task.id}", json=resource, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"the FHIR server is unreachable ({type(exc).__name__})", transient=True) from None
    finally:
        if client is None:
            http.close()
    if response.status_code in (200, 201):
        version = response.headers.get("ETag") or response.headers.get("Location") or ""
        return Accepted(provider="fhir", provider_id=version[:128] or task.id, status="delivered")
    transient = response.status_code >= 500 or response.status_code in (408, 429)
    raise DeliveryError(f"the FHIR server answered HTTP {response.status_code}", transient=transient)
