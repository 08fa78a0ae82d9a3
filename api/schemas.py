"""What the MIS sends and receives. The request is exactly the spec's; dates are ISO 8601 with an offset."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

# PatientID is LO (64 chars) and AccessionNumber SH (16 chars) in DICOM; some PACSes are lax about the
# latter, so both take up to 64. DICOM query wildcards and the value separator are refused.
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\\*?\x00-\x1f]+$")
]
Code = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")]


# ISO 8601 text with a UTC offset; numbers and numeric strings (Unix times) are refused, not guessed at.
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_NOT_ISO = "must be an ISO 8601 date-time string with a UTC offset, e.g. 2025-03-01T00:00:00+03:00"


def _iso_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.match(value.strip()):
        raise ValueError(_NOT_ISO)
    return value


def _sane_year(value: datetime) -> datetime:
    if not 1900 <= value.year <= 2200:
        raise ValueError("is out of range (years 1900 to 2200)")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_sane_year)]

SPEC_EXAMPLE: dict[str, Any] = {
    "patient_id": "1000001158664",
    "accession_number": "KP125706548L",
    "emk_record_id": "123456",
    "clinic_code": "f_Khimki",
    "service_code": "A01.201.405.002",
    "service_title": "МРТ суставов",
    "study_date": "2025-02-01T16:18:02+03:00",
    "save_till_date": "2025-03-01T00:00:00+03:00",  # the spec's; the served OpenAPI document has one ahead of today
}


def example_dates(max_days: int, default_days: int, now: datetime | None = None) -> tuple[str, str]:
    """(save_till_date, a later one for an extension) for the examples: a storage period starting now (Moscow
    time, as the MIS writes it), within the settings' limits, so the documented example never gets a 422."""
    moscow = timezone(timedelta(hours=3))
    today = (now or datetime.now(UTC)).astimezone(moscow).date()
    till = today + timedelta(days=max(1, min(default_days, max_days)))
    later = today + timedelta(days=max(1, min(default_days * 2, max_days)))
    return f"{till.isoformat()}T00:00:00+03:00", f"{later.isoformat()}T00:00:00+03:00"


def date_examples(schema: dict[str, Any], max_days: int, default_days: int) -> dict[str, Any]:
    """The OpenAPI document with its examples' storage dates set from today (see :func:`example_dates`)."""
    till, later = example_dates(max_days, default_days)
    components = schema.get("components", {}).get("schemas", {})
    publish_example = dict(SPEC_EXAMPLE, save_till_date=till)
    if "PublishRequest" in components:
        components["PublishRequest"]["examples"] = [publish_example]
    if "ExtendRequest" in components:
        components["ExtendRequest"]["examples"] = [{"save_till_date": later}]
    post = schema.get("paths", {}).get("/publish", {}).get("post", {})
    content = post.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        content["example"] = publish_example
    return schema


class PublishRequest(BaseModel):
    """A publication request from the MIS."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SPEC_EXAMPLE]})

    patient_id: Identifier = Field(description="PatientID in the PACS; the study must belong to this patient.")
    accession_number: Identifier = Field(description="AccessionNumber of the study in the PACS.")
    emk_record_id: Code | None = Field(None, description="The MIS's record id (EMK), kept with the publication.")
    clinic_code: Code = Field(description="Code of the clinic the study belongs to.")
    service_code: Code | None = Field(None, description="Code of the service (shown to staff).")
    service_title: Text | None = Field(None, description="Title shown on the patient's page, e.g. «МРТ суставов».")
    study_date: DateTime | None = Field(None, description="Date and time of the study, ISO 8601 with offset.")
    save_till_date: DateTime | None = Field(
        None,
        description="End of the storage period, ISO 8601 with offset; default: the default retention.",
    )
    patient_email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=254)] | None = Field(
        None, description="Send the link to this address when the study is ready (personal data; optional)."
    )
    patient_phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=20)] | None = Field(
        None, description="Send the link by SMS to this number, E.164 (e.g. +79161234567; optional)."
    )
    notify_language: Literal["ru", "en", "es", "fr", "de"] | None = Field(
        None, description="Language of the messages to the patient; default: the clinic's default language."
    )
    patient_birth_date: date | None = Field(
        None,
        description=(
            "The patient's date of birth (YYYY-MM-DD), asked on the link when its second factor is the birth "
            "date; else the PACS's answer is used. Only a slow hash of it is kept."
        ),
    )
    second_factor: Literal["none", "pin", "birth_date"] | None = Field(
        None,
        description=(
            "Protect the link with a second factor: `pin` (made by the service: sent by SMS when both an email and "
            "a phone are given, else returned here once as `pin`), `birth_date`, or `none`. Default: the clinic's "
            "setting."
        ),
    )


class ExtendRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"save_till_date": "2025-06-01T00:00:00+03:00"}]}
    )

    save_till_date: DateTime = Field(description="New end of the storage period (later than the current one).")


class Progress(BaseModel):
    received: int | None = Field(None, description="Instances received from the PACS so far.")
    expected: int | None = Field(None, description="Instances the PACS announced, when known.")


Status = Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED", "EXPIRED", "DELETED"]


class Publication(BaseModel):
    """A publication's state. The link is issued with the request and never changes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task_id": "6f1c2a4e-3b0d-4f7e-9a51-2c8d7e0b9f13",
                    "status": "QUEUED",
                    "step": "find",
                    "link": "https://studies.clinic.example/s/Q2h4d3VjZ2V0a2V5MTIz",
                    "status_url": "https://studies.clinic.example/publish/6f1c2a4e-3b0d-4f7e-9a51-2c8d7e0b9f13",
                    "save_till": "2025-02-28T21:00:00+00:00",
                    "progress": {"received": None, "expected": None},
                    "size_bytes": None,
                    "instances": None,
                    "waiting_for": None,
                    "waiting_since": None,
                    "next_attempt_at": None,
                    "reason": "queued, next to start",
                }
            ]
        }
    )

    task_id: str
    status: Status
    step: str | None = Field(None, description="The step running now, or the one that failed.")
    link: str = Field(description="The patient's link; shows 'being prepared' until the archive is ready.")
    status_url: str = Field(description="GET it (with the API key) to follow the publication.")
    save_till: datetime
    progress: Progress
    size_bytes: int | None = Field(None, description="Archive size, once uploaded.")
    instances: int | None = Field(None, description="Images in the archive.")
    withheld: int | None = Field(None, description="Images withheld because their pixels may show identity.")
    waiting_for: str | None = Field(
        None,
        description=(
            "What a publication that is not progressing waits for, beside its status: `interrupted` (its run "
            "stopped; being resumed), `pacs` / `storage` (unreachable; retried with backoff), `study` (not in the "
            "PACS yet; looked for again), `slot` (the PACS's retrieval slots are busy), `retry` (failed by an "
            "outage; retried automatically at `next_attempt_at`), `prefect` (the run cannot be started yet). "
            "None: progressing, or finished."
        ),
    )
    waiting_since: datetime | None = Field(None, description="Since when it waits for that.")
    next_attempt_at: datetime | None = Field(None, description="When it is tried again by itself.")
    reason: str | None = Field(
        None,
        description=(
            'In words: why it failed, what it waits for and since when, or its place in the queue ("queued, 3 ahead").'
        ),
    )
    second_factor: Literal["pin", "birth_date"] | None = Field(
        None, description="What the link asks before it shows the study (none when null)."
    )
    pin: str | None = Field(
        None,
        description=(
            "The link's PIN, in the answer that created the publication only, when it is not sent to the patient "
            "by SMS: hand it to the patient. Only its hash is kept."
        ),
    )
    link_locked: bool = Field(False, description="The link locked after too many wrong answers (staff unlock it).")


class ErrorField(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    """Every error: a code to branch on and a reason a person can read."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"code": "invalid_request", "detail": "save_till_date is in the past"}]}
    )

    code: str
    detail: str
    errors: list[ErrorField] | None = None
