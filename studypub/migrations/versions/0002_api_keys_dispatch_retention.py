"""api keys, dispatch, retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 00:18:26.565227
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("clinic_code", sa.String(length=64), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_hint", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dispatch_pending", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch_op.add_column(sa.Column("requeues", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("identifiers_erased_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_tasks_dispatch_pending",
            ["created_at"],
            unique=False,
            sqlite_where=sa.text("dispatch_pending"),
            postgresql_where=sa.text("dispatch_pending"),
        )
        batch_op.create_index("ix_tasks_save_till", ["save_till"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_save_till")
        batch_op.drop_index(
            "ix_tasks_dispatch_pending",
            sqlite_where=sa.text("dispatch_pending"),
            postgresql_where=sa.text("dispatch_pending"),
        )
        batch_op.drop_column("identifiers_erased_at")
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("requeues")
        batch_op.drop_column("dispatch_pending")

    op.drop_table("api_keys")
