"""What the dashboard's lists show, as plain queries (no web code): the queue, the published studies (filtered,
sorted and paginated in the database, so it stays fast at 100,000 rows), the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from studypub.models import AuditEvent, PublishedStudy, Task, TaskStatus

QUEUE_LIMIT = 200


def queue_rows(
    session: Session, *, status: str | None = None, clinic: str | None = None, limit: int = QUEUE_LIMIT
) -> list[dict[str, Any]]:
    """The latest publications, newest first, with their progress (what the queue page shows and polls);
    ``clinic`` narrows a superadmin's queue to one clinic (a clinic's session sees only its own anyway)."""
    query = (
        select(
            Task.id,
            Task.clinic_code,
            Task.patient_id,
            Task.accession_number,
            Task.status,
            Task.step,
            Task.progress_received,
            Task.progress_expected,
            Task.reason,
            Task.waiting_for,
            Task.lease_until,
            Task.next_attempt_at,
            Task.dispatch_pending,
            Task.created_at,
            Task.flow_run_id,
            Task.source,
            PublishedStudy.size_bytes,
        )
        .outerjoin(PublishedStudy, PublishedStudy.task_id == Task.id)
        .order_by(Task.created_at.desc(), Task.id)
        .limit(limit)
    )
    if status:
        query = query.where(Task.status == status)
    if clinic:
        query = query.where(Task.clinic_code == clinic)
    return [dict(row._mapping) for row in session.execute(query)]


# Published studies -------------------------------------------------------------------------------------------

# Sortable columns, each with the id of its own table as the tie-breaker: an index on (column, id) then gives
# the page in order without sorting the whole list (migration 0003).
SORTS: dict[str, tuple[Any, Any]] = {
    "pid": (Task.patient_id, Task.id),
    "emk_record_id": (Task.emk_record_id, Task.id),
    "size": (PublishedStudy.size_bytes, PublishedStudy.id),
    "study_date": (Task.study_date, Task.id),
    "upload_date": (PublishedStudy.upload_date, PublishedStudy.id),
    "save_till": (Task.save_till, Task.id),
    "downloads": (PublishedStudy.downloads, PublishedStudy.id),
    "last_download": (PublishedStudy.last_download_at, PublishedStudy.id),
}
COUNT_CAP = 10_000  # beyond this the page says "more than 10,000": counting every row costs a full join
PUBLISHED_STATUSES = (TaskStatus.COMPLETED, TaskStatus.EXPIRED, TaskStatus.DELETED)


@dataclass
class PublishedFilter:
    pid: str | None = None
    acsn: str | None = None
    status: str | None = TaskStatus.COMPLETED  # None: all published, including expired and deleted
    clinic: str | None = None  # one clinic (a superadmin's filter)
    upload_from: date | None = None
    upload_to: date | None = None
    study_from: date | None = None
    study_to: date | None = None
    save_till_from: date | None = None
    save_till_to: date | None = None
    sort: str = "upload_date"
    descending: bool = True
    page: int = 1
    page_size: int = 50
    tz: Any = None  # the dates above are days in this time zone

    def conditions(self) -> list[Any]:
        where: list[Any] = []
        if self.pid:
            where.append(Task.patient_id == self.pid)
        if self.acsn:
            where.append(Task.accession_number == self.acsn)
        if self.clinic:
            where.append(Task.clinic_code == self.clinic)
        if self.status:
            where.append(Task.status == self.status)
        else:
            where.append(Task.status.in_(PUBLISHED_STATUSES))
        for column, start, end in (
            (PublishedStudy.upload_date, self.upload_from, self.upload_to),
            (Task.study_date, self.study_from, self.study_to),
            (Task.save_till, self.save_till_from, self.save_till_to),
        ):
            if start:
                where.append(column >= self._day(start))
            if end:
                where.append(column < self._day(end + timedelta(days=1)))
        return where

    def _day(self, day: date) -> datetime:
        return datetime.combine(day, time.min, tzinfo=self.tz or UTC)


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    capped: bool = False  # total is COUNT_CAP: there are more


def _published_query(flt: PublishedFilter) -> Select[Any]:
    return (
        select(
            Task.id,
            Task.patient_id,
            Task.accession_number,
            Task.emk_record_id,
            Task.clinic_code,
            Task.service_title,
            Task.study_date,
            Task.save_till,
            Task.status,
            Task.link_key,
            PublishedStudy.size_bytes,
            PublishedStudy.instances,
            PublishedStudy.upload_date,
            PublishedStudy.downloads,
            PublishedStudy.last_download_at,
        )
        .join(PublishedStudy, PublishedStudy.task_id == Task.id)
        .where(and_(*flt.conditions()))
    )


def published_page(session: Session, flt: PublishedFilter) -> Page:
    """One page of published studies: filtered, sorted by any column (then by id, for a stable order)."""
    column, tie = SORTS.get(flt.sort, SORTS["upload_date"])
    order = (column.desc(), tie.desc()) if flt.descending else (column.asc(), tie.asc())
    matching = (
        select(PublishedStudy.id)
        .join(Task, PublishedStudy.task_id == Task.id)
        .where(and_(*flt.conditions()))
        .limit(COUNT_CAP + 1)
        .subquery()
    )
    total = session.scalar(select(func.count()).select_from(matching)) or 0
    capped = total > COUNT_CAP
    total = min(total, COUNT_CAP)
    pages = max(1, -(-total // flt.page_size))
    page = max(1, flt.page) if capped else min(max(1, flt.page), pages)
    query = _published_query(flt).order_by(*order).limit(flt.page_size).offset((page - 1) * flt.page_size)
    rows = [dict(r._mapping) for r in session.execute(query)]
    return Page(rows=rows, total=total, page=page, pages=pages, capped=capped)


# Audit --------------------------------------------------------------------------------------------------------


def audit_page(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    task_id: str | None = None,
    page: int = 1,
    page_size: int = 100,
) -> Page:
    where: list[Any] = []
    if actor:
        where.append(AuditEvent.actor == actor)
    if action:
        where.append(AuditEvent.action.startswith(action, autoescape=True))
    if task_id:
        where.append(AuditEvent.task_id == task_id)
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(and_(*where))) or 0
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    rows = session.scalars(
        select(AuditEvent)
        .where(and_(*where))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    return Page(
        rows=[
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "task_id": e.task_id,
                "details": e.details,
            }
            for e in rows
        ],
        total=total,
        page=page,
        pages=pages,
    )
