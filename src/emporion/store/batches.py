"""Batches and their lines in the database, what every replica's batch worker and the API share.

A batch moves ``validating`` → ``in_progress`` → ``finalizing`` → ``completed``, or ends
``failed`` (its file did not validate), ``expired`` (its window passed) or, once asked to,
``cancelling`` → ``cancelled``. One replica runs it at a time: ``claim`` takes a batch no live
replica holds (``owner_until`` in the past) and ``renew`` keeps it; a replica that stops renewing
(it died) lets another take over after ``[batches] lease_s``.

Each line the worker starts gets a row first (``start_line``: ``running``, with the request id it
runs under), then its outcome (``finish_line``: ``done``). On taking a batch over, a ``running``
row is a line whose replica stopped mid-request: the ledger tells whether it was charged."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.core.money import Nanos, to_usd
from emporion.store.files import insert_file
from emporion.store.session import Database
from emporion.store.tables import Batch, BatchLine

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # what a worker still has to do
ENDED = ("completed", "failed", "expired", "cancelled")
WINDOWS = {"24h": 86_400}


def new_batch_id() -> str:
    return "batch_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one line ended: a response (``status_code`` and its body), or none (``error_code``)."""

    status_code: int | None
    body: dict[str, Any] | None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code == 200


@dataclass(frozen=True, slots=True)
class LineRow:
    line: int
    custom_id: str
    request_id: str
    state: str
    outcome: Outcome | None  # None while running


async def create(
    db: Database,
    *,
    org_id: str,
    key_id: str,
    endpoint: str,
    input_file_id: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    price_factor: Decimal,
) -> str:
    batch_id, now_ns = new_batch_id(), time.time_ns()
    now = now_ns // 1_000_000_000
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await conn.execute(
                insert(Batch).values(
                    id=batch_id,
                    org_id=org_id,
                    key_id=key_id,
                    endpoint=endpoint,
                    input_file_id=input_file_id,
                    completion_window=completion_window,
                    status="validating",
                    metadata_json=orjson.dumps(metadata).decode() if metadata is not None else None,
                    price_factor=str(price_factor),
                    created_at=now,
                    created_ns=now_ns,
                    expires_at=now + WINDOWS[completion_window],
                )
            )
    return batch_id


async def get(db: Database, org_id: str | None, batch_id: str) -> Batch | None:
    """The batch (its organization's only, unless ``org_id`` is None: the worker's view)."""
    query = select(Batch).where(Batch.id == batch_id)
    if org_id is not None:
        query = query.where(Batch.org_id == org_id)
    async with db.session() as session:
        return (await session.execute(query)).scalar_one_or_none()


async def listed(db: Database, org_id: str, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    """Newest first; ``after``: the last batch id of the previous page."""
    query = select(Batch).where(Batch.org_id == org_id)
    async with db.session() as session:
        if after is not None:
            cursor = (
                await session.execute(select(Batch.created_ns, Batch.id).where(Batch.id == after, Batch.org_id == org_id))
            ).first()
            if cursor is not None:
                query = query.where(tuple_(Batch.created_ns, Batch.id) < tuple_(*cursor))
        rows = list((await session.execute(query.order_by(Batch.created_ns.desc(), Batch.id.desc()).limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit


async def unfinished_using(db: Database, org_id: str, file_id: str) -> str | None:
    """The id of a batch not yet ended that reads ``file_id``, if any."""
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                select(Batch.id).where(Batch.org_id == org_id, Batch.input_file_id == file_id, Batch.status.in_(ACTIVE)).limit(1)
            )
        ).first()
    return None if found is None else found.id


async def request_cancel(db: Database, org_id: str, batch_id: str) -> bool:
    """Asks the worker to stop the batch (``cancelling``); False when it had already ended."""
    return await _set(
        db, batch_id, ("validating", "in_progress"), status="cancelling", cancelling_at=int(time.time()), org_id=org_id
    )


async def claim(db: Database, owner: str, lease_s: float) -> str | None:
    """Takes the oldest active batch that no live replica holds; None when there is none."""
    now = time.time()
    async with db.engine.connect() as conn:
        candidates = (
            await conn.execute(
                select(Batch.id).where(Batch.status.in_(ACTIVE), Batch.owner_until < now).order_by(Batch.created_ns).limit(8)
            )
        ).all()
    for (batch_id,) in candidates:
        async with db.engine.connect() as conn:
            await conn.execution_options(writer=True)
            async with conn.begin():
                taken = await conn.execute(
                    update(Batch)
                    .where(Batch.id == batch_id, Batch.owner_until < now, Batch.status.in_(ACTIVE))
                    .values(owner=owner, owner_until=int(now + lease_s))
                )
        if taken.rowcount:
            return batch_id
    return None


async def renew(db: Database, batch_id: str, owner: str, lease_s: float) -> str | None:
    """Keeps the batch for another ``lease_s``; returns its status (None: another replica has it)."""
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            kept = await conn.execute(
                update(Batch).where(Batch.id == batch_id, Batch.owner == owner).values(owner_until=int(time.time() + lease_s))
            )
            if not kept.rowcount:
                return None
            return (await conn.execute(select(Batch.status).where(Batch.id == batch_id))).scalar_one()


async def release(db: Database, batch_id: str, owner: str) -> None:
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await conn.execute(update(Batch).where(Batch.id == batch_id, Batch.owner == owner).values(owner=None, owner_until=0))


async def _set(db: Database, batch_id: str, when: tuple[str, ...], org_id: str | None = None, **values: Any) -> bool:
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            query = update(Batch).where(Batch.id == batch_id, Batch.status.in_(when))
            if org_id is not None:
                query = query.where(Batch.org_id == org_id)
            return bool((await conn.execute(query.values(**values))).rowcount)


async def started(db: Database, batch_id: str, total: int) -> bool:
    return await _set(db, batch_id, ("validating",), status="in_progress", in_progress_at=int(time.time()), total=total)


async def failed_validation(
    db: Database, batch_id: str, errors: list[dict[str, Any]], when: tuple[str, ...] = ("validating",)
) -> bool:
    body = orjson.dumps({"object": "list", "data": errors}).decode()
    return await _set(
        db, batch_id, when, status="failed", failed_at=int(time.time()), errors_json=body, owner=None, owner_until=0
    )


async def finalizing(db: Database, batch_id: str) -> bool:
    return await _set(db, batch_id, ("in_progress",), status="finalizing", finalizing_at=int(time.time()))


async def lines(db: Database, batch_id: str) -> list[LineRow]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(BatchLine).where(BatchLine.batch_id == batch_id).order_by(BatchLine.line))).all()
    return [_line_row(row) for row in rows]


def _line_row(row: Any) -> LineRow:
    outcome = None
    if row.state == "done":
        outcome = Outcome(
            row.status_code,
            orjson.loads(row.body) if row.body is not None else None,
            row.error_code,
            row.error_message,
            row.input_tokens,
            row.cached_input_tokens,
            row.output_tokens,
            row.cost_nanos,
        )
    return LineRow(row.line, row.custom_id, row.request_id, row.state, outcome)


async def start_line(db: Database, batch_id: str, line: int, custom_id: str, request_id: str) -> None:
    """Written before the line's request is made (a line started again replaces its old row)."""
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await conn.execute(
                BatchLine.__table__.delete().where(BatchLine.batch_id == batch_id, BatchLine.line == line)  # type: ignore[attr-defined]  # a mapped class's Table
            )
            await conn.execute(
                insert(BatchLine).values(
                    batch_id=batch_id, line=line, custom_id=custom_id, request_id=request_id, state="running"
                )
            )


async def finish_line(db: Database, batch_id: str, line: int, outcome: Outcome) -> None:
    """The line's outcome, and the batch's counts, in one transaction."""
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await conn.execute(
                update(BatchLine)
                .where(BatchLine.batch_id == batch_id, BatchLine.line == line)
                .values(
                    state="done",
                    status_code=outcome.status_code,
                    body=orjson.dumps(outcome.body).decode() if outcome.body is not None else None,
                    error_code=outcome.error_code,
                    error_message=outcome.error_message,
                    input_tokens=outcome.input_tokens,
                    cached_input_tokens=outcome.cached_input_tokens,
                    output_tokens=outcome.output_tokens,
                    cost_nanos=outcome.cost_nanos,
                )
            )
            counted = {"completed": Batch.completed + 1} if outcome.ok else {"failed": Batch.failed + 1}
            await conn.execute(update(Batch).where(Batch.id == batch_id).values(**counted))


async def finish(db: Database, batch_id: str, status: str, files: dict[str, dict[str, Any]], when: tuple[str, ...]) -> bool:
    """Ends the batch (``status``: completed, cancelled or expired) with its output and error
    files (``files``: "output" / "error" → a file row) in one transaction: a crash leaves either
    both or neither, and a batch taken over is finished once."""
    at = int(time.time())
    stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[status]
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            ended = await conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status.in_(when))
                .values(
                    status=status,
                    owner=None,
                    owner_until=0,
                    output_file_id=files["output"]["id"] if "output" in files else None,
                    error_file_id=files["error"]["id"] if "error" in files else None,
                    **{stamp: at},
                )
            )
            if not ended.rowcount:
                await conn.rollback()
                return False
            for values in files.values():
                await insert_file(conn, values)
    return True


async def usage(conn_or_db: Database, batch_id: str) -> dict[str, int]:
    async with conn_or_db.engine.connect() as conn:
        return await _usage(conn, batch_id)


async def _usage(conn: AsyncConnection, batch_id: str) -> dict[str, int]:
    row = (
        await conn.execute(
            select(
                func.coalesce(func.sum(BatchLine.input_tokens), 0),
                func.coalesce(func.sum(BatchLine.cached_input_tokens), 0),
                func.coalesce(func.sum(BatchLine.output_tokens), 0),
                func.coalesce(func.sum(BatchLine.cost_nanos), 0),
            ).where(BatchLine.batch_id == batch_id)
        )
    ).one()
    return {"input": int(row[0]), "cached": int(row[1]), "output": int(row[2]), "cost_nanos": int(row[3])}


def to_openai(batch: Batch, used: dict[str, int]) -> dict[str, Any]:
    """The Batch object as OpenAI's API returns it (usage with the cost, as Emporion's usage has)."""
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": orjson.loads(batch.errors_json) if batch.errors_json else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "usage": {
            "input_tokens": used["input"] + used["cached"],
            "input_tokens_details": {"cached_tokens": used["cached"]},
            "output_tokens": used["output"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": used["input"] + used["cached"] + used["output"],
            "cost": float(to_usd(Nanos(used["cost_nanos"]))),
        },
        "metadata": orjson.loads(batch.metadata_json) if batch.metadata_json else None,
    }
