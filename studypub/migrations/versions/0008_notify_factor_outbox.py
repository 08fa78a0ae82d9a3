"""reaching the patient: contact and second factor on a publication; the outbox of messages

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS: list[sa.Column[Any]] = [
    sa.Column("patient_email", sa.String(254), nullable=True),
    sa.Column("patient_phone", sa.String(16), nullable=True),
    sa.Column("notify_language", sa.String(2), nullable=True),
    sa.Column("second_factor", sa.String(16), nullable=True),
    sa.Column("factor_hash", sa.String(256), nullable=True),
    sa.Column("factor_failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("factor_locked_at", sa.DateTime(timezone=True), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for column in COLUMNS:
            batch.add_column(column.copy())
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("clinic_code", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider", sa.String(16), nullable=True),
        sa.Column("provider_id", sa.String(128), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sending_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_outbox_task_id_tasks", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_task_id", "outbox", ["task_id"])
    op.create_index("ix_outbox_clinic_code", "outbox", ["clinic_code"])
    op.create_index("ix_outbox_status", "outbox", ["status"])
    op.create_index("ix_outbox_provider_id", "outbox", ["provider_id"])
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_at"])
    op.create_index("uq_outbox_event", "outbox", ["task_id", "channel", "kind", "event"], unique=True)


def downgrade() -> None:
    op.drop_table("outbox")
    with op.batch_alter_table("tasks") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
