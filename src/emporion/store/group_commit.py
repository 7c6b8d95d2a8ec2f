"""Group commit: writes queued by many requests are applied by one task, many to a transaction.

A transaction costs the same whether it carries one write or a hundred (on SQLite the commit and
its fsync are most of it), so under load the writer takes everything queued while the previous
commit ran and applies it at once: throughput grows with load and no caller waits longer than
one commit behind the queue. Each caller awaits its own result, which exists only once the
transaction holding it has committed, so nothing acknowledged can be lost.

If a batch fails as a whole (a deadlock between replicas, a constraint), each of its writes is
tried again alone, so one bad write fails only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("emporion.store")

Op = TypeVar("Op")
Apply = Callable[[AsyncConnection, Sequence[Op]], Awaitable[list[Any]]]

MAX_BATCH = 256


class GroupCommit(Generic[Op]):
    def __init__(self, engine: AsyncEngine, apply: Apply[Op]) -> None:
        self.engine = engine
        self.apply = apply  # returns one result (or an exception instance) per op, in order
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    async def submit(self, op: Op) -> Any:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._queue), name="group-commit")
        assert self._queue is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        result = await asyncio.shield(future)  # a cancelled caller must not undo a committed write
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(self) -> None:
        """Applies what is queued, then stops."""
        if self._task is None:
            return
        assert self._queue is not None
        while not self._queue.empty() and not self._task.done():
            await asyncio.sleep(0.001)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self, queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]]]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            results = await self._commit([op for op, _ in batch])
            if len(batch) > 1 and isinstance(results, BaseException):
                results = [await self._commit([op]) for op, _ in batch]
                results = [r if isinstance(r, BaseException) else r[0] for r in results]
            for (_, future), result in zip(batch, _spread(results, len(batch)), strict=True):
                if not future.done():
                    future.set_result(result)
            self.batches += 1
            self.ops += len(batch)

    async def _commit(self, ops: list[Op]) -> list[Any] | BaseException:
        try:
            async with self.engine.begin() as conn:
                return await self.apply(conn, ops)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transaction rolled back: no write of this batch happened
            if len(ops) == 1:
                log.warning("ledger write failed: %s", exc)
            return exc


def _spread(results: list[Any] | BaseException, count: int) -> list[Any]:
    return [results] * count if isinstance(results, BaseException) else results
