"""One settings object, sub-models per concern, loaded from the environment (prefix ``STUDYPUB_``,
nested delimiter ``__``) and an optional ``.env`` file.

Every command asks only for the secrets it uses: storage credentials are checked when storage is opened,
not here. In production, placeholder secrets are refused outright.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "changethis", "secret", "password", "minioadmin"})


def _default_work_dir() -> Path:
    return Path.home() / ".local" / "share" / "studypublicator"


def _rate_limit(value: str) -> str:
    """A rate limit in the ``limits`` syntax ("60/minute", "10/minute;100/hour")."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"not a rate limit such as 60/minute: {value!r}") from exc
    return value


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL; default SQLite in the work dir. PostgreSQL: postgresql+psycopg2://...",
    )
    pool_size: int = Field(5, ge=1, le=100, description="Connection pool size (PostgreSQL).")
    echo: bool = Field(False, description="Log SQL statements (never in production: they carry identifiers).")


class PacsSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Host name or address of the PACS (DICOM Query/Retrieve SCP).")
    port: int = Field(4242, ge=1, le=65535, description="DICOM port of the PACS.")
    called_ae: str = Field("ORTHANC", max_length=16, description="AE title of the PACS.")
    calling_ae: str = Field(
        "STUDYPUB",
        max_length=16,
        description="This service's own AE title; also the C-MOVE destination the PACS must know.",
    )
    scp_port: int = Field(11113, ge=1, le=65535, description="Port of the service's Storage SCP (C-MOVE target).")
    scp_bind: str = Field("0.0.0.0", description="Address the Storage SCP listens on.")
    retrieve_method: Literal["move", "get"] = Field("move", description="C-MOVE (default) or C-GET.")
    store_from_aes: list[str] = Field(
        default_factory=list,
        description="AE titles allowed to store to our Storage SCP (JSON list); default: the PACS's CALLED_AE.",
    )
    max_pdu: int = Field(4 * 1024 * 1024, ge=0, description="Maximum PDU size we accept (bytes); 0 means unlimited.")
    acse_timeout: float = Field(30, gt=0, description="Association set-up timeout, seconds.")
    dimse_timeout: float = Field(600, gt=0, description="Timeout waiting for a DIMSE response, seconds.")
    network_timeout: float = Field(120, gt=0, description="Idle network timeout, seconds.")
    max_concurrent_retrievals: int = Field(
        2,
        ge=1,
        le=32,
        description=(
            "At most this many retrievals run against this PACS at once (slots leased in the app's database, "
            "shared by every worker; a publication waiting for an outage or a late study holds none)."
        ),
    )


class StorageSettings(BaseModel):
    url: str | None = Field(
        None,
        description="Where archives go: s3://bucket/prefix or file:///path. Default: a folder in the work dir.",
    )
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, other S3-compatible); empty for AWS.")
    public_endpoint_url: str | None = Field(
        None,
        description=(
            "The S3 endpoint as patients' browsers reach it, when it differs from endpoint_url (MinIO behind the "
            "reverse proxy): download URLs are signed for this address. Empty: endpoint_url."
        ),
    )
    access_key_id: SecretStr | None = Field(None, description="S3 access key id.")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret access key.")
    region: str = Field("us-east-1", description="S3 region.")
    upload_part_size: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart upload part size (bytes, at least 5 MiB)."
    )


class LinkSettings(BaseModel):
    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL patients reach; links are <base>/s/<key>."
    )
    default_retention_days: int = Field(30, ge=1, le=3650, description="Storage period when none is given.")
    max_retention_days: int = Field(365, ge=1, le=36500, description="Longest storage period allowed.")
    key_bytes: int = Field(16, ge=16, le=32, description="Random bytes in a link key (16 bytes = 128 bits).")
    presign_seconds: int = Field(
        300, ge=30, le=604800, description="Life of the presigned S3 URL a download redirects to (seconds)."
    )
    rate_limit: str = Field(
        "60/minute", description="Requests to link pages and downloads allowed per client address (limits syntax)."
    )
    viewer_rate_limit: str = Field(
        "3000/10 minutes",
        description=(
            "Image requests of the in-browser viewer allowed per link (limits syntax), apart from rate_limit: "
            "a 500-image CT opened a few times fits."
        ),
    )
    viewer_url_seconds: int = Field(
        600,
        ge=60,
        le=3600,
        description="Life of the signed image URLs the viewer is handed (seconds); every request also checks the link.",
    )
    time_zone: str = Field(
        "Europe/Moscow", description="IANA time zone dates are shown in on link pages and in download file names."
    )
    default_language: Literal["ru", "en", "es", "fr", "de"] = Field(
        "ru",
        description=(
            "Language of the pages when the browser asks for none of ru, en, es, fr, de; also the first language "
            "of the note in each archive."
        ),
    )

    @field_validator("rate_limit", "viewer_rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        return _rate_limit(value)

    @field_validator("time_zone")
    @classmethod
    def _valid_time_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"not an IANA time zone such as Europe/Moscow: {value!r}") from exc
        return value


class DeidSettings(BaseModel):
    burned_in_policy: Literal["withhold", "include", "fail"] = Field(
        "withhold",
        description=(
            "Instances that may show identity in their pixels (BurnedInAnnotation=YES, encapsulated documents): "
            "withhold them from the archive (default), include them, or fail the publication."
        ),
    )
    burned_in_text: Literal["mask", "withhold", "off"] = Field(
        "mask",
        description=(
            "Text burned into the pixels of ultrasound, screen captures, endoscopy, angiography and X-ray captures "
            "(and of any image whose header flags it), found by OCR: black it out (default; the image is then "
            "stored uncompressed), withhold such images, or do not look (off). An image that cannot be decoded to "
            "look is withheld."
        ),
    )
    retain_patient_characteristics: bool = Field(
        False, description="PS3.15 option: keep sex, age, size, weight (off by default)."
    )
    retain_device_identity: bool = Field(False, description="PS3.15 option: keep device identity (off).")
    dates: Literal["remove", "shift", "keep"] = Field(
        "remove",
        description=(
            "Dates and times in the images: remove them as the Basic Profile says (default; a viewer shows "
            "1 Jan 1900 or nothing), shift every date of a publication by one random offset of days that keeps "
            "the intervals (PS3.15 Retain Longitudinal Temporal Information with Modified Dates), or keep them "
            "(... with Full Dates). The patient's birth date is removed under every choice."
        ),
    )
    workers: int = Field(0, ge=0, le=64, description="Anonymiser processes; 0 means one per CPU core.")


class ArchiveSettings(BaseModel):
    compression: Literal["deflate", "stored"] = Field("deflate", description="ZIP compression method.")
    compress_level: int = Field(1, ge=0, le=9, description="Deflate level (1 is fast, 9 is small).")


class PrefectSettings(BaseModel):
    task_retries: int = Field(3, ge=0, le=20, description="Retries of a failed step (network, storage).")
    task_retry_delay: float = Field(5, ge=0, description="Initial delay between retries (seconds, doubles).")


class RunsSettings(BaseModel):
    """How publications heal themselves: leases, the worker's watchdog, outages, late studies, capacity."""

    lease_seconds: float = Field(
        60,
        ge=5,
        le=3600,
        description=(
            "A running publication's lease, renewed by its run every quarter of this; a run that stops renewing "
            "it (its worker died) is resumed by the watchdog once it expires."
        ),
    )
    watchdog_seconds: float = Field(10, gt=0, le=600, description="Seconds between the worker's watchdog passes.")
    max_resumes: int = Field(
        3,
        ge=0,
        le=100,
        description=(
            "Interrupted runs of one publication resumed automatically in a row; the next interruption fails it "
            "with a reason (something in the study may kill the process)."
        ),
    )
    stall_minutes: float = Field(
        30,
        gt=0,
        description=(
            "A running publication that records no progress (a step, an instance received) for this long is "
            "stopped and resumed by the watchdog."
        ),
    )
    outage_patience_seconds: float = Field(
        600,
        ge=0,
        description=(
            "A step waits this long for an unreachable PACS or storage (retrying with backoff) before the "
            "publication fails with the cause."
        ),
    )
    auto_retry_minutes: float = Field(
        15,
        gt=0,
        description="A publication failed by an outage or an interruption is retried automatically this often.",
    )
    auto_retry_hours: float = Field(
        24, ge=0, description="... for this long after its first failure (0: never automatically)."
    )
    study_wait_hours: float = Field(
        4,
        ge=0,
        description="A study not (yet) in the PACS is looked for again for this long before the publication fails.",
    )
    study_recheck_seconds: float = Field(
        300, gt=0, description="Seconds between looks for a study that has not reached the PACS yet."
    )
    max_concurrent: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Publications one worker runs at once (each is a process of ~200 MiB); the rest wait queued. "
            "0: from the machine's memory and cores."
        ),
    )

    def concurrent_runs(self) -> int:
        """The cap in force: the setting, or what the machine can take (two per core, ~250 MiB each with
        headroom for the rest of the service), between 2 and 16."""
        if self.max_concurrent:
            return self.max_concurrent
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 2**30
        by_memory = int((avail - 2**30) // (250 * 2**20))
        return max(2, min(16, 2 * (os.cpu_count() or 1), by_memory))


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the API/dashboard listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the API/dashboard.")
    trusted_proxies: str = Field(
        "",
        description=(
            "Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For/-Proto are trusted, "
            "comma-separated; empty (default): none. Not '*': any client could then choose its own address."
        ),
    )
    workers: int = Field(
        2, ge=1, le=32, description="API processes (uvicorn workers); link rate limits are counted per process."
    )
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body accepted (bytes); larger: 413.")
    dispatch_interval: float = Field(
        5, gt=0, le=300, description="Seconds between sweeps that start the runs of recorded requests."
    )
    viewer_assets_dir: Path | None = Field(
        None,
        description=(
            "Folder of the in-browser viewers built at set-up (phone/ and ohif/); default: viewer/dist beside the "
            "api package. Without it the link pages offer the download only."
        ),
    )

    @field_validator("viewer_assets_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_proxies")
    @classmethod
    def _no_wildcard(cls, value: str) -> str:
        if "*" in value:
            raise ValueError("'*' would let any client set its own address; list the proxies (CIDR allowed)")
        return value


class RetentionSettings(BaseModel):
    cron: str = Field("0 * * * *", description="Schedule of the retention flow (cron, server time zone UTC).")
    work_max_age_hours: float = Field(
        24, ge=0, description="Work folders of finished or abandoned publications older than this are removed."
    )
    results_max_age_days: float = Field(
        7, ge=0, description="Prefect's persisted results (PREFECT_LOCAL_STORAGE_PATH) older than this are removed."
    )
    storage_grace_hours: float = Field(
        6,
        gt=0,
        description=(
            "Pending multipart uploads and objects no publication references, younger than this, are left alone "
            "(an upload in progress or just finished); older ones are aborted or deleted by retention."
        ),
    )
    erase_identifiers_after_days: float = Field(
        30, ge=0, description="PID, accession and EMK id of deleted publications are erased after this many days."
    )


class DashboardSettings(BaseModel):
    registrator_session_hours: float = Field(8, gt=0, le=24 * 7, description="Sign-in lifetime of registrators.")
    administrator_session_hours: float = Field(24, gt=0, le=24 * 7, description="Sign-in lifetime of administrators.")
    login_rate_limit: str = Field(
        "10/minute", description="Sign-in attempts allowed per client address and per user name (limits syntax)."
    )
    registrators_can_extend: bool = Field(False, description="Registrators may extend a publication's storage.")
    first_admin_username: str | None = Field(
        None, description="Creates this administrator at first start when there are no users (with the password)."
    )
    first_admin_password: SecretStr | None = Field(
        None, description="Password of the first administrator (at least 10 characters); change it after sign-in."
    )
    prefect_ui_url: str = Field(
        "http://127.0.0.1:4200", description="Address of the Prefect UI as the staff's browsers reach it (run links)."
    )
    page_size: int = Field(50, ge=10, le=500, description="Rows per page of the published studies list.")

    @field_validator("first_admin_username", "first_admin_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("login_rate_limit")
    @classmethod
    def _valid_login_rate_limit(cls, value: str) -> str:
        return _rate_limit(value)


SecondFactor = Literal["none", "pin", "birth_date"]


class NotifySettings(BaseModel):
    """Sending the link to the patient (email, SMS) and the study to a FHIR server. Sender names and wording
    choices are overridable per clinic from the dashboard; credentials come only from the environment."""

    clinic_name: str = Field(
        "", max_length=120, description="The clinic's name in messages to patients (empty: the clinic code)."
    )
    email_enabled: bool = Field(True, description="Send the link by email when the request gives an address.")
    sms_enabled: bool = Field(True, description="Send the link by SMS when the request gives a phone number.")
    include_service_title: bool = Field(
        False, description="Name the service (e.g. «МРТ суставов») in emails; off: nothing about the study's content."
    )
    sms_include_service_title: bool = Field(False, description="Name the service in SMS too (off by default).")
    template_dir: str = Field(
        "",
        description=(
            "A folder of message templates (email_subject.txt, email.txt, email.html, sms_link.txt, sms_pin.txt) "
            "that replace the built-in ones; empty: the built-in ones."
        ),
    )
    renotify_on_extend: bool = Field(
        True, description="When the storage period is extended, send the patient the new date (same link)."
    )
    smtp_host: str = Field("", description="SMTP server; empty: no email is sent (messages stay queued).")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS, 25 plain).")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls (upgrade a plain connection), tls (TLS from the start) or none."
    )
    smtp_username: str = Field("", description="SMTP user name (empty: no authentication).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (environment only).")
    smtp_timeout: float = Field(20, gt=0, le=300, description="Seconds to wait for the SMTP server.")
    smtp_ca_file: str = Field("", description="CA bundle to verify the SMTP server's certificate (empty: system).")
    email_from: str = Field(
        "studies@clinic.example", max_length=254, description="Sender address of the emails (From)."
    )
    email_from_name: str = Field("", max_length=120, description="Sender name of the emails (empty: clinic name).")
    sms_provider: Literal["log", "smsru", "twilio"] = Field(
        "log", description="SMS gateway: log (development: logs that a message would go, not its text), smsru, twilio."
    )
    sms_sender: str = Field("", max_length=32, description="Sender name or number of the SMS (gateway's 'from').")
    smsru_api_id: SecretStr | None = Field(None, description="SMS.ru api_id (environment only).")
    smsru_url: str = Field("https://sms.ru", description="SMS.ru API base URL.")
    twilio_account_sid: str = Field("", description="Twilio Account SID.")
    twilio_auth_token: SecretStr | None = Field(None, description="Twilio auth token (environment only).")
    twilio_url: str = Field("https://api.twilio.com", description="Twilio API base URL.")
    webhook_token: SecretStr | None = Field(
        None,
        description=(
            "Secret in the delivery-status callback URLs given to the SMS gateway (environment only; "
            "default: derived from the service secret)."
        ),
    )
    sweep_seconds: int = Field(60, ge=5, le=3600, description="Seconds between passes of the 'notify' deployment.")
    first_retry_seconds: float = Field(30, gt=0, description="Delay before the first retry of a message (doubles).")
    max_retry_seconds: float = Field(1800, gt=0, description="Longest delay between two retries of a message.")
    give_up_hours: float = Field(
        72, gt=0, description="A message the provider keeps refusing to take (outage) fails after this long."
    )
    sending_timeout_seconds: float = Field(
        300,
        ge=10,
        description=(
            "A message marked 'sending' whose result was not recorded after this long becomes 'unknown' "
            "(shown to staff, never resent automatically)."
        ),
    )
    fhir_push_url: str = Field("", description="FHIR server base (R4 or R5) to push ImagingStudy to; empty: none.")
    fhir_push_version: Literal["R4", "R5"] = Field("R4", description="FHIR version of the pushed resource.")
    fhir_push_token: SecretStr | None = Field(None, description="Bearer token for the FHIR server (environment only).")
    fhir_patient_system: str = Field(
        "urn:studypub:mis:patient", description="Identifier system of the MIS's patient ids in FHIR references."
    )
    fhir_accession_system: str = Field(
        "urn:studypub:mis:accession", description="Identifier system of the MIS's accession numbers in FHIR."
    )


class FactorSettings(BaseModel):
    """The optional second factor on a patient's link."""

    second_factor: SecondFactor = Field(
        "none",
        description=(
            "Second factor asked before a link shows the study: none, pin (a code the service makes) or "
            "birth_date (the patient's date of birth). A request may choose its own."
        ),
    )
    pin_digits: int = Field(6, ge=4, le=10, description="Digits in a generated PIN.")
    max_attempts: int = Field(5, ge=1, le=20, description="Wrong answers after which the link locks.")
    remember_minutes: int = Field(
        30, ge=1, le=24 * 60, description="A right answer is remembered this long for that link (cookie)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STUDYPUB_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    env: Literal["development", "production"] = Field("development", description="Deployment environment.")
    work_dir: Path = Field(
        default_factory=_default_work_dir,
        description="Folder for the SQLite database, spools, archives in progress, and local storage.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description=(
            "Secret for UID generation and signing. Development generates one in the work dir; production requires it."
        ),
    )
    default_clinic_code: str = Field("default", description="Clinic of manual and CLI requests.")
    min_free_disk_mb: int = Field(
        1024, ge=0, description="Free space required in the work dir beyond three times the study size (MiB)."
    )
    log_format: Literal["auto", "console", "json"] = Field(
        "auto",
        description=(
            "Logs on stderr: json (the spec's JSON lines), console (readable lines for a person at a terminal), "
            "or auto (console when stderr is a terminal and in `studypub run`, JSON otherwise). Read from the "
            "environment when a process starts (studypub.logs), before the other settings."
        ),
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    links: LinkSettings = Field(default_factory=LinkSettings)
    deid: DeidSettings = Field(default_factory=DeidSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    runs: RunsSettings = Field(default_factory=RunsSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    factor: FactorSettings = Field(default_factory=FactorSettings)

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.links.max_retention_days < self.links.default_retention_days:
            raise ValueError("links.max_retention_days must be at least links.default_retention_days")
        if self.env != "production":
            return self
        if self.secret_key is None:
            raise ValueError("STUDYPUB_SECRET_KEY is required in production")
        for name, value in (
            ("STUDYPUB_SECRET_KEY", self.secret_key),
            ("STUDYPUB_STORAGE__SECRET_ACCESS_KEY", self.storage.secret_access_key),
            ("STUDYPUB_DASHBOARD__FIRST_ADMIN_PASSWORD", self.dashboard.first_admin_password),
            ("STUDYPUB_NOTIFY__SMTP_PASSWORD", self.notify.smtp_password),
        ):
            if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
        if len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("STUDYPUB_SECRET_KEY must be at least 32 characters in production")
        return self

    # Derived values -------------------------------------------------------------------------------------
    @property
    def database_url_resolved(self) -> str:
        return self.database.url or f"sqlite:///{self.work_dir / 'studypub.db'}"

    @property
    def storage_url_resolved(self) -> str:
        return self.storage.url or (self.work_dir / "storage").resolve().as_uri()

    def secret_bytes(self) -> bytes:
        """The service secret. In development a random one is created once and kept in the work dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.work_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:  # O_EXCL: two processes starting at once agree on one secret
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
        for _ in range(50):  # the creator may still be writing
            value = path.read_text().strip()
            if value:
                return value.encode()
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty")


@lru_cache
def get_settings() -> Settings:
    return Settings()
