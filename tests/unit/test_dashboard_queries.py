"""The published list's query on both databases: a count that stops at the cap, pages past it, the order."""

from __future__ import annotations

import pytest

from dashboard import queries
from studypub.db import get_sessionmaker
from tests.support.api import seed_publication


def test_count_is_capped_and_pages_go_on(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = [seed_publication(archive=b"x" * (100 + i)) for i in range(7)]
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    with get_sessionmaker()() as session:
        first = queries.published_page(session, queries.PublishedFilter(sort="size", descending=False, page_size=2))
        assert first.capped and first.total == 5 and first.pages == 3
        assert [r["size_bytes"] for r in first.rows] == [100, 101]
        beyond = queries.published_page(
            session, queries.PublishedFilter(sort="size", descending=False, page_size=2, page=4)
        )
        assert beyond.page == 4 and [r["size_bytes"] for r in beyond.rows] == [106]
    monkeypatch.setattr(queries, "COUNT_CAP", 100)
    with get_sessionmaker()() as session:
        exact = queries.published_page(session, queries.PublishedFilter(page_size=2, page=99))
        assert not exact.capped and exact.total == 7 and exact.page == 4 and len(exact.rows) == 1
        one = queries.published_page(session, queries.PublishedFilter(pid=None, acsn=None, page_size=10))
        assert {r["id"] for r in one.rows} == {s.task_id for s in seeded}
