"""indexes of the dashboard's published list: each sortable column with the id (a stable page order)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 03:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REPLACED = {  # name: (table, old columns, new columns)
    "ix_tasks_save_till": ("tasks", ["save_till"], ["save_till", "id"]),
    "ix_tasks_patient": ("tasks", ["patient_id"], ["patient_id", "id"]),
    "ix_published_studies_upload_date": ("published_studies", ["upload_date"], ["upload_date", "id"]),
}
ADDED = {
    "ix_tasks_study_date": ("tasks", ["study_date", "id"]),
    "ix_tasks_emk_record_id": ("tasks", ["emk_record_id", "id"]),
    "ix_published_studies_size_bytes": ("published_studies", ["size_bytes", "id"]),
    "ix_published_studies_downloads": ("published_studies", ["downloads", "id"]),
    "ix_published_studies_last_download_at": ("published_studies", ["last_download_at", "id"]),
}


def upgrade() -> None:
    for name, (table, _old, new) in REPLACED.items():
        op.drop_index(name, table_name=table)
        op.create_index(name, table, new)
    for name, (table, columns) in ADDED.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _columns) in ADDED.items():
        op.drop_index(name, table_name=table)
    for name, (table, old, _new) in REPLACED.items():
        op.drop_index(name, table_name=table)
        op.create_index(name, table, old)
