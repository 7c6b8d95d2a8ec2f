"""Rows inserted in bulk, the way each database takes them fastest."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

SQLITE_PARAMETERS = 30_000  # parameters in one statement (SQLite allows 32,766)


async def insert_rows(conn: AsyncConnection, table: Any, rows: list[dict[str, Any]]) -> None:
    """Rows in bulk. On SQLite as multi-row INSERTs written here (the values as parameters), not an
    executemany: the sqlite3 driver steps an executemany row by row, letting go of the GIL around
    each step, and under load every step then waits for the busy event loop's thread to give the
    GIL back (a batch of 256 settlements took seconds). PostgreSQL's driver is asynchronous, with
    no thread: an executemany there is one round trip."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        await conn.execute(insert(table), rows)
        return
    columns = list(rows[0])
    per = max(1, SQLITE_PARAMETERS // len(columns))
    name = table.__table__.name
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        row = "(" + ",".join("?" * len(columns)) + ")"
        sql = f"INSERT INTO {name} ({','.join(columns)}) VALUES " + ",".join([row] * len(chunk))
        await conn.exec_driver_sql(sql, tuple(value for item in chunk for value in item.values()))
