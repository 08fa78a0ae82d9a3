"""The optional second factor on a patient's link: a PIN the service makes, or the patient's birth date.

Only a slow hash of the answer is stored (passlib ``pbkdf2_sha256``); every check costs the same whether or
not the link has a hash, and compares in constant time. After ``factor.max_attempts`` wrong answers in a row
the link locks (an administrator unlocks it, audited). A right answer is remembered for
``factor.remember_minutes`` by a cookie bound to that link and to that hash (a new PIN ends it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import date

from passlib.hash import pbkdf2_sha256
from sqlalchemy import update
from sqlalchemy.orm import Session

from studypub.contacts import birth_date_text
from studypub.errors import ValidationError
from studypub.i18n import N_
from studypub.models import AuditEvent, Task, utcnow
from studypub.settings import Settings

KINDS = ("pin", "birth_date")
# A hash nobody's answer matches, verified when a link has none yet: the same cost either way.
_DUMMY = pbkdf2_sha256.hash(secrets.token_hex(16))


def choose_kind(settings: Settings, requested: str | None) -> str | None:
    kind = requested or settings.factor.second_factor
    if kind in (None, "", "none"):
        return None
    if kind not in KINDS:
        raise ValidationError(
            N_("%(field)s must be one of %(choices)s", field="second_factor", choices="none, pin, birth_date")
        )
    return kind


def new_pin(digits: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(digits))


def normalise_answer(kind: str, answer: str) -> str | None:
    """What the patient typed, as it was hashed: digits of a PIN; a date as YYYY-MM-DD (ISO or DD.MM.YYYY)."""
    answer = (answer or "").strip()
    if kind == "pin":
        digits = re.sub(r"[\s-]", "", answer)
        return digits if digits.isdigit() else None
    match = re.fullmatch(r"(\d{1,2})[./-](\d{1,2})[./-](\d{4})", answer)
    if match:
        try:
            return date(int(match[3]), int(match[2]), int(match[1])).isoformat()
        except ValueError:
            return None
    return birth_date_text(answer)


def hash_answer(answer: str) -> str:
    return str(pbkdf2_sha256.hash(answer))


def set_factor(session: Session, task_id: str, answer: str | None) -> None:
    """Store the hash of a new answer (a new PIN, the birth date); wrong answers start again."""
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(factor_hash=hash_answer(answer) if answer else None, factor_failures=0, factor_locked_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def issue_pin(session: Session, settings: Settings, task_id: str) -> str:
    """A new PIN for the link (its hash stored, the PIN returned once, to be handed over or sent)."""
    pin = new_pin(settings.factor.pin_digits)
    set_factor(session, task_id, pin)
    return pin


def pin_goes_by_sms(settings: Settings, task: Task) -> bool:
    """The PIN travels by the other channel than the link when two can be used: the link by email, the PIN by
    SMS. Two contacts with one channel switched off for the clinic (``notify.email_enabled`` /
    ``sms_enabled``) is one channel: the PIN is then handed over, never sent beside the link or not at all."""
    both_given = bool(task.patient_email and task.patient_phone)
    return both_given and settings.notify.email_enabled and settings.notify.sms_enabled


def issue_pin_to_hand_over(session: Session, settings: Settings, task: Task) -> str | None:
    """For a new publication whose link asks for a PIN that is not sent by SMS: a PIN to return to the MIS or
    show to the registrator, once. None otherwise (no PIN, or it goes by SMS when the study is ready)."""
    if task.second_factor != "pin" or pin_goes_by_sms(settings, task):
        return None
    return issue_pin(session, settings, task.id)


def set_birth_date_factor(session: Session, task_id: str, value: date | str | None) -> None:
    text = birth_date_text(value)
    if text:
        set_factor(session, task_id, text)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    locked: bool = False
    remaining: int = 0


def verify(session: Session, settings: Settings, task: Task, answer: str) -> Outcome:
    """Check an answer. A wrong one counts (conditionally, so racing guesses cannot exceed the limit); the
    last allowed wrong answer locks the link (audited)."""
    limit = settings.factor.max_attempts
    if task.factor_locked_at is not None or task.factor_failures >= limit:
        pbkdf2_sha256.verify("x", _DUMMY)
        return Outcome(ok=False, locked=True)
    normal = normalise_answer(task.second_factor or "", answer) or ""
    stored = task.factor_hash
    ok = bool(pbkdf2_sha256.verify(normal, stored or _DUMMY)) and stored is not None and bool(normal)
    if ok:
        if task.factor_failures:
            session.execute(
                update(Task).where(Task.id == task.id, Task.factor_locked_at.is_(None)).values(factor_failures=0)
            )
            session.commit()
        return Outcome(ok=True)
    result = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.factor_failures < limit, Task.factor_locked_at.is_(None))
        .values(factor_failures=Task.factor_failures + 1)
        .returning(Task.factor_failures)
    ).first()
    failures = result[0] if result else limit
    locked = failures >= limit
    if locked and result is not None:
        session.execute(update(Task).where(Task.id == task.id).values(factor_locked_at=utcnow()))
        session.add(
            AuditEvent(
                actor="patient",
                action="link.locked",
                clinic_code=task.clinic_code,
                task_id=task.id,
                details={"attempts": failures},
            )
        )
    session.commit()
    return Outcome(ok=False, locked=locked, remaining=max(0, limit - failures))


def unlock(session: Session, task_id: str, *, actor: str) -> None:
    """An administrator unlocks a link locked by wrong answers (audited)."""
    session.execute(update(Task).where(Task.id == task_id).values(factor_failures=0, factor_locked_at=None))
    task = session.get(Task, task_id)
    clinic = task.clinic_code if task else None
    session.add(AuditEvent(actor=actor, action="link.unlocked", clinic_code=clinic, task_id=task_id))
    session.commit()


# The cookie that remembers a right answer -------------------------------------------------------------------------


def cookie_name(link_key: str) -> str:
    return "sp_f_" + hashlib.sha256(link_key.encode()).hexdigest()[:12]


def _mac(secret: bytes, link_key: str, factor_hash: str, expires: int) -> str:
    msg = f"{link_key}\n{factor_hash}\n{expires}".encode()
    digest = hmac.new(hashlib.sha256(b"second-factor\n" + secret).digest(), msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def remember_token(secret: bytes, link_key: str, factor_hash: str, minutes: int, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + minutes * 60)
    return f"{expires}.{_mac(secret, link_key, factor_hash, expires)}"


def token_valid(
    secret: bytes, link_key: str, factor_hash: str | None, token: str | None, *, now: float | None = None
) -> bool:
    if not token or not factor_hash or "." not in token:
        return False
    expires_text, mac = token.split(".", 1)
    if not expires_text.isdigit() or int(expires_text) < (now or time.time()):
        return False
    return hmac.compare_digest(mac, _mac(secret, link_key, factor_hash, int(expires_text)))
