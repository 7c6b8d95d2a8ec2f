"""The database: an async SQLAlchemy engine, brought to the newest schema with Alembic on open.

SQLite runs in WAL mode with ``synchronous=FULL`` by default: the WAL is synced to disk at every
commit, so a committed transaction survives a crash of the process or of the OS, and a power loss
(on a disk that honours fsync). With ``synchronous=NORMAL`` ([database] sqlite_synchronous =
"normal") the WAL is synced only at checkpoints: commits are cheaper and the database is never
corrupted, but an OS crash or a power loss can undo the last committed transactions (a crash of
the process alone loses nothing). PostgreSQL is as durable at commit as its server is configured
to be (``synchronous_commit``, on by default).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from emporion.settings import SqliteSynchronous
from emporion.store.inline_sqlite import inline_creator

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x656D706F  # "empo": the PostgreSQL advisory lock held while migrating
SYNCHRONOUS: dict[str, str] = {"full": "FULL", "normal": "NORMAL"}  # [database] sqlite_synchronous -> PRAGMA synchronous


class Database:
    def __init__(self, url: str, sqlite_synchronous: SqliteSynchronous = "full") -> None:
        if sqlite_synchronous not in SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous is one of {', '.join(SYNCHRONOUS)}, not {sqlite_synchronous!r}")
        self.url = _with_async_driver(url)
        self.sqlite_synchronous = sqlite_synchronous
        self.engine: AsyncEngine = self.new_engine()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def new_engine(self, *, inline: bool = False, **options: Any) -> AsyncEngine:
        """An engine on this database, set up like ``engine`` (the ledger's writer has one of its
        own, on its own event loop: store/group_commit.py). ``inline``: on SQLite, its statements
        run in the thread of the loop that awaits them (store/inline_sqlite.py): for a loop that
        does nothing else."""
        if inline and self.url.startswith("sqlite"):
            options["async_creator"] = inline_creator(os.path.abspath(make_url(self.url).database or ""))  # as the dialect does
        engine = create_async_engine(self.url, **options)
        if self.url.startswith("sqlite"):
            pragmas = partial(_sqlite_pragmas, synchronous=SYNCHRONOUS[self.sqlite_synchronous])
            event.listen(engine.sync_engine, "connect", pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas starting together migrate one at a time
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await conn.run_sync(_upgrade_to_head)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def close(self) -> None:
        await self.engine.dispose()


async def open_database(url: str, sqlite_synchronous: SqliteSynchronous = "full") -> Database:
    db = Database(url, sqlite_synchronous)
    await db.migrate()
    return db


def _with_async_driver(url: str) -> str:
    """``postgresql://`` and ``sqlite://`` URLs as people write them, with the async drivers used here."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _upgrade_to_head(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection, _record, synchronous: str) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")  # per connection: every pooled one gets it
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
    # The sqlite3 module opens a transaction only before INSERT/UPDATE/DELETE, so a SAVEPOINT
    # first in a transaction would start (and its RELEASE commit) one of its own: SQLAlchemy
    # emits BEGIN itself instead (_sqlite_begin), and a transaction is one transaction.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE for writers (the write lock from the start: no deadlock upgrading a read lock,
    # busy_timeout applies); readers stay deferred so they never wait for a writer (WAL).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")
