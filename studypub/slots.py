"""Slots of a limited resource, leased in the app's database: at most ``size`` holders at once per pool
(the retrievals one PACS takes at once), shared by every worker.

Why not Prefect's concurrency limits: their slot leases live in the Prefect server's memory, and a server
restart during a retrieval was seen to keep slots taken for ever. Here a slot is a row with a holder and a
lease that the holder renews; a holder that dies (killed process, lost machine) stops renewing and its slot
is free again when the lease runs out. No server restart, killed run or lost connection can keep one taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from studypub.logs import details, get_logger
from studypub.models import SlotLease, utcnow
from studypub.settings import Settings

log = get_logger("slots")

POLL_SECONDS = 1.0


def pacs_pool(settings: Settings) -> str:
    """One pool per PACS peer (host, port and AE title), whichever clinic or worker retrieves from it."""
    p = settings.pacs
    return f"pacs:{p.host}:{p.port}:{p.called_ae}"[:128]


def _ensure_rows(session: Session, pool: str, size: int) -> None:
    have = set(session.scalars(select(SlotLease.slot).where(SlotLease.pool == pool, SlotLease.slot < size)))
    for slot in range(size):
        if slot in have:
            continue
        try:
            with session.begin_nested():
                session.add(SlotLease(pool=pool, slot=slot))
        except IntegrityError:
            pass  # another process made it first
    session.commit()


def try_acquire(session: Session, pool: str, size: int, holder: str, ttl: float) -> int | None:
    """Take a free slot (or one whose lease ran out, or one this holder already has). Its number, or None."""
    _ensure_rows(session, pool, size)
    for slot in range(size):
        now = utcnow()
        result = session.execute(
            update(SlotLease)
            .where(
                SlotLease.pool == pool,
                SlotLease.slot == slot,
                or_(SlotLease.holder.is_(None), SlotLease.lease_until < now, SlotLease.holder == holder),
            )
            .values(holder=holder, lease_until=now + timedelta(seconds=ttl))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if getattr(result, "rowcount", 0):
            return slot
    return None


def renew(session: Session, pool: str, slot: int, holder: str, ttl: float) -> bool:
    result = session.execute(
        update(SlotLease)
        .where(SlotLease.pool == pool, SlotLease.slot == slot, SlotLease.holder == holder)
        .values(lease_until=utcnow() + timedelta(seconds=ttl))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def release(session: Session, pool: str, slot: int, holder: str) -> None:
    session.execute(
        update(SlotLease)
        .where(SlotLease.pool == pool, SlotLease.slot == slot, SlotLease.holder == holder)
        .values(holder=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def in_use(session: Session, pool: str, size: int) -> int:
    """Slots held under a live lease."""
    now = utcnow()
    return int(
        session.scalar(
            select(func.count())
            .select_from(SlotLease)
            .where(
                SlotLease.pool == pool,
                SlotLease.slot < size,
                and_(SlotLease.holder.is_not(None), SlotLease.lease_until >= now),
            )
        )
        or 0
    )


@contextmanager
def held_slot(
    sessions: sessionmaker[Session],
    pool: str,
    size: int,
    holder: str,
    *,
    ttl: float,
    on_wait: Callable[[int], None] | None = None,
    should_stop: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Wait for a slot of ``pool`` (calling ``on_wait(slots in use)`` once when it has to wait, and
    ``should_stop()`` while waiting, which may raise), hold it with a renewed lease, release it on exit."""
    waited = False
    while True:
        with sessions() as session:
            slot = try_acquire(session, pool, size, holder, ttl)
            if slot is None and not waited and on_wait is not None:
                on_wait(in_use(session, pool, size))
        if slot is not None:
            break
        waited = True
        if should_stop is not None:
            should_stop()
        time.sleep(POLL_SECONDS)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 4):
            try:
                with sessions() as session:
                    if not renew(session, pool, slot, holder, ttl):
                        log.warning("A slot lease was lost", extra=details(pool=pool.split(":", 1)[0]))
            except Exception:  # a database blip: the next beat tries again (the lease has 4 beats of margin)
                log.warning("Could not renew a slot lease", extra=details(pool=pool.split(":", 1)[0]))

    keeper = threading.Thread(target=keep, name="slot-lease", daemon=True)
    keeper.start()
    try:
        yield slot
    finally:
        stop.set()
        keeper.join(timeout=5)
        try:
            with sessions() as session:
                release(session, pool, slot, holder)
        except Exception:  # the lease runs out by itself
            log.warning("Could not release a slot; it frees itself when its lease runs out")
