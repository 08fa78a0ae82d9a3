"""PostgreSQL row-level security on the clinics' tables: the second wall behind the ORM's filter
(``studypub.tenancy``). A row is seen or written in a clinic's transaction (role ``studypub_tenant``) only when
its clinic is in the transaction's ``studypub.clinics`` setting; rows of a task (steps, viewer index) follow
their task; a superadmin's user row is no clinic's. The owner (the service itself, migrations, backups) is
not limited. SQLite has no such thing: nothing changes there.

Revision ID: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# unset: NULL, no row. Split on the unit separator (studypub.tenancy.CLINICS_SEPARATOR; no code holds it).
IN_SCOPE = "string_to_array(current_setting('studypub.clinics', true), chr(31))"
POLICIES = {
    "tasks": f"clinic_code = ANY ({IN_SCOPE})",
    "published_studies": f"clinic_code = ANY ({IN_SCOPE})",
    "manual_requests": f"clinic_code = ANY ({IN_SCOPE})",
    "audit_events": f"clinic_code = ANY ({IN_SCOPE})",
    "outbox": f"clinic_code = ANY ({IN_SCOPE})",
    "api_keys": f"clinic_code = ANY ({IN_SCOPE})",
    "settings": f"clinic_code = ANY ({IN_SCOPE})",
    "users": f"clinic_code = ANY ({IN_SCOPE}) AND role <> 'superadmin'",
    "clinics": f"code = ANY ({IN_SCOPE})",
    "task_steps": "task_id IN (SELECT id FROM tasks)",  # tasks' own policy applies inside
    "viewer_indexes": "task_id IN (SELECT id FROM tasks)",
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from studypub.tenancy import ensure_tenant_role

    ensure_tenant_role(bind)
    for table, condition in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY clinic_rows ON {table} USING ({condition}) WITH CHECK ({condition})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in POLICIES:
        op.execute(f"DROP POLICY IF EXISTS clinic_rows ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
