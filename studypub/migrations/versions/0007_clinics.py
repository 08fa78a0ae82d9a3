"""clinics: one row per clinic code already in the database (one spelling: trimmed, case-folded), MIS keys
bound to a list of clinics

Every clinic code in the tables is normalised; spellings that differ only in case become one clinic, with
their publications. When the same study is live under two spellings, the one that is further along (published
before queued; then the oldest) stays live and the other is marked EXPIRED (retention removes its archive)
with a reason saying so. The clinics made here carry no settings of their own: they run on the environment's
PACS and settings, as before.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Table names of this file, never input: the statements built from them below are safe.
OWNED = ("tasks", "published_studies", "manual_requests", "users", "api_keys", "settings", "audit_events")
LIVE = ("QUEUED", "RUNNING", "COMPLETED", "FAILED")
RANK = {"COMPLETED": 0, "RUNNING": 1, "QUEUED": 2, "FAILED": 3}
MERGED = "merged: the same study was requested under another spelling of the clinic code (%(task)s)"


def normalise(code: str | None) -> str | None:
    return None if code is None else code.strip().casefold()


def _now(conn: sa.Connection) -> datetime:
    now = datetime.now(UTC)
    return now.replace(tzinfo=None) if conn.dialect.name == "sqlite" else now  # as the models store it


def _merge_live_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT id, clinic_code, patient_id, accession_number, status, created_at FROM tasks "
            "WHERE status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED')"
        )
    ).all()
    groups: dict[tuple[str | None, str | None, str | None], list[sa.Row]] = {}
    for row in rows:
        groups.setdefault((normalise(row.clinic_code), row.patient_id, row.accession_number), []).append(row)
    now = _now(conn)
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: (RANK.get(r.status, 9), str(r.created_at), r.id))
        keep = members[0]
        for loser in members[1:]:
            conn.execute(
                sa.text(
                    "UPDATE tasks SET status = 'EXPIRED', dispatch_pending = :f, reason = :reason, "
                    "updated_at = :now WHERE id = :id"
                ),
                {"f": False, "reason": MERGED % {"task": keep.id}, "now": now, "id": loser.id},
            )


def _merge_settings(conn: sa.Connection) -> None:
    """Two spellings' saved settings: the one changed last wins for each key."""
    rows = conn.execute(sa.text("SELECT clinic_code, key, updated_at FROM settings")).all()
    best: dict[tuple[str | None, str], sa.Row] = {}
    for row in rows:
        k = (normalise(row.clinic_code), row.key)
        if k not in best or str(row.updated_at) > str(best[k].updated_at):
            best[k] = row
    for row in rows:
        if best[(normalise(row.clinic_code), row.key)] is not row:
            conn.execute(
                sa.text("DELETE FROM settings WHERE clinic_code = :c AND key = :k"),
                {"c": row.clinic_code, "k": row.key},
            )


def upgrade() -> None:
    op.create_table(
        "clinics",
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.Column("phone", sa.String(64), nullable=True),
        sa.Column("address", sa.String(256), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=True),
        sa.Column("languages", sa.JSON(), nullable=True),
        sa.Column("logo_url", sa.String(512), nullable=True),
        sa.Column("colour", sa.String(16), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_clinics"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("clinic_codes", sa.JSON(), nullable=True))
        batch.create_index("ix_api_keys_clinic_code", ["clinic_code"])

    conn = op.get_bind()
    _merge_live_duplicates(conn)
    _merge_settings(conn)
    spellings: dict[str, Counter[str]] = {}
    for table in OWNED:
        every = f"SELECT clinic_code FROM {table} WHERE clinic_code IS NOT NULL"  # noqa: S608
        for (code,) in conn.execute(sa.text(every)):
            spellings.setdefault(normalise(code) or "", Counter())[code.strip()] += 1
        distinct = f"SELECT DISTINCT clinic_code FROM {table} WHERE clinic_code IS NOT NULL"  # noqa: S608
        for (code,) in conn.execute(sa.text(distinct)):
            if normalise(code) != code:
                conn.execute(
                    sa.text(f"UPDATE {table} SET clinic_code = :new WHERE clinic_code = :old"),  # noqa: S608
                    {"new": normalise(code), "old": code},
                )
    keys = sa.table("api_keys", sa.column("id", sa.Integer), sa.column("clinic_codes", sa.JSON))
    restricted = sa.text("SELECT id, clinic_code FROM api_keys WHERE clinic_code IS NOT NULL")
    for id_, code in conn.execute(restricted).all():
        conn.execute(sa.update(keys).where(keys.c.id == id_).values(clinic_codes=[code]))
    clinics = sa.table(
        "clinics",
        sa.column("code", sa.String),
        sa.column("names", sa.JSON),
        sa.column("disabled", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = _now(conn)
    rows = [
        {
            "code": code,
            "names": {"en": counts.most_common(1)[0][0]},
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        for code, counts in sorted(spellings.items())
        if code and len(code) <= 64 and not any(ord(c) < 32 for c in code)
    ]
    if rows:
        op.bulk_insert(clinics, rows)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_clinic_code")
        batch.drop_column("clinic_codes")
    op.drop_table("clinics")
