"""SQLAlchemy 2 models. Every row that belongs to a clinic carries ``clinic_code`` (normalised, see
``studypub.clinics``); ``studypub.tenancy`` filters them by the clinic of the session's scope.

``tasks`` is the processing queue and the request (one row per publication). The PID and accession live
here only; Prefect sees the task id alone. ``published_studies`` is the result, one row per task once the
archive is in storage. The link key is issued with the task and never changes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive values; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class TaskStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"


ACTIVE_STATUSES = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.FAILED)


class Step(enum.StrEnum):
    FIND = "find"
    RETRIEVE = "retrieve"
    ANONYMISE = "anonymise"
    ZIP = "zip"
    UPLOAD = "upload"
    LINK = "link"


STEP_ORDER = list(Step)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    clinic_code: Mapped[str] = mapped_column(String(64), index=True)
    # The request. Identifiers may be erased (NULL) after retention, the row stays for the audit trail.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    emk_record_id: Mapped[str | None] = mapped_column(String(64))
    service_code: Mapped[str | None] = mapped_column(String(64))
    service_title: Mapped[str | None] = mapped_column(String(512))
    study_date: Mapped[datetime | None]
    save_till: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))  # mis | manual | cli
    # Processing state.
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED, index=True)
    step: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    progress_received: Mapped[int | None] = mapped_column(Integer)
    progress_expected: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    # What a publication that is not progressing waits for (see studypub.lifecycle.Waiting), since when, and
    # when it is tried again by itself; ``reason`` says it in words.
    waiting_for: Mapped[str | None] = mapped_column(String(16))
    waiting_since: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    progress_at: Mapped[datetime | None]  # the run's last sign of progress (a step, an instance received)
    resumes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))  # interrupted runs in a row
    first_failed_at: Mapped[datetime | None]  # automatic retries stop some time after this
    # Recorded by the API/dashboard and not yet handed to Prefect (the dispatcher starts its run).
    dispatch_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))  # a new run each time
    # Fixed at request time, never change.
    link_key: Mapped[str] = mapped_column(String(64), unique=True)
    uid_salt: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(String(256), unique=True)
    profile_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]  # archive deleted (retention or revocation)
    identifiers_erased_at: Mapped[datetime | None]  # PID, accession and EMK id erased
    # How the patient is reached: personal data, kept until the publication is deleted (resend and re-notify
    # need it), erased by retention with the identifiers. Never given to Prefect, never logged.
    patient_email: Mapped[str | None] = mapped_column(String(254))
    patient_phone: Mapped[str | None] = mapped_column(String(16))  # E.164
    notify_language: Mapped[str | None] = mapped_column(String(2))
    # The link's second factor: its kind (pin, birth_date), a slow hash of the answer (never the answer),
    # wrong answers in a row, and when it locked (an administrator unlocks it).
    second_factor: Mapped[str | None] = mapped_column(String(16))
    factor_hash: Mapped[str | None] = mapped_column(String(256))
    factor_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    factor_locked_at: Mapped[datetime | None]

    publication: Mapped[PublishedStudy | None] = relationship(back_populates="task", uselist=False)
    steps: Mapped[list[TaskStep]] = relationship(
        back_populates="task", lazy="selectin", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def checkpoints(self) -> dict[str, Any]:
        """What each finished step produced (a re-run resumes after the last one)."""
        return {s.step: s.data for s in self.steps}

    __table_args__ = (
        # One live publication per study and clinic; expired/deleted ones make room for a new one.
        Index(
            "uq_tasks_active_study",
            "clinic_code",
            "patient_id",
            "accession_number",
            unique=True,
            sqlite_where=text("status NOT IN ('EXPIRED', 'DELETED')"),
            postgresql_where=text("status NOT IN ('EXPIRED', 'DELETED')"),
        ),
        Index(
            "ix_tasks_dispatch_pending",
            "created_at",
            sqlite_where=text("dispatch_pending"),
            postgresql_where=text("dispatch_pending"),
        ),
        Index("ix_tasks_accession", "accession_number"),
        Index(
            "ix_tasks_next_attempt_at",
            "next_attempt_at",
            sqlite_where=text("next_attempt_at IS NOT NULL"),
            postgresql_where=text("next_attempt_at IS NOT NULL"),
        ),
        # The published list sorts by these (then by id, for a stable page order) and filters by the first.
        Index("ix_tasks_save_till", "save_till", "id"),
        Index("ix_tasks_patient", "patient_id", "id"),
        Index("ix_tasks_study_date", "study_date", "id"),
        Index("ix_tasks_emk_record_id", "emk_record_id", "id"),
    )


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its (next) attempt
    SENDING = "sending"  # handed to the provider; the result not recorded yet
    SENT = "sent"  # the provider took it
    DELIVERED = "delivered"  # the provider says it reached the patient
    FAILED = "failed"  # refused for good, or the provider stayed unreachable too long (see ``reason``)
    UNKNOWN = "unknown"  # "sending" whose result was never recorded (a crash): never resent automatically


class OutboxMessage(Base):
    """One message to the patient (the link, or the PIN) by one channel, for one event. The recipient is
    not copied here: it is read from the publication when the message is sent, so erasing the publication's
    contact erases it everywhere. ``event`` makes automatic sending at most once per event."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    clinic_code: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(8))  # email | sms
    kind: Mapped[str] = mapped_column(String(8))  # link | pin
    event: Mapped[str] = mapped_column(String(64))  # published | extended:<date> | resend:<n>
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.QUEUED, index=True)
    reason: Mapped[str | None] = mapped_column(Text)  # the provider's reason (a failure, a delivery report)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_id: Mapped[str | None] = mapped_column(String(128), index=True)  # the gateway's message id
    message_id: Mapped[str] = mapped_column(String(255))  # the email's Message-ID (stable across attempts)
    requested_by: Mapped[str] = mapped_column(String(64), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_outbox_event", "task_id", "channel", "kind", "event", unique=True),
        Index("ix_outbox_due", "status", "next_attempt_at"),
    )


class SlotLease(Base):
    """One slot of a limited resource (the retrievals a PACS takes at once), leased for a while by its holder
    and renewed by it. A holder that dies stops renewing, and the slot is free again when the lease runs out:
    no server restart or killed process can keep a slot taken."""

    __tablename__ = "slot_leases"

    pool: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. "pacs:<host>:<port>:<ae>"
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class TaskStep(Base):
    """A finished step of a publication and what it produced (one row per step, so steps that run at the
    same time never overwrite each other's record)."""

    __tablename__ = "task_steps"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[str] = mapped_column(String(16), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[Task] = relationship(back_populates="steps")


class PublishedStudy(Base):
    __tablename__ = "published_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    clinic_code: Mapped[str] = mapped_column(String(64), index=True)
    storage_url: Mapped[str] = mapped_column(String(512))  # the storage root it was written to
    object_key: Mapped[str] = mapped_column(String(256), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    instances: Mapped[int] = mapped_column(Integer)
    withheld: Mapped[int] = mapped_column(Integer, default=0)
    series: Mapped[int] = mapped_column(Integer, default=0)
    modalities: Mapped[str | None] = mapped_column(String(64))
    profile_version: Mapped[str] = mapped_column(String(64))
    upload_date: Mapped[datetime] = mapped_column(default=utcnow)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    last_download_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    task: Mapped[Task] = relationship(back_populates="publication")

    __table_args__ = (
        # The published list sorts by these, then by id (a stable page order): an index walk, not a sort.
        Index("ix_published_studies_upload_date", "upload_date", "id"),
        Index("ix_published_studies_size_bytes", "size_bytes", "id"),
        Index("ix_published_studies_downloads", "downloads", "id"),
        Index("ix_published_studies_last_download_at", "last_download_at", "id"),
    )


class ManualRequest(Base):
    __tablename__ = "manual_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    clinic_code: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    clinic_code: Mapped[str] = mapped_column(String(64), index=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # administrator | registrator
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A key of an MIS client. Only its SHA-256 is stored (the key is 256 random bits, shown once).

    ``clinic_code`` is its home clinic (who manages it); ``clinic_codes`` the clinics it may publish for:
    a list of codes, or None for every clinic of the instance (one MIS serving several branches)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    clinic_code: Mapped[str | None] = mapped_column(String(64), index=True)  # None: made by the instance
    clinic_codes: Mapped[list[str] | None] = mapped_column(JSON)  # None: any clinic
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_hint: Mapped[str] = mapped_column(String(8))  # the key's first characters, to recognise it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Setting(Base):
    """Values an administrator saved; they override the environment's defaults for those fields."""

    __tablename__ = "settings"

    clinic_code: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class AuditEvent(Base):
    """Who did what and when. Details carry ids and counts, not identities."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    clinic_code: Mapped[str | None] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(64))  # user name, "mis:<key name>", "system", "cli"
    action: Mapped[str] = mapped_column(String(64), index=True)
    task_id: Mapped[str | None] = mapped_column(String(36), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ViewerIndex(Base):
    """Where each anonymised instance of an archive lies inside it, with what a viewer needs to know about
    it (studypub.viewer). One row per archive object, written with the archive; gone with it."""

    __tablename__ = "viewer_indexes"

    object_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Clinic(Base):
    """A clinic of the instance: who it is to its patients, its PACS and its time zone and languages. Its
    overridable settings (storage periods, burned-in policy, the PACS peer...) are the ``settings`` rows of
    its code (``studypub.overrides``); ``studypub.clinics`` builds its effective settings from both.

    ``code`` is the normalised ``clinic_code`` (trimmed, case-folded): one spelling per clinic."""

    __tablename__ = "clinics"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    names: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # language -> display name
    phone: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(256))
    time_zone: Mapped[str | None] = mapped_column(String(64))  # None: the environment's
    languages: Mapped[list[str] | None] = mapped_column(JSON)  # the first is its pages' default; None: env
    logo_url: Mapped[str | None] = mapped_column(String(512))
    colour: Mapped[str | None] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
