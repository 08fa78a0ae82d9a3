"""Alembic environment: uses the engine handed over by studypub.db.migrate (or the settings' URL)."""

from __future__ import annotations

from alembic import context

from studypub.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from studypub.db import get_engine

        engine = get_engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if engine.dialect.name == "postgresql":
                # Several replicas may start at once: one migrates, the others wait for it. The lock is
                # the transaction's own, released on commit or rollback whatever happens.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7236512)")
            context.run_migrations()


run_migrations_online()
