"""The audit trail's rows: appended in the transaction of the change they record, read a page at a
time, newest first. Nothing here (nor anywhere else) updates or deletes one; the database's
triggers refuse it (migration 0006)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.store.tables import AuditEvent


@dataclass(frozen=True, slots=True)
class AuditFilter:
    org_ids: frozenset[str] | None = None  # None: every event; else only those concerning these organizations
    org_id: str | None = None
    action: str | None = None
    object_id: str | None = None
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    after: int | None = None  # the id of the last event of the previous page: older ones follow
    limit: int = 50


async def append(session: AsyncSession, values: dict[str, Any]) -> int:
    return (await session.execute(insert(AuditEvent).values(**values).returning(AuditEvent.id))).scalar_one()


async def page(session: AsyncSession, where: AuditFilter) -> tuple[list[AuditEvent], bool]:
    """Up to ``limit`` events, newest first, and whether older ones match too."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(where.limit + 1)
    if where.org_ids is not None:
        query = query.where(AuditEvent.org_id.in_(sorted(where.org_ids)))
    for column, value in (
        (AuditEvent.org_id, where.org_id),
        (AuditEvent.action, where.action),
        (AuditEvent.object_id, where.object_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.since_ms is not None:
        query = query.where(AuditEvent.created_at_ms >= where.since_ms)
    if where.until_ms is not None:
        query = query.where(AuditEvent.created_at_ms < where.until_ms)
    if where.after is not None:
        query = query.where(AuditEvent.id < where.after)
    rows = list((await session.scalars(query)).all())
    return rows[: where.limit], len(rows) > where.limit
