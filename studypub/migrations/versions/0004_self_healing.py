"""self-healing: what a publication waits for, its resumes and automatic retries; slot leases per PACS

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 21:40:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS: list[sa.Column[Any]] = [
    sa.Column("waiting_for", sa.String(16), nullable=True),
    sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resumes", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for column in COLUMNS:
            batch.add_column(column.copy())
    op.create_index(
        "ix_tasks_next_attempt_at",
        "tasks",
        ["next_attempt_at"],
        sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
        postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
    )
    op.create_table(
        "slot_leases",
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pool", "slot", name="pk_slot_leases"),
    )


def downgrade() -> None:
    op.drop_table("slot_leases")
    op.drop_index("ix_tasks_next_attempt_at", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
