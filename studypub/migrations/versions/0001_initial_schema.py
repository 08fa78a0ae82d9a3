"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 22:20:37.014814
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_clinic_code"), ["clinic_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_task_id"), ["task_id"], unique=False)

    op.create_table(
        "settings",
        sa.Column("clinic_code", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("clinic_code", "key", name=op.f("pk_settings")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("emk_record_id", sa.String(length=64), nullable=True),
        sa.Column("service_code", sa.String(length=64), nullable=True),
        sa.Column("service_title", sa.String(length=512), nullable=True),
        sa.Column("study_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("save_till", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("progress_received", sa.Integer(), nullable=True),
        sa.Column("progress_expected", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("link_key", sa.String(length=64), nullable=False),
        sa.Column("uid_salt", sa.String(length=64), nullable=False),
        sa.Column("object_key", sa.String(length=256), nullable=True),
        sa.Column("profile_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("link_key", name=op.f("uq_tasks_link_key")),
        sa.UniqueConstraint("object_key", name=op.f("uq_tasks_object_key")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_accession", ["accession_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_clinic_code"), ["clinic_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_tasks_patient", ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_status"), ["status"], unique=False)
        batch_op.create_index(
            "uq_tasks_active_study",
            ["clinic_code", "patient_id", "accession_number"],
            unique=True,
            sqlite_where=sa.text("status NOT IN ('EXPIRED', 'DELETED')"),
            postgresql_where=sa.text("status NOT IN ('EXPIRED', 'DELETED')"),
        )

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_clinic_code"), ["clinic_code"], unique=False)

    op.create_table(
        "manual_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_manual_requests_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_manual_requests_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manual_requests")),
    )
    with op.batch_alter_table("manual_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_manual_requests_clinic_code"), ["clinic_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_manual_requests_task_id"), ["task_id"], unique=False)

    op.create_table(
        "published_studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=False),
        sa.Column("storage_url", sa.String(length=512), nullable=False),
        sa.Column("object_key", sa.String(length=256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("withheld", sa.Integer(), nullable=False),
        sa.Column("series", sa.Integer(), nullable=False),
        sa.Column("modalities", sa.String(length=64), nullable=True),
        sa.Column("profile_version", sa.String(length=64), nullable=False),
        sa.Column("upload_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("downloads", sa.Integer(), nullable=False),
        sa.Column("last_download_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_published_studies_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_published_studies")),
        sa.UniqueConstraint("object_key", name=op.f("uq_published_studies_object_key")),
        sa.UniqueConstraint("task_id", name=op.f("uq_published_studies_task_id")),
    )
    with op.batch_alter_table("published_studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_published_studies_clinic_code"), ["clinic_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_published_studies_upload_date"), ["upload_date"], unique=False)

    op.create_table(
        "task_steps",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_steps_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "step", name=op.f("pk_task_steps")),
    )


def downgrade() -> None:
    op.drop_table("task_steps")
    with op.batch_alter_table("published_studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_published_studies_upload_date"))
        batch_op.drop_index(batch_op.f("ix_published_studies_clinic_code"))

    op.drop_table("published_studies")
    with op.batch_alter_table("manual_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_manual_requests_task_id"))
        batch_op.drop_index(batch_op.f("ix_manual_requests_clinic_code"))

    op.drop_table("manual_requests")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_clinic_code"))

    op.drop_table("users")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_tasks_active_study",
            sqlite_where=sa.text("status NOT IN ('EXPIRED', 'DELETED')"),
            postgresql_where=sa.text("status NOT IN ('EXPIRED', 'DELETED')"),
        )
        batch_op.drop_index(batch_op.f("ix_tasks_status"))
        batch_op.drop_index("ix_tasks_patient")
        batch_op.drop_index(batch_op.f("ix_tasks_created_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_clinic_code"))
        batch_op.drop_index("ix_tasks_accession")

    op.drop_table("tasks")
    op.drop_table("settings")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_task_id"))
        batch_op.drop_index(batch_op.f("ix_audit_events_clinic_code"))
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))
        batch_op.drop_index(batch_op.f("ix_audit_events_action"))

    op.drop_table("audit_events")
