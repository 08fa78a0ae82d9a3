"""An empty application database on either backend, for the fixtures that run a test on SQLite and on
PostgreSQL (``db_url``) or build an old schema by hand (the clinics migration test)."""

from __future__ import annotations

from pathlib import Path

import pytest


def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filename: str = "app.db"
) -> str:
    """The URL of an empty database for ``request.param`` ("sqlite" or "postgresql"), set as the service's."""
    from sqlalchemy import create_engine, text

    from studypub.db import _engine_for
    from studypub.settings import get_settings

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / filename}"
    else:
        url = request.getfixturevalue("pg_database")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    _engine_for.cache_clear()
    monkeypatch.setenv("STUDYPUB_DATABASE__URL", url)
    get_settings.cache_clear()
    return url
