"""Stored responses of the Responses API: kept per organization for ``[responses] store_days``,
read back by id (only by the organization that made them: anyone else gets None, which the API
answers with 404, so an id reveals nothing), continued with ``previous_response_id``, deleted on
request, and purged by the sweeper once expired (``purge_expired``).

A conversation is the chain of responses each continuing the one before: ``conversation`` walks
it back from the newest, at most ``MAX_CHAIN`` responses, and returns its items oldest first —
each response's input items, then its output."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from emporion.store.session import Database
from emporion.store.tables import StoredResponse

MAX_CHAIN = 1000  # responses one conversation may reach back through


@dataclass(frozen=True, slots=True)
class Kept:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    previous_response_id: str | None


async def save(db: Database, org_id: str, response: dict[str, Any], input_items: list[dict[str, Any]], days: float) -> None:
    now = int(time.time())
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await conn.execute(
                insert(StoredResponse).values(
                    id=response["id"],
                    org_id=org_id,
                    created_at=now,
                    expires_at=now + int(days * 86_400),
                    previous_response_id=response.get("previous_response_id"),
                    input_items=orjson.dumps(input_items).decode(),
                    response=orjson.dumps(response).decode(),
                )
            )


async def load(db: Database, org_id: str, response_id: str, now: float | None = None) -> Kept | None:
    """The organization's response by id; None when there is none (or another's, or expired)."""
    at = int(time.time() if now is None else now)
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(StoredResponse.response, StoredResponse.input_items, StoredResponse.previous_response_id).where(
                    StoredResponse.id == response_id, StoredResponse.org_id == org_id, StoredResponse.expires_at > at
                )
            )
        ).first()
    if row is None:
        return None
    return Kept(orjson.loads(row.response), orjson.loads(row.input_items), row.previous_response_id)


async def conversation(db: Database, org_id: str, response_id: str) -> list[dict[str, Any]] | None:
    """The items of the conversation up to and including ``response_id``'s output, oldest first;
    None when the organization has no such response. A response earlier in the chain that was
    deleted or expired ends the walk there: the conversation starts after it."""
    turns: list[list[dict[str, Any]]] = []
    at: str | None = response_id
    while at is not None and len(turns) < MAX_CHAIN:
        kept = await load(db, org_id, at)
        if kept is None:
            if not turns:
                return None
            break
        turns.append(kept.input_items + [item for item in kept.response.get("output", []) if isinstance(item, dict)])
        at = kept.previous_response_id
    return [item for turn in reversed(turns) for item in turn]


async def remove(db: Database, org_id: str, response_id: str) -> bool:
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            gone = await conn.execute(
                delete(StoredResponse).where(StoredResponse.id == response_id, StoredResponse.org_id == org_id)
            )
            return bool(gone.rowcount)


async def purge_expired(db: Database, now: float | None = None) -> int:
    at = int(time.time() if now is None else now)
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            return (await conn.execute(delete(StoredResponse).where(StoredResponse.expires_at <= at))).rowcount
