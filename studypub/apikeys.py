"""API keys of MIS clients. A key is 256 random bits shown once; only its SHA-256 is stored, so a stolen
database does not give working keys. Lookup is by hash (an index); answers are kept a few seconds per process
(``CACHE_SECONDS``), so a busy MIS costs no query per request and a revocation takes effect within that time."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studypub.errors import NotFound, ValidationError
from studypub.i18n import N_
from studypub.models import ApiKey, AuditEvent, utcnow

KEY_PREFIX = "sp_"
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is updated at most this often (no write per request)
CACHE_SECONDS = 5.0
_CACHE_MAX = 1024  # entries; a flood of wrong keys empties it rather than growing it
_cache: dict[str, tuple[Caller | None, float]] = {}
_touched: dict[int, float] = {}  # key id -> when this process last updated last_used_at (monotonic)
_touch_lock = threading.Lock()


@dataclass(frozen=True)
class Caller:
    """Who is calling: a live key's id, name and the clinics it may publish for (None: every clinic)."""

    id: int
    name: str
    clinic_codes: frozenset[str] | None

    def allows(self, clinic_code: str) -> bool:
        return self.clinic_codes is None or clinic_code in self.clinic_codes


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    *,
    clinic_code: str | None,
    actor: str,
    clinic_codes: list[str] | None = None,
    every_clinic: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself (shown once, never stored). The key publishes for
    ``clinic_codes`` (known clinics), or ``clinic_code`` alone, or every clinic when neither is given (or
    ``every_clinic``); ``clinic_code`` is its home clinic (whose administrators see it)."""
    from studypub.clinics import require_clinic

    name = (name or "").strip()
    if not name or len(name) > 64:
        raise ValidationError(N_("the key needs a name of 1 to 64 characters"))
    codes = list(clinic_codes or ([clinic_code] if clinic_code else []))
    allowed = None if every_clinic or not codes else sorted({require_clinic(session, c).code for c in codes})
    home = require_clinic(session, clinic_code).code if clinic_code else (allowed[0] if allowed else None)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        clinic_code=home,
        clinic_codes=allowed,
        key_hash=_hash(key),
        key_hint=key[:8],
        created_by=actor,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise ValidationError(N_("an API key named %(name)s already exists", name=repr(name))) from exc
    session.add(AuditEvent(actor=actor, action="api_key.created", clinic_code=home, details={"name": name}))
    session.commit()
    return row, key


def revoke_key(session: Session, name: str, *, actor: str) -> ApiKey:
    row = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
    if row is None:
        raise NotFound(N_("no API key named %(name)s", name=repr(name)))
    with _touch_lock:
        _cache.clear()  # this process forgets at once; others within CACHE_SECONDS
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(
            AuditEvent(actor=actor, action="api_key.revoked", clinic_code=row.clinic_code, details={"name": name})
        )
        session.commit()
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))


def authenticate(session: Session, key: str | None) -> Caller | None:
    """The caller owning the live key ``key``, or None."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    digest = _hash(key)
    now_mono = time.monotonic()
    cached = _cache.get(digest)
    if cached is not None and cached[1] > now_mono:
        return cached[0]
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    caller = (
        None
        if row is None or row.revoked_at is not None
        else Caller(row.id, row.name, None if row.clinic_codes is None else frozenset(row.clinic_codes))
    )
    with _touch_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[digest] = (caller, now_mono + CACHE_SECONDS)
    if row is None or caller is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        # One request per process and minute writes it: a burst of requests with a new key must not queue
        # up 100 writers on one row (SQLite serialises writers; PostgreSQL would lock the row for each).
        with _touch_lock:
            mine = time.monotonic() - _touched.get(row.id, -1e9) > _TOUCH_EVERY.total_seconds()
            if mine:
                _touched[row.id] = time.monotonic()
        if mine:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            session.commit()
    return caller
