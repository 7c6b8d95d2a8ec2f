"""The request log in the database: entries written in batches by the log's writer
(observe/request_log.py), read back with filters and a cursor (the admin API, the CLI), and the
bodies kept under a retention policy, purged by the sweeper once expired."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, select, tuple_

from emporion.core.money import Nanos, format_usd
from emporion.store.bulk import insert_rows
from emporion.store.session import Database
from emporion.store.tables import RequestBody, RequestLogEntry

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class Filters:
    org_ids: tuple[str, ...] | None = None  # None: every organization (the operator)
    key_id: str | None = None
    model: str | None = None
    status: str | None = None
    end_user: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


async def write(db: Database, entries: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> None:
    """One transaction for a batch of entries and the bodies kept with them."""
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await insert_rows(conn, RequestLogEntry, entries)
            await insert_rows(conn, RequestBody, bodies)


async def page(db: Database, filters: Filters, limit: int, after: str | None) -> tuple[list[RequestLogEntry], bool]:
    """Newest first; ``after``: the last id of the previous page."""
    e = RequestLogEntry
    query = select(e)
    if filters.org_ids is not None:
        query = query.where(e.org_id.in_(filters.org_ids))
    for column, value in (
        (e.key_id, filters.key_id),
        (e.model, filters.model),
        (e.status, filters.status),
        (e.end_user, filters.end_user),
    ):
        if value is not None:
            query = query.where(column == value)
    if filters.since_ms is not None:
        query = query.where(e.created_ms >= filters.since_ms)
    if filters.until_ms is not None:
        query = query.where(e.created_ms < filters.until_ms)
    async with db.session() as session:
        if after is not None:
            cursor = (await session.execute(select(e.created_ms, e.id).where(e.id == after))).first()
            if cursor is not None:
                query = query.where(tuple_(e.created_ms, e.id) < tuple_(*cursor))
        rows = list((await session.execute(query.order_by(e.created_ms.desc(), e.id.desc()).limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit


async def get(db: Database, request_id: str) -> tuple[RequestLogEntry, RequestBody | None] | None:
    at = int(time.time())
    async with db.session() as session:
        entry = await session.get(RequestLogEntry, request_id)
        if entry is None:
            return None
        body = await session.scalar(select(RequestBody).where(RequestBody.request_id == request_id, RequestBody.expires_at > at))
    return entry, body


async def purge_expired(db: Database, now: float | None = None) -> int:
    at = int(time.time() if now is None else now)
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            return (await conn.execute(delete(RequestBody).where(RequestBody.expires_at <= at))).rowcount


def to_wire(entry: RequestLogEntry, body: RequestBody | None = None) -> dict[str, Any]:
    """An entry as the admin API and the CLI show it (with its bodies, where they were kept)."""
    wire: dict[str, Any] = {
        "object": "request",
        "id": entry.id,
        "created_at": entry.created_at,
        "created_ms": entry.created_ms,
        "org_id": entry.org_id,
        "key_id": entry.key_id,
        "user": entry.end_user,
        "tags": orjson.loads(entry.tags) if entry.tags else [],
        "endpoint": entry.endpoint,
        "model": entry.model,
        "served_model": entry.served_model,
        "deployment": entry.deployment,
        "upstream": entry.upstream,
        "provider": entry.provider,
        "attempts": entry.attempts,
        "status": entry.status,
        "http_status": entry.http_status,
        "error_code": entry.error_code,
        "streamed": entry.streamed,
        "input_tokens": entry.input_tokens,
        "cached_input_tokens": entry.cached_input_tokens,
        "output_tokens": entry.output_tokens,
        "cost_usd": format_usd(Nanos(entry.cost_nanos)),
        "cost_nanos": entry.cost_nanos,
        "latency_ms": entry.latency_ms,
        "ttft_ms": entry.ttft_ms,
        "tokens_per_s": entry.tokens_per_s,
        "finish_reason": entry.finish_reason,
        "flags": orjson.loads(entry.flags) if entry.flags else [],
        "client_address": entry.client_address,
    }
    if body is not None:
        wire["body"] = {"prompt": orjson.loads(body.prompt), "completion": body.completion, "expires_at": body.expires_at}
    return wire
