"""Dashboard users: passwords hashed with passlib (pbkdf2_sha256: no extra dependency, see STACK-NOTES), roles,
and the administrator's operations on them. No web code here.

``credentials_changed_at`` (the ``password_changed_at`` column) moves whenever a user's password, role or
access changes: sessions issued before it are no longer honoured, so a reset or a disabled account ends the
user's open sessions at once.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime

from passlib.context import CryptContext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studypub.errors import Conflict, NotFound, ValidationError
from studypub.i18n import N_
from studypub.models import User, utcnow
from studypub.publications import audit
from studypub.settings import Settings

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,63}$")

_passwords = CryptContext(schemes=["pbkdf2_sha256"], deprecated="auto")
# Verified against when the user does not exist, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = _passwords.hash("not a password of anyone")


class Role(enum.StrEnum):
    ADMINISTRATOR = "administrator"  # runs one clinic: its users, keys, settings
    REGISTRATOR = "registrator"  # publishes for one clinic
    SUPERADMIN = "superadmin"  # the instance's operator: every clinic, the clinics themselves


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def check_password_rules(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(N_("the password must have at least %(count)s characters", count=MIN_PASSWORD_LENGTH))
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(N_("the password must have at most %(count)s characters", count=MAX_PASSWORD_LENGTH))
    return password


def check_username(username: str) -> str:
    username = username.strip()
    if not USERNAME.match(username):
        raise ValidationError(N_("the user name must be 2–64 characters: letters, digits, . _ @ -"))
    return username


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValidationError(N_("the role must be administrator or registrator")) from None


def authenticate_user(session: Session, username: str, password: str) -> User | None:
    """The enabled user with this name and password, else None (same cost for every kind of miss)."""
    user = session.scalars(select(User).where(User.username == username.strip()[:64])).first()
    if user is None:
        _passwords.verify(password, _DUMMY_HASH)
        return None
    ok, new_hash = _passwords.verify_and_update(password, user.password_hash)
    if not ok or user.disabled:
        return None
    if new_hash:  # the scheme's cost went up since the hash was made
        user.password_hash = new_hash
        session.commit()
    return user


def create_user(
    session: Session,
    settings: Settings,
    username: str,
    password: str,
    role: str,
    *,
    actor: str,
    clinic_code: str | None = None,
) -> User:
    from studypub.clinics import require_clinic

    user = User(
        username=check_username(username),
        password_hash=hash_password(check_password_rules(password)),
        role=check_role(role).value,
        clinic_code=require_clinic(session, clinic_code or settings.default_clinic_code).code,
        disabled=False,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(N_("a user with that name exists")) from None
    audit(session, actor=actor, action="user.created", details={"user": user.username, "role": user.role})
    session.commit()
    return user


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(N_("no such user"))
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _administrators_left(session: Session, excluding: int) -> int:
    """Enabled administrators other than ``excluding``. Their rows stay locked until the commit (PostgreSQL), so
    two administrators demoting or disabling each other at once cannot leave none: the second one waits, then
    counts again."""
    admins = session.scalars(  # all of them, in one order: concurrent changes queue instead of deadlocking
        select(User.id)
        .where(User.role == Role.ADMINISTRATOR.value, User.disabled.is_(False))
        .order_by(User.id)
        .with_for_update()
    ).all()
    return sum(1 for user_id in admins if user_id != excluding)


def _changed(user: User, now: datetime) -> None:
    user.password_changed_at = now  # sessions issued before now end


def set_password(session: Session, user_id: int, password: str, *, actor: str) -> User:
    user = get_user(session, user_id)
    user.password_hash = hash_password(check_password_rules(password))
    _changed(user, utcnow())
    audit(session, actor=actor, action="user.password_reset", details={"user": user.username})
    session.commit()
    return user


def set_role(session: Session, user_id: int, role: str, *, actor: str) -> User:
    user = get_user(session, user_id)
    new = check_role(role)
    if user.role == Role.ADMINISTRATOR and new != Role.ADMINISTRATOR and not _administrators_left(session, user.id):
        raise Conflict(N_("the last administrator cannot stop being one"))
    if user.role != new.value:
        user.role = new.value
        _changed(user, utcnow())
        audit(session, actor=actor, action="user.role_changed", details={"user": user.username, "role": new.value})
    session.commit()
    return user


def set_disabled(session: Session, user_id: int, disabled: bool, *, actor: str) -> User:
    user = get_user(session, user_id)
    if disabled and user.role == Role.ADMINISTRATOR and not _administrators_left(session, user.id):
        raise Conflict(N_("the last administrator cannot be disabled"))
    if user.disabled != disabled:
        user.disabled = disabled
        _changed(user, utcnow())
        audit(
            session,
            actor=actor,
            action="user.disabled" if disabled else "user.enabled",
            details={"user": user.username},
        )
    session.commit()
    return user


def end_sessions(session: Session, user_id: int, *, actor: str) -> None:
    """Sign the user out everywhere: sessions issued before now are no longer honoured."""
    user = get_user(session, user_id)
    _changed(user, utcnow())
    audit(session, actor=actor, action="user.signed_out", details={"user": user.username})
    session.commit()


def ensure_first_admin(session: Session, settings: Settings) -> User | None:
    """Create the administrator named in the settings when there are no users at all (first start)."""
    name = settings.dashboard.first_admin_username
    password = settings.dashboard.first_admin_password
    if not name or password is None:
        return None
    if session.scalar(select(func.count()).select_from(User)):
        return None
    try:
        return create_user(session, settings, name, password.get_secret_value(), Role.ADMINISTRATOR, actor="system")
    except Conflict:  # another process of the same start got there first
        return None
