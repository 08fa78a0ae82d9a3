"""viewer indexes: where each anonymised instance lies inside its archive, for the in-browser viewer

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "viewer_indexes",
        sa.Column("object_key", sa.String(256), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_viewer_indexes_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("object_key", name=op.f("pk_viewer_indexes")),
    )
    op.create_index(op.f("ix_viewer_indexes_task_id"), "viewer_indexes", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_viewer_indexes_task_id", table_name="viewer_indexes")
    op.drop_table("viewer_indexes")
