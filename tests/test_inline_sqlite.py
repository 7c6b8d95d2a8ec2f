"""The ledger writer's SQLite engine (store/inline_sqlite.py): statements run in the awaiting
thread, with the same pragmas, errors and transactions as the aiosqlite engine it replaces."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import exc, text

from emporion.store.session import Database


def test_an_inline_engine_runs_on_the_callers_thread_like_the_threaded_one(tmp_path) -> None:
    async def scenario() -> None:
        db = Database(f"sqlite:///{tmp_path / 'inline.db'}")
        inline = db.new_engine(inline=True)
        threads = threading.active_count()
        try:
            async with inline.begin() as conn:
                assert threading.active_count() == threads  # no thread of its own, unlike aiosqlite's
                settings = [(await conn.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in ("journal_mode", "foreign_keys")]
                assert settings == ["wal", 1]
                await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
                await conn.execute(text("INSERT INTO t VALUES (1, 'a'), (2, 'b')"))
            with pytest.raises(exc.IntegrityError):
                async with inline.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (3, 'c')"))
                    await conn.execute(text("INSERT INTO t VALUES (1, 'again')"))
            async with db.engine.connect() as conn:  # the threaded engine sees what committed, and not the rest
                assert (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all() == ["a", "b"]
        finally:
            await inline.dispose()
            await db.close()

    asyncio.run(scenario())
