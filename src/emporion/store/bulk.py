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
    # Statements of a power of two rows each: SQLite keeps each statement text it prepared (the
    # driver's cache, per connection), and a statement of every batch size ever seen (hundreds of
    # rows, thousands of parameters each) held ~80 MB for the request log. So: at most a dozen shapes.
    most = 1 << (max(1, SQLITE_PARAMETERS // len(columns)).bit_length() - 1)
    name = table.__table__.name
    row = "(" + ",".join("?" * len(columns)) + ")"
    start = 0
    while start < len(rows):
        size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        sql = f"INSERT INTO {name} ({','.join(columns)}) VALUES " + ",".join([row] * size)
        await conn.exec_driver_sql(sql, tuple(value for item in chunk for value in item.values()))
        start += size
