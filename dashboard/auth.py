"""Dashboard sessions and CSRF protection.

- A session is a signed JWT (HS256) in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard``; it names
  the user, its role and the time it was issued. It lives ``registrator_session_hours`` or
  ``administrator_session_hours``. Each request reloads the user: a disabled user, or a session issued before
  the user's credentials last changed (password reset, role change), is signed out.
- CSRF: a random nonce in its own HttpOnly cookie; every form carries ``HMAC(secret, nonce)`` and every unsafe
  request must present it (form field ``csrf_token`` or header ``X-CSRF-Token``). Another site can neither
  read the cookie nor compute the token.
- Sign-in attempts are rate-limited per client address and per user name.

The signing keys derive from the service secret (``STUDYPUB_SECRET_KEY``), one per purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

import jwt
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from studypub.models import User, utcnow
from studypub.settings import Settings
from studypub.users import Role

SESSION_COOKIE = "sp_session"
CSRF_COOKIE = "sp_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/dashboard"
ALGORITHM = "HS256"


def _key(settings: Settings, purpose: bytes) -> bytes:
    return hmac.new(settings.secret_bytes(), b"studypub-dashboard:" + purpose, hashlib.sha256).digest()


def session_hours(settings: Settings, role: str) -> float:
    if role in (Role.ADMINISTRATOR, Role.SUPERADMIN):
        return settings.dashboard.administrator_session_hours
    return settings.dashboard.registrator_session_hours


def issue_session(settings: Settings, user: User, *, now: datetime | None = None) -> tuple[str, int]:
    """A signed session token for ``user`` and its lifetime in seconds."""
    now = now or utcnow()
    lifetime = int(session_hours(settings, user.role) * 3600)
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + lifetime,
        "ts": now.timestamp(),  # to the microsecond: compared with the user's credentials_changed_at
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, _key(settings, b"session"), algorithm=ALGORITHM), lifetime


@dataclass(frozen=True)
class SessionClaims:
    user_id: int
    role: str
    issued_at: datetime


def read_session(settings: Settings, token: str | None) -> SessionClaims | None:
    """The claims of a valid, unexpired token, else None."""
    if not token:
        return None
    try:
        claims = jwt.decode(
            token,
            _key(settings, b"session"),
            algorithms=[ALGORITHM],
            options={"require": ["sub", "role", "iat", "exp", "ts"]},
        )
        return SessionClaims(
            user_id=int(claims["sub"]),
            role=str(claims["role"]),
            issued_at=datetime.fromtimestamp(float(claims["ts"]), tz=utcnow().tzinfo),
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


def session_user(session: Session, settings: Settings, token: str | None) -> User | None:
    """The signed-in user of a request's session cookie, or None (no session, expired, disabled, superseded)."""
    claims = read_session(settings, token)
    if claims is None:
        return None
    user = session.get(User, claims.user_id)
    if user is None or user.disabled or user.role != claims.role:
        return None
    if claims.issued_at < user.password_changed_at:
        return None  # issued before a password reset, role change or re-enabling
    return user


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str, lifetime: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=lifetime,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request))


# CSRF -------------------------------------------------------------------------------------------------------


def csrf_nonce(request: Request) -> tuple[str, bool]:
    """The request's CSRF nonce and whether it is new (then the response must set its cookie)."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if 16 <= len(nonce) <= 64:
        return nonce, False
    cached = getattr(request.state, "csrf_nonce", None)
    if cached:
        return cached, True
    nonce = secrets.token_urlsafe(24)
    request.state.csrf_nonce = nonce
    return nonce, True


def csrf_token(settings: Settings, nonce: str) -> str:
    return hmac.new(_key(settings, b"csrf"), nonce.encode(), hashlib.sha256).hexdigest()


def set_csrf_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(CSRF_COOKIE, nonce, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request))


def csrf_valid(settings: Settings, request: Request, presented: str | None) -> bool:
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if not nonce or not presented:
        return False
    return hmac.compare_digest(csrf_token(settings, nonce), presented)


# Sign-in rate limit -----------------------------------------------------------------------------------------


class LoginLimiter:
    """Sign-in attempts per client address and per user name (in this process)."""

    def __init__(self, limit: str) -> None:
        self._items = parse_many(limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._lock = threading.Lock()

    def allow(self, address: str, username: str) -> bool:
        with self._lock:
            keys = ("addr", address), ("user", username.strip().lower()[:64])
            return all(self._limiter.hit(item, *key) for key in keys for item in self._items)
