"""The idempotency keys of generation requests, in the database so that every replica sees them:
claiming a key for a request, storing the response it gave, releasing a key whose request failed,
and purging keys older than a day (``purge_expired``, for the sweeper).

A key is an organization's for ``TTL_S`` (24 hours) from its first use. Its row says which request
it was (a fingerprint: a hash of method, path and body) and whether that request is still running
or done, with the response once done. A running claim not finished by ``locked_until`` belonged
to a process that died: a retry may take it over. The HTTP side is api/idempotency.py.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.store.session import Database
from emporion.store.tables import IdempotencyKey

TTL_S = 86_400  # a key is remembered for a day, as Stripe does

Busy = Literal["in_progress", "reused"]  # the first request is still running / the key named another request


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to run the request once; only its holder (by ``token``) completes or releases it."""

    org_id: str
    key: str
    token: str


@dataclass(frozen=True, slots=True)
class Stored:
    """The response the key's request gave, to replay."""

    status: int
    headers: dict[str, str]
    body: bytes


async def claim(
    db: Database, org_id: str, key: str, fingerprint: str, lock_s: float, now: float | None = None
) -> Claim | Stored | Busy:
    """Claims ``key`` for the request with this fingerprint: a Claim when it is the organization's
    first request with the key (or the key expired, or its request's process died), the stored
    response when that same request completed before, "in_progress" while it is still running,
    "reused" when the key was used for another request. One statement when the key is new."""
    at = int(time.time() if now is None else now)
    token = secrets.token_hex(16)
    fresh = {
        "fingerprint": fingerprint,
        "token": token,
        "state": "running",
        "created_at": at,
        "locked_until": at + max(1, int(lock_s)),
        "expires_at": at + TTL_S,
        "status": None,
        "headers": None,
        "body": None,
    }
    async with _writer(db) as conn:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        inserted = await conn.execute(
            insert(IdempotencyKey)
            .values(org_id=org_id, key=key, **fresh)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.token)
        )
        if inserted.first() is not None:
            return Claim(org_id, key, token)
        row = (await conn.execute(_row(org_id, key).with_for_update())).one()
        if row.expires_at <= at or (row.fingerprint == fingerprint and row.state == "running" and row.locked_until <= at):
            await conn.execute(update(IdempotencyKey).where(*_is(org_id, key), IdempotencyKey.token == row.token).values(**fresh))
            return Claim(org_id, key, token)
        if row.fingerprint != fingerprint:
            return "reused"
        if row.state == "running":
            return "in_progress"
        return Stored(row.status, json.loads(row.headers or "{}"), row.body or b"")


async def complete(db: Database, held: Claim, status: int, headers: dict[str, str], body: bytes) -> bool:
    """Stores the claimed request's response: retries with the key get it from now on."""
    async with _writer(db) as conn:
        done = await conn.execute(
            update(IdempotencyKey)
            .where(*_is(held.org_id, held.key), IdempotencyKey.token == held.token)
            .values(state="done", status=status, headers=json.dumps(headers), body=body)
        )
        return done.rowcount == 1


async def release(db: Database, held: Claim) -> bool:
    """Forgets the claimed request (it failed, and was not charged): a retry with the key runs anew."""
    async with _writer(db) as conn:
        gone = await conn.execute(delete(IdempotencyKey).where(*_is(held.org_id, held.key), IdempotencyKey.token == held.token))
        return gone.rowcount == 1


async def purge_expired(db: Database, now: float | None = None) -> int:
    """Deletes the keys older than ``TTL_S``; returns how many. For the sweeper of any replica
    (expired keys are ignored meanwhile, so how often it runs only bounds the table's size)."""
    at = int(time.time() if now is None else now)
    async with _writer(db) as conn:
        return (await conn.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= at))).rowcount


def _is(org_id: str, key: str) -> tuple:
    return IdempotencyKey.org_id == org_id, IdempotencyKey.key == key


def _row(org_id: str, key: str):
    return select(
        IdempotencyKey.fingerprint,
        IdempotencyKey.token,
        IdempotencyKey.state,
        IdempotencyKey.locked_until,
        IdempotencyKey.expires_at,
        IdempotencyKey.status,
        IdempotencyKey.headers,
        IdempotencyKey.body,
    ).where(*_is(org_id, key))


@contextlib.asynccontextmanager
async def _writer(db: Database) -> AsyncIterator[AsyncConnection]:
    """One write transaction; on SQLite it takes the write lock at BEGIN (store/session.py)."""
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            yield conn
