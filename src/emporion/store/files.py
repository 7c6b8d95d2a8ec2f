"""The files of ``/v1/files``: kept in the database (every replica serves every file), each its
organization's only — anyone else gets None, which the API answers with 404, so an id reveals
nothing — until deleted or, for a file with an expiry, purged by the sweeper (``purge_expired``)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.store.session import Database
from emporion.store.tables import StoredFile

INFO = (
    StoredFile.id,
    StoredFile.filename,
    StoredFile.purpose,
    StoredFile.size,
    StoredFile.created_at,
    StoredFile.expires_at,
)


@dataclass(frozen=True, slots=True)
class FileInfo:
    id: str
    filename: str
    purpose: str
    size: int
    created_at: int
    expires_at: int | None

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def new_file_id() -> str:
    return "file-" + secrets.token_urlsafe(18)


def row(
    org_id: str, filename: str, purpose: str, content: bytes, expires_in_s: float | None = None, now: float | None = None
) -> dict[str, Any]:
    """The values of a new file's row (for ``save``, or for an insert in a transaction of the caller's)."""
    at_ns = time.time_ns() if now is None else int(now * 1e9)
    at = at_ns // 1_000_000_000
    return {
        "id": new_file_id(),
        "created_ns": at_ns,
        "org_id": org_id,
        "filename": filename,
        "purpose": purpose,
        "size": len(content),
        "created_at": at,
        "expires_at": None if expires_in_s is None else at + int(expires_in_s),
        "content": content,
    }


def info_of(values: dict[str, Any]) -> FileInfo:
    return FileInfo(
        values["id"], values["filename"], values["purpose"], values["size"], values["created_at"], values["expires_at"]
    )


async def insert_file(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(StoredFile).values(**values))


async def save(db: Database, values: dict[str, Any]) -> FileInfo:
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            await insert_file(conn, values)
    return info_of(values)


def _live(org_id: str, at: int):
    return (StoredFile.org_id == org_id, or_(StoredFile.expires_at.is_(None), StoredFile.expires_at > at))


async def get(db: Database, org_id: str, file_id: str) -> FileInfo | None:
    async with db.engine.connect() as conn:
        found = (await conn.execute(select(*INFO).where(StoredFile.id == file_id, *_live(org_id, int(time.time()))))).first()
    return None if found is None else FileInfo(*found)


async def content(db: Database, org_id: str, file_id: str) -> bytes | None:
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(select(StoredFile.content).where(StoredFile.id == file_id, *_live(org_id, int(time.time()))))
        ).first()
    return None if found is None else bytes(found.content)


async def listed(
    db: Database, org_id: str, *, purpose: str | None, limit: int, newest_first: bool, after: str | None
) -> tuple[list[FileInfo], bool]:
    """A page of the organization's files, and whether more follow. ``after``: a file id of the
    previous page (None when that file is not the organization's)."""
    at = int(time.time())
    query = select(*INFO).where(*_live(org_id, at))
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    async with db.engine.connect() as conn:
        if after is not None:
            cursor = (
                await conn.execute(select(StoredFile.created_ns, StoredFile.id).where(StoredFile.id == after, *_live(org_id, at)))
            ).first()
            if cursor is not None:
                key = tuple_(StoredFile.created_ns, StoredFile.id)
                query = query.where(key < tuple_(*cursor) if newest_first else key > tuple_(*cursor))
        order = (StoredFile.created_ns.desc(), StoredFile.id.desc()) if newest_first else (StoredFile.created_ns, StoredFile.id)
        rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).all()
    return [FileInfo(*found) for found in rows[:limit]], len(rows) > limit


async def remove(db: Database, org_id: str, file_id: str) -> bool:
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            gone = await conn.execute(delete(StoredFile).where(StoredFile.id == file_id, StoredFile.org_id == org_id))
            return bool(gone.rowcount)


async def purge_expired(db: Database, now: float | None = None) -> int:
    at = int(time.time() if now is None else now)
    async with db.engine.connect() as conn:
        await conn.execution_options(writer=True)
        async with conn.begin():
            return (
                await conn.execute(delete(StoredFile).where(StoredFile.expires_at.is_not(None), StoredFile.expires_at <= at))
            ).rowcount
