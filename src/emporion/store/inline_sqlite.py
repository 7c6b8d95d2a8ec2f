"""SQLite connections whose statements run in the calling thread, for an event loop that does
nothing but write (the ledger's writer thread, ``store/group_commit.py``).

aiosqlite runs each connection on a thread of its own: every statement is handed to it through a
queue and its result handed back to the event loop, so a commit batch of a dozen statements makes
three threads (the server's loop, the writer's loop, aiosqlite's) take turns on the GIL a dozen
times. On the writer's thread nothing else waits for that loop, so there the statements run
directly (sqlite3 lets go of the GIL while SQLite works, so the server's loop runs meanwhile).

Built on aiosqlite's connection (which SQLAlchemy's ``sqlite+aiosqlite`` dialect drives, through
its queue too): in place of the queue to the thread, one that runs what is put in it at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

Work = tuple[asyncio.Future[Any] | None, Callable[[], Any]]


class _AtOnce:
    """aiosqlite's queue to its thread, as aiosqlite and SQLAlchemy use it: ``put_nowait((future,
    function))``. The function runs now, here, and its outcome is the future's."""

    def put_nowait(self, work: Work) -> None:
        future, function = work
        try:
            result = function()
        except BaseException as exc:  # the caller awaits the future: it gets the error there
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection with no thread: awaiting any of its calls runs it at once."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _AtOnce()  # type: ignore[assignment]  # the queue's one method that is used

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()  # no thread to start


def inline_creator(database: str) -> Callable[[], Any]:
    """``create_async_engine(..., async_creator=)`` for the SQLite file ``database``, connected as
    the ``sqlite+aiosqlite`` dialect connects (the engine's "connect" listeners set the rest)."""

    async def connect() -> aiosqlite.Connection:
        return await InlineConnection(partial(sqlite3.connect, database, check_same_thread=False))

    return connect
