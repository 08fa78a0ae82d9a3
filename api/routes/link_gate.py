"""The second factor in front of a patient's link: one dependency (:data:`SecondFactorChecked`) that every
route showing or serving a study (the page, the download, and any viewer added later) declares. It lets the
request through when the link has no second factor, or when the request carries the cookie a right answer
earned for that link; otherwise it raises :class:`GateClosed`, which the link routes answer with the page
asking for the PIN or the birth date (or saying the link is locked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import PublicSessionDep, SettingsDep
from studypub.factor import cookie_name, token_valid
from studypub.links import key_shaped
from studypub.models import Task, TaskStatus, utcnow
from studypub.settings import Settings


@dataclass(frozen=True)
class FactorState:
    task_id: str
    kind: str
    factor_hash: str | None
    failures: int
    locked: bool
    preparing: bool


class GateClosed(Exception):
    """The link asks for its second factor (``state.kind``) before it shows anything."""

    def __init__(self, key: str, state: FactorState) -> None:
        super().__init__(state.kind)
        self.key = key
        self.state = state


def factor_state(session: Session, key: str, settings: Settings) -> FactorState | None:
    """The link's second factor, or None when it has none (or is unknown or gone: those pages say so)."""
    if not key_shaped(key):
        return None
    row = session.execute(
        select(
            Task.id,
            Task.second_factor,
            Task.factor_hash,
            Task.factor_failures,
            Task.factor_locked_at,
            Task.status,
            Task.save_till,
        ).where(Task.link_key == key)
    ).first()
    if row is None or not row.second_factor:
        return None
    if row.status in (TaskStatus.EXPIRED, TaskStatus.DELETED) or row.save_till <= utcnow():
        return None
    return FactorState(
        task_id=row.id,
        kind=row.second_factor,
        factor_hash=row.factor_hash,
        failures=row.factor_failures or 0,
        locked=row.factor_locked_at is not None or (row.factor_failures or 0) >= settings.factor.max_attempts,
        preparing=row.status in (TaskStatus.QUEUED, TaskStatus.RUNNING),
    )


def passed(request: Request, settings: Settings, key: str, state: FactorState) -> bool:
    token = request.cookies.get(cookie_name(key))
    return not state.locked and token_valid(settings.secret_bytes(), key, state.factor_hash, token)


def check_second_factor(key: str, request: Request, session: PublicSessionDep, settings: SettingsDep) -> None:
    """The dependency: raises GateClosed unless the link has no second factor or this browser passed it."""
    state = factor_state(session, key, settings)
    if state is not None and not passed(request, settings, key, state):
        session.rollback()
        raise GateClosed(key, state)


SecondFactorChecked = Annotated[None, Depends(check_second_factor)]
