"""The patient's link over real HTTP against ``studypub api``: every state of the page in Russian and English,
misses that all look alike, downloads from a local folder (Range, resume) and from S3 (moto, presigned
redirect), what counts as a download and what the audit keeps, link hygiene headers, the rate limit."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update

from studypub.db import get_engine, get_sessionmaker, migrate
from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus
from studypub.publications import claim_for_deletion, revoke, set_progress
from studypub.settings import get_settings
from tests.support.api import Seeded, past, seed_publication

HYGIENE = {
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex, nofollow",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
ACCEPT = {"ru": "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "en": "en-US,en;q=0.9"}
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
TELEGRAM_PREVIEW = "TelegramBot (like TwitterBot)"

# What each state says, in each language (the catalogue's words, checked literally).
SAYS = {
    "ready": {"ru": "Скачать исследование", "en": "Download the study"},
    "preparing": {"ru": "Исследование готовится", "en": "Your study is being prepared"},
    "failed": {"ru": "обратитесь в клинику", "en": "contact the clinic"},
    "gone": {"ru": "Срок действия ссылки истёк", "en": "This link has expired"},
    "unknown": {"ru": "Ссылка не найдена", "en": "Link not found"},
}


def assert_hygiene(r: httpx.Response, *, page: bool = True) -> None:
    for name, value in HYGIENE.items():
        assert r.headers.get(name) == value, (r.status_code, name, r.headers.get(name))
    csp = r.headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    if page:
        assert r.headers["content-type"].startswith("text/html")
        assert '<meta name="robots" content="noindex' in r.text


def html_lang(r: httpx.Response) -> str:
    found = re.search(r'<html lang="([a-z]+)">', r.text)
    assert found, r.text[:200]
    return found.group(1)


def session() -> Any:
    return get_sessionmaker(get_settings())()


def publication(task_id: str) -> PublishedStudy:
    with session() as s:
        pub = s.scalars(select(PublishedStudy).where(PublishedStudy.task_id == task_id)).one()
        s.expunge(pub)
        return pub


def audits(task_id: str, action: str) -> list[AuditEvent]:
    with session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.task_id == task_id, AuditEvent.action == action)))
        for row in rows:
            s.expunge(row)
        return rows


def secret_seed(status: str = TaskStatus.COMPLETED, **kwargs: Any) -> Seeded:
    """A publication whose identifiers are easy to look for in pages."""
    token = secrets.token_hex(4).upper()
    return seed_publication(status, patient_id=f"PIDSECRET{token}", accession=f"ACCSECRET{token}", **kwargs)


def identifiers(seeded: Seeded) -> list[str]:
    with session() as s:
        task = s.get(Task, seeded.task_id)
        assert task is not None
        values = [task.patient_id, task.accession_number, task.id, task.object_key]
    return [v for v in values if v]


@pytest.fixture
def sqlite_db() -> None:
    """The default SQLite database in the test's work dir, migrated (tests that need one backend only)."""
    migrate()


# The page in each state ---------------------------------------------------------------------------------------


def test_each_state_renders_in_russian_and_english(db_url: str, api_server: Any) -> None:
    seeded = {
        "ready": secret_seed(),
        "ready_withheld": secret_seed(service_title='<b>МРТ</b> & "коленного" сустава'),
        "queued": secret_seed(TaskStatus.QUEUED),
        "running": secret_seed(TaskStatus.RUNNING),
        "failed": secret_seed(TaskStatus.FAILED),
        "expired_not_deleted": secret_seed(save_till=past(1)),
        "expired_status": secret_seed(),
        "deleted": secret_seed(),
        "failed_and_expired": secret_seed(TaskStatus.FAILED, save_till=past(2)),
    }
    settings = get_settings()
    with session() as s:
        s.execute(
            update(PublishedStudy).where(PublishedStudy.task_id == seeded["ready_withheld"].task_id).values(withheld=2)
        )
        s.commit()
        set_progress(s, seeded["running"].task_id, 12, 40)
        assert claim_for_deletion(s, seeded["expired_status"].task_id, only_if_due=False)
        assert revoke(s, settings, seeded["deleted"].task_id, actor="test").status == TaskStatus.DELETED
    expected = {
        "ready": (200, "ready"),
        "ready_withheld": (200, "ready"),
        "queued": (200, "preparing"),
        "running": (200, "preparing"),
        "failed": (200, "failed"),
        "expired_not_deleted": (410, "gone"),
        "expired_status": (410, "gone"),
        "deleted": (410, "gone"),
        "failed_and_expired": (410, "gone"),
    }
    api = api_server()
    secrets_everywhere = [v for seed in seeded.values() for v in identifiers(seed)]
    with api.client() as c:
        for lang in ("ru", "en"):
            for name, seed in seeded.items():
                code, state = expected[name]
                r = c.get(f"/s/{seed.link_key}", headers={"Accept-Language": ACCEPT[lang]})
                assert r.status_code == code, (name, lang, r.status_code)
                assert_hygiene(r)
                assert html_lang(r) == lang
                assert SAYS[state][lang] in r.text, (name, lang)
                for value in secrets_everywhere:  # no PID, accession, task id or object key, ever
                    assert value not in r.text, (name, value)
                download_link = f'href="/s/{seed.link_key}/download"'
                assert (download_link in r.text) == (state == "ready"), name
                assert ('http-equiv="refresh" content="10"' in r.text) == (state == "preparing"), name
                if state in ("ready", "preparing", "failed"):
                    assert "МРТ суставов" in r.text or name == "ready_withheld"
                    assert ("1 февраля 2025" if lang == "ru" else "February 1, 2025") in r.text
                # the switch to the other language is there
                other = "en" if lang == "ru" else "ru"
                assert f'href="?lang={other}"' in r.text

            ready = c.get(f"/s/{seeded['ready'].link_key}", headers={"Accept-Language": ACCEPT[lang]}).text
            assert ("Как открыть исследование" if lang == "ru" else "How to open the study") in ready
            for word in ("DICOMDIR", "MicroDicom", "Weasis", "Horos", "OsiriX Lite"):
                assert word in ready
            assert ("Количество снимков" if lang == "ru" else "Images") in ready and "<dd>3</dd>" in ready
            assert ("кБ" if lang == "ru" else "kB") in ready  # the archive's size, in the locale's units
            assert 'id="withheld"' not in ready

            withheld = c.get(f"/s/{seeded['ready_withheld'].link_key}", headers={"Accept-Language": ACCEPT[lang]})
            assert 'id="withheld"' in withheld.text
            assert ("2 снимка не включены" if lang == "ru" else "2 images were not included") in withheld.text
            assert "&lt;b&gt;МРТ&lt;/b&gt; &amp; &#34;коленного&#34; сустава" in withheld.text  # escaped
            assert "<b>МРТ" not in withheld.text

            running = c.get(f"/s/{seeded['running'].link_key}", headers={"Accept-Language": ACCEPT[lang]})
            assert ("Получено снимков: 12 из 40" if lang == "ru" else "Images received: 12 of 40") in running.text

        # HEAD answers like GET, without a body
        head = c.head(f"/s/{seeded['ready'].link_key}")
        assert head.status_code == 200 and head.content == b""
        assert_hygiene(head, page=False)

        # The link pages are not in the API's schema; the stylesheet is served, never sniffed
        paths = c.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith(("/s", "/static"))]
        css_url = re.search(r'href="(/static/link\.css[^"]*)"', ready)
        assert css_url
        css = c.get(css_url.group(1))
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["x-content-type-options"] == "nosniff"

    # Page views are audited (coarse client info, key prefix), never counted as downloads
    ready_seed = seeded["ready"]
    assert publication(ready_seed.task_id).downloads == 0
    views = audits(ready_seed.task_id, "link.viewed")
    assert len(views) == 4  # two GETs per language; the HEAD is not a view
    for view in views:
        assert view.actor == "link" and view.clinic_code == "f_khimki"
        assert view.details["key"] == ready_seed.link_key[:6]
        assert view.details["net"] == "127.0.0.0/24"
        assert view.details["ua"] == "bot"  # httpx's own user agent: a script
        assert view.details["state"] == "ready"
        assert ready_seed.link_key not in json.dumps(view.details)
    assert [v.details["state"] for v in audits(seeded["deleted"].task_id, "link.viewed")] == ["gone", "gone"]


def test_preview_bots_and_phones_are_told_apart_in_the_audit(sqlite_db: None, api_server: Any) -> None:
    seed = seed_publication()
    api = api_server(STUDYPUB_API__TRUSTED_PROXIES="127.0.0.1")  # as behind a local nginx
    with api.client() as c:
        assert c.get(f"/s/{seed.link_key}", headers={"User-Agent": TELEGRAM_PREVIEW}).status_code == 200
        r = c.get(f"/s/{seed.link_key}", headers={"User-Agent": IPHONE, "X-Forwarded-For": "203.0.113.77"})
        assert r.status_code == 200
        assert c.get(f"/s/{seed.link_key}", headers={"X-Forwarded-For": "2001:db8:1:2::5"}).status_code == 200
    views = sorted(audits(seed.task_id, "link.viewed"), key=lambda e: e.id)
    assert [(v.details["ua"], v.details["net"]) for v in views] == [
        ("bot", "127.0.0.0/24"),
        ("mobile", "203.0.113.0/24"),  # the proxy's X-Forwarded-For (127.0.0.1 is configured), only its /24
        ("bot", "2001:db8:1::/48"),  # httpx's own user agent: a script
    ]
    assert publication(seed.task_id).downloads == 0 and publication(seed.task_id).last_download_at is None


# Misses -------------------------------------------------------------------------------------------------------


def test_unknown_keys_of_any_shape_get_the_same_404(db_url: str, api_server: Any) -> None:
    real = seed_publication()
    shapes = [
        secrets.token_urlsafe(16),  # the shape of a real key
        real.link_key[:-1] + ("A" if real.link_key[-1] != "A" else "B"),  # one character off a real one
        "A" * 300,  # too long
        "x",
        "-",
        "%20",
        "..%2F..%2Fetc",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "%D0%BA%D0%BB%D1%8E%D1%87",  # Cyrillic
        "%00abc",
        "a%27%20OR%201=1--",
        "key/with/slashes",
        f"{secrets.token_urlsafe(16)}/",
    ]
    api = api_server()
    with api.client() as c:
        for lang in ("ru", "en"):
            bodies = set()
            paths = [f"/s/{shape}" for shape in shapes] + ["/s/", "/s"]
            paths += [f"/s/{shape}/download" for shape in shapes[:4]]
            for path in paths:
                r = c.get(path, headers={"Accept-Language": ACCEPT[lang]})
                assert r.status_code == 404, (path, r.status_code)
                assert_hygiene(r)
                assert SAYS["unknown"][lang] in r.text
                bodies.add(r.text)
            assert len(bodies) == 1, f"404 pages differ in {lang}"  # nothing of the key is echoed
        # a trailing slash on a real key still finds it
        assert c.get(f"/s/{real.link_key}/").status_code == 200


def test_every_lookup_asks_the_database_once_whatever_the_key(sqlite_db: None) -> None:
    from studypub.links import LinkState, find_link

    real = seed_publication()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        with session() as s:
            for key in ["", "x", "A" * 300, "ключ", "a\x00b", "a/b", "' OR 1=1 --", secrets.token_urlsafe(16)]:
                statements.clear()
                assert find_link(s, key).state is LinkState.UNKNOWN
                assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT"), key
                miss_sql = statements[0]
            statements.clear()
            assert find_link(s, real.link_key).state is LinkState.READY
            assert statements == [miss_sql]  # the same query for a hit and for every miss
    finally:
        event.remove(engine, "before_cursor_execute", count)


# Language -----------------------------------------------------------------------------------------------------


def test_language_follows_the_browser_and_the_switch_is_remembered(sqlite_db: None, api_server: Any) -> None:
    seed = seed_publication()
    page = f"/s/{seed.link_key}"
    api = api_server()
    with api.client() as c:
        for header, lang in [
            ("ru-RU", "ru"),
            ("en-GB,en;q=0.9", "en"),
            ("de-DE,de;q=0.9,en;q=0.5", "de"),
            ("it-IT,it;q=0.9,fr;q=0.5", "fr"),
            ("es-419", "es"),
            ("it-IT", "ru"),  # nothing we speak: the clinic's language
            ("en;q=0.3, ru;q=0.8", "ru"),
            ("ru;q=0, en", "en"),
            ("", "ru"),
            ("*", "ru"),
        ]:
            assert html_lang(c.get(page, headers={"Accept-Language": header})) == lang, header

    with api.client(headers={"Accept-Language": "ru-RU"}) as c:
        r = c.get(page, params={"lang": "en"})
        assert html_lang(r) == "en" and SAYS["ready"]["en"] in r.text
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("lang=en;") and "httponly" in cookie and "samesite=lax" in cookie
        assert html_lang(c.get(page)) == "en"  # remembered, the browser's Russian notwithstanding
        assert html_lang(c.get(f"{page}/nope")) == "en"  # on the 404 page too
        assert html_lang(c.get(page, params={"lang": "zz"})) == "en"  # an unknown switch changes nothing
        r = c.get(page, params={"lang": "ru"})
        assert html_lang(r) == "ru" and r.headers["set-cookie"].startswith("lang=ru;")
        r = c.get(page)
        assert html_lang(r) == "ru" and "set-cookie" not in r.headers


# Downloads ----------------------------------------------------------------------------------------------------


def test_local_download_supports_range_and_counts_only_whole_downloads(db_url: str, api_server: Any) -> None:
    seed = seed_publication(archive=None)
    data = seed.archive
    size = len(data)
    assert size > 40000
    url = f"/s/{seed.link_key}/download"
    api = api_server()
    with api.client() as c:
        full = c.get(url, headers={"User-Agent": IPHONE})
        assert full.status_code == 200 and full.content == data
        assert_hygiene(full, page=False)
        assert full.headers["content-type"] == "application/zip"
        assert full.headers["content-disposition"] == 'attachment; filename="study-2025-02-01.zip"'
        assert full.headers["accept-ranges"] == "bytes"

        part = c.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
        assert_hygiene(part, page=False)

        resumed = c.get(url, headers={"Range": "bytes=30000-"})  # a phone resuming after a dropped connection
        assert resumed.status_code == 206 and data[:30000] + resumed.content == data
        assert resumed.headers["content-range"] == f"bytes 30000-{size - 1}/{size}"

        first = c.get(url, headers={"Range": "bytes=0-99"})  # a download manager's first chunk: counts
        assert first.status_code == 206 and first.content == data[:100]

        head = c.head(url)
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)
        assert_hygiene(head, page=False)

        unsatisfiable = c.get(url, headers={"Range": f"bytes={size + 10}-"})
        assert unsatisfiable.status_code == 416
        assert_hygiene(unsatisfiable, page=False)

    pub = publication(seed.task_id)
    assert pub.downloads == 2 and pub.last_download_at is not None  # the full GET and the Range from byte 0
    downloads = sorted(audits(seed.task_id, "link.downloaded"), key=lambda e: e.id)
    assert len(downloads) == 2
    assert downloads[0].details == {"key": seed.link_key[:6], "net": "127.0.0.0/24", "ua": "mobile", "via": "file"}
    assert all(seed.link_key not in json.dumps(e.details) for e in downloads)
    assert audits(seed.task_id, "link.viewed") == []  # downloads are not page views


def test_downloads_of_links_that_are_not_ready(db_url: str, api_server: Any) -> None:
    queued = seed_publication(TaskStatus.QUEUED)
    failed = seed_publication(TaskStatus.FAILED)
    expired = seed_publication(save_till=past(1))
    deleted = seed_publication()
    undated = seed_publication()
    with session() as s:
        revoke(s, get_settings(), deleted.task_id, actor="test")
        s.execute(update(Task).where(Task.id == undated.task_id).values(study_date=None))
        s.commit()
    api = api_server()
    with api.client() as c:
        for seed in (queued, failed):
            r = c.get(f"/s/{seed.link_key}/download")
            assert r.status_code == 303 and r.headers["location"] == f"/s/{seed.link_key}"
            assert_hygiene(r, page=False)
        for seed in (expired, deleted):
            for method in ("GET", "HEAD"):
                r = c.request(method, f"/s/{seed.link_key}/download", headers={"Accept-Language": "en"})
                assert r.status_code == 410
                assert_hygiene(r, page=method == "GET")
        r = c.get(f"/s/{undated.link_key}/download")
        assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="study.zip"'
    assert publication(expired.task_id).downloads == 0 and publication(deleted.task_id).downloads == 0


def test_s3_download_redirects_to_a_short_lived_presigned_url(
    api_server: Any, s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "STUDYPUB_STORAGE__URL": f"s3://{s3_bucket}/published",
        "STUDYPUB_STORAGE__ENDPOINT_URL": s3_server.endpoint_url,
        "STUDYPUB_STORAGE__ACCESS_KEY_ID": "testing",
        "STUDYPUB_STORAGE__SECRET_ACCESS_KEY": "testing-secret",
        "STUDYPUB_STORAGE__REGION": "us-east-1",
        "STUDYPUB_LINKS__PRESIGN_SECONDS": "120",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    migrate()
    seed = seed_publication()
    gone = seed_publication()
    with session() as s:
        revoke(s, get_settings(), gone.task_id, actor="test")
    api = api_server()
    with api.client() as c:
        r = c.get(f"/s/{seed.link_key}/download", headers={"User-Agent": IPHONE})
        assert r.status_code == 302
        assert_hygiene(r, page=False)
        location = r.headers["location"]
        assert location.startswith(f"{s3_server.endpoint_url}/{s3_bucket}/published/archives/")
        query = httpx.URL(location).params
        assert query["X-Amz-Expires"] == "120"
        assert query["response-content-disposition"] == 'attachment; filename="study-2025-02-01.zip"'
        assert query["response-cache-control"] == "no-store"
        assert seed.link_key not in location

        fetched = httpx.get(location, timeout=30)  # what the phone does next
        assert fetched.status_code == 200 and fetched.content == seed.archive
        assert "study-2025-02-01.zip" in fetched.headers["content-disposition"]

        head = c.head(f"/s/{seed.link_key}/download")
        assert head.status_code == 302  # a HEAD is not a download

        r = c.get(f"/s/{gone.link_key}/download")
        assert r.status_code == 410 and "location" not in r.headers
        assert_hygiene(r)

    pub = publication(seed.task_id)
    assert pub.downloads == 1 and pub.last_download_at is not None
    [event_] = audits(seed.task_id, "link.downloaded")
    assert event_.details == {"key": seed.link_key[:6], "net": "127.0.0.0/24", "ua": "mobile", "via": "redirect"}


# Rate limit ---------------------------------------------------------------------------------------------------


def test_rate_limit_per_client_address(sqlite_db: None, api_server: Any) -> None:
    seed = seed_publication()
    api = api_server(STUDYPUB_LINKS__RATE_LIMIT="5/minute", STUDYPUB_API__TRUSTED_PROXIES="127.0.0.1")
    a = {"X-Forwarded-For": "198.51.100.7", "Accept-Language": "en"}
    b = {"X-Forwarded-For": "198.51.100.8"}
    with api.client() as c:
        page, download = f"/s/{seed.link_key}", f"/s/{seed.link_key}/download"
        for path in (page, download, "/s/unknown-key", page, page):  # 5 allowed
            assert c.get(path, headers=a).status_code in (200, 404)
        for path in (f"/s/{seed.link_key}", f"/s/{seed.link_key}/download", "/s/whatever"):
            r = c.get(path, headers=a)
            assert r.status_code == 429, path
            assert_hygiene(r)
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert "Too many requests" in r.text
        assert c.get(f"/s/{seed.link_key}", headers=b).status_code == 200  # another address is not limited
        assert c.get("/health", headers=a).status_code == 200  # only the link routes are limited
    assert publication(seed.task_id).downloads == 1  # the refused download did not count


def test_no_proxy_is_trusted_unless_configured(sqlite_db: None, api_server: Any) -> None:
    """By default X-Forwarded-For is ignored: a client cannot choose its address to get past the rate limit
    (every request here comes from 127.0.0.1, whatever it claims), and the audit keeps the real address."""
    seed = seed_publication()
    api = api_server(STUDYPUB_LINKS__RATE_LIMIT="3/minute")  # STUDYPUB_API__TRUSTED_PROXIES unset: the default
    with api.client() as c:
        for n in range(3):
            spoofed = {"X-Forwarded-For": f"198.51.100.{n + 1}", "X-Forwarded-Proto": "https"}
            assert c.get(f"/s/{seed.link_key}", headers=spoofed).status_code == 200
        assert c.get(f"/s/{seed.link_key}", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    views = audits(seed.task_id, "link.viewed")
    assert [v.details["net"] for v in views] == ["127.0.0.0/24"] * 3


# Failures -----------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_database_outage_is_a_503_page_not_json(sqlite_db: None) -> None:
    """In process (a dead database cannot be arranged for a running server): the page keeps its look and
    headers, says to retry, and shows no error text."""
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from api.app import create_app

    app = create_app(get_settings())
    dead = create_engine("postgresql+psycopg2://nobody@127.0.0.1:9/nothing", connect_args={"connect_timeout": 2})
    app.state.sessions = sessionmaker(dead)  # no lifespan: nothing else starts
    client = TestClient(app)
    for path in (f"/s/{secrets.token_urlsafe(16)}", f"/s/{secrets.token_urlsafe(16)}/download"):
        r = client.get(path, headers={"Accept-Language": "en"})
        assert r.status_code == 503 and r.headers["retry-after"] == "60"
        assert_hygiene(r)
        assert "Temporarily unavailable" in r.text and "OperationalError" not in r.text
