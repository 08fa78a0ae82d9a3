"""The patient's link in the app's database: look a key up, decide what its page shows, record views and
downloads in the audit trail, count downloads.

What a link page may show is carried by :class:`Link` and nothing else: the service title and study date the
MIS sent, counts and sizes, the storage period. The PID, accession and EMK id are never loaded.

A lookup always asks the database, whatever the key looks like (a malformed key is replaced by one that
cannot exist), so every miss costs the same. Audit details are coarse: the client's network (IPv4 /24,
IPv6 /48), a user-agent class and the key's first characters, never the whole key.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus, utcnow
from studypub.settings import Settings

KEY_PREFIX_CHARS = 6
# Keys are secrets.token_urlsafe(16..32): 22..43 characters of the URL-safe alphabet. A generous shape check;
# anything else is looked up as a key that cannot exist ("!" is not in the alphabet).
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_IMPOSSIBLE_KEY = "!" * 22


class LinkState(enum.StrEnum):
    READY = "ready"
    PREPARING = "preparing"
    FAILED = "failed"
    GONE = "gone"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Link:
    """What the link's page and download need (no identifiers)."""

    state: LinkState
    key_prefix: str
    task_id: str | None = None
    clinic_code: str | None = None
    service_title: str | None = None
    study_date: datetime | None = None
    save_till: datetime | None = None
    progress_received: int | None = None
    progress_expected: int | None = None
    instances: int | None = None
    withheld: int = 0
    series: int | None = None
    modalities: str | None = None
    size_bytes: int | None = None
    object_key: str | None = None

    @property
    def exists(self) -> bool:
        return self.state is not LinkState.UNKNOWN


def key_shaped(key: str) -> bool:
    """Whether ``key`` can be a link key at all (anything else is never sent to the database)."""
    return _KEY_SHAPE.fullmatch(key) is not None


def key_prefix(key: str) -> str:
    return key[:KEY_PREFIX_CHARS] if _KEY_SHAPE.fullmatch(key) else "invalid"


def decide_state(
    status: str, save_till: datetime, *, published: bool, deleted: bool, now: datetime | None = None
) -> LinkState:
    """Past its storage period (deleted or not yet), expired or deleted: gone. Otherwise by status; a
    COMPLETED task without its publication row is treated as still being prepared (never offers a download)."""
    now = now or utcnow()
    if status in (TaskStatus.EXPIRED, TaskStatus.DELETED) or deleted or save_till <= now:
        return LinkState.GONE
    if status == TaskStatus.FAILED:
        return LinkState.FAILED
    if status == TaskStatus.COMPLETED:
        return LinkState.READY if published else LinkState.PREPARING
    return LinkState.PREPARING  # QUEUED, RUNNING


def find_link(session: Session, key: str, *, now: datetime | None = None) -> Link:
    """The link with this key and its state (``UNKNOWN`` when there is none). Always one query."""
    candidate = key if _KEY_SHAPE.fullmatch(key) else _IMPOSSIBLE_KEY
    row = session.execute(
        select(
            Task.id,
            Task.clinic_code,
            Task.status,
            Task.save_till,
            Task.deleted_at,
            Task.service_title,
            Task.study_date,
            Task.progress_received,
            Task.progress_expected,
            PublishedStudy.id.label("pub_id"),
            PublishedStudy.instances,
            PublishedStudy.withheld,
            PublishedStudy.series,
            PublishedStudy.modalities,
            PublishedStudy.size_bytes,
            PublishedStudy.object_key,
            PublishedStudy.deleted_at.label("pub_deleted_at"),
        )
        .outerjoin(PublishedStudy, PublishedStudy.task_id == Task.id)
        .where(Task.link_key == candidate)
    ).first()
    prefix = key_prefix(key)
    if row is None:
        return Link(state=LinkState.UNKNOWN, key_prefix=prefix)
    state = decide_state(
        row.status,
        row.save_till,
        published=row.pub_id is not None,
        deleted=row.deleted_at is not None or row.pub_deleted_at is not None,
        now=now,
    )
    return Link(
        state=state,
        key_prefix=prefix,
        task_id=row.id,
        clinic_code=row.clinic_code,
        service_title=row.service_title,
        study_date=row.study_date,
        save_till=row.save_till,
        progress_received=row.progress_received,
        progress_expected=row.progress_expected,
        instances=row.instances,
        withheld=row.withheld or 0,
        series=row.series,
        modalities=row.modalities,
        size_bytes=row.size_bytes,
        object_key=row.object_key if state is LinkState.READY else None,
    )


def display_zone(settings: Settings) -> tzinfo:
    """The time zone dates are shown in on link pages and in file names.

    The MIS sends dates with their offset, but they are stored in UTC; a study at 00:30 in Moscow is on the
    previous day in UTC. ``links.time_zone`` (an IANA name, checked by the settings) says where the clinic is.
    """
    return ZoneInfo(settings.links.time_zone)


def download_filename(study_date: datetime | None, tz: tzinfo) -> str:
    """``study-2025-02-01.zip`` (no identifiers), or ``study.zip`` without a date."""
    if study_date is None:
        return "study.zip"
    return f"study-{study_date.astimezone(tz).date().isoformat()}.zip"


# Client information ------------------------------------------------------------------------------------------

_BOT = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|preview|facebookexternalhit|whatsapp|vkshare|skypeuripreview|embedly|"
    r"viber|headless|curl/|wget/|python-|httpx|okhttp|go-http-client|java/|libwww|scrapy",
    re.IGNORECASE,
)
_MOBILE = re.compile(r"mobi|android|iphone|ipad|ipod|windows phone|opera mini|kaios", re.IGNORECASE)
_DESKTOP = re.compile(r"windows nt|macintosh|mac os x|x11|linux|cros", re.IGNORECASE)


def user_agent_class(user_agent: str | None) -> str:
    """``bot`` (crawlers, messengers' link previews, scripts), ``mobile``, ``desktop`` or ``other``."""
    ua = (user_agent or "")[:512]
    if not ua:
        return "other"
    if _BOT.search(ua):
        return "bot"
    if _MOBILE.search(ua):
        return "mobile"
    if _DESKTOP.search(ua):
        return "desktop"
    return "other"


def coarse_network(address: str | None, *, v4_prefix: int = 24, v6_prefix: int = 48) -> str:
    """The client's network, not its address: ``203.0.113.0/24``, ``2001:db8:1::/48``; ``unknown``."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def rate_limit_key(address: str | None) -> str:
    """Whom a rate limit counts: an IPv4 address, or an IPv6 /64 (one subscriber's usual allocation)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Client:
    address: str | None
    user_agent: str | None

    def details(self) -> dict[str, Any]:
        return {"net": coarse_network(self.address), "ua": user_agent_class(self.user_agent)}


# Recording ----------------------------------------------------------------------------------------------------

LINK_ACTOR = "link"


def _audit(session: Session, link: Link, action: str, client: Client, **extra: Any) -> None:
    # An AuditEvent as publications.audit() writes it, without loading the task (its row carries the PID).
    session.add(
        AuditEvent(
            actor=LINK_ACTOR,
            action=action,
            clinic_code=link.clinic_code,
            task_id=link.task_id,
            details={"key": link.key_prefix, **client.details(), **extra},
        )
    )


def record_view(session: Session, link: Link, client: Client) -> None:
    """A GET of the link's page (the patient, or a messenger making a preview): audited, not a download."""
    if not link.exists:
        return
    _audit(session, link, "link.viewed", client, state=link.state.value)
    session.commit()


def record_download(
    session: Session,
    link: Link,
    client: Client,
    *,
    via: str,
    now: datetime | None = None,
    action: str = "link.downloaded",
) -> bool:
    """Count a download (one atomic UPDATE) and audit it. False when the publication was deleted in the
    meantime: nothing is counted and the caller answers 410. Opening the in-browser viewer counts the same,
    audited as ``link.viewed_in_browser``."""
    if link.state is not LinkState.READY or link.task_id is None:
        return False
    now = now or utcnow()
    result = session.execute(
        update(PublishedStudy)
        .where(PublishedStudy.task_id == link.task_id, PublishedStudy.deleted_at.is_(None))
        .values(downloads=PublishedStudy.downloads + 1, last_download_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        session.rollback()
        return False
    _audit(session, link, action, client, via=via)
    session.commit()
    return True
