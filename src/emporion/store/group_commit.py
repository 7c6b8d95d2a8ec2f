"""Group commit: writes queued by many requests are applied by one task, many to a transaction.

A transaction costs about the same whether it carries one write or a hundred (its round trips,
and the fsync at commit, are most of it), so under load the writer takes everything queued while
the previous commit ran and applies it at once: throughput grows with load and no caller waits
longer than one commit behind the queue. Each caller awaits its own result, which exists only
once the transaction holding it has committed: a write is acknowledged after its commit, never
before, and a caller that is cancelled meanwhile does not undo it. What a commit guarantees is
the database's: on SQLite with ``synchronous=FULL`` (the default, store/session.py) and on
PostgreSQL with ``synchronous_commit=on`` (its default) an acknowledged write survives a crash of
the process, of the OS and a power loss (on a disk that honours fsync); with
``synchronous=NORMAL`` it survives a crash of the process only, and an OS crash or a power loss
can undo the last acknowledged writes (never a part of a transaction). The converse does not
hold: a write whose commit went unanswered (the connection lost during COMMIT) fails its caller
though it may have been applied; postings are idempotent by request id, so a settlement tried
again is not applied twice.

A batch lost to a deadlock or a serialization failure between replicas is tried again as a
whole (twice); a batch that fails otherwise (a constraint) has each of its writes tried again
alone, so one bad write fails only its own caller. On SQLite the transaction takes the write lock
at BEGIN (``writer`` execution option, see store/session.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emporion.errors import EmporionError, ServiceUnavailable

log = logging.getLogger("emporion.store")

Op = TypeVar("Op")
Apply = Callable[[AsyncConnection, Sequence[Op]], Awaitable[list[Any]]]

MAX_BATCH = 256


class GroupCommit(Generic[Op]):
    def __init__(self, engine: AsyncEngine, apply: Apply[Op], on_rollback: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.apply = apply  # returns one result (or an exception instance) per op, in order
        self.on_rollback = on_rollback  # forget what the rolled-back transaction seemed to create
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]] | None] | None = None
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
        """Applies what is queued (the batch being committed included), then stops."""
        if self._task is None:
            return
        assert self._queue is not None
        self._queue.put_nowait(None)
        try:
            await self._task
        finally:
            self._task = None

    async def _run(self, queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]] | None]) -> None:
        stopping = False
        while not stopping or not queue.empty():  # what was queued after the stop is applied too
            batch: list[tuple[Op, asyncio.Future[Any]]] = []
            item = await queue.get()
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= MAX_BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                await self._apply_batch(batch)

    async def _apply_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        ops = [op for op, _ in batch]
        results = await self._try(ops)
        if len(ops) > 1 and isinstance(results, BaseException):
            results = [r if isinstance(r, BaseException) else r[0] for r in [await self._try([op]) for op in ops]]
        for (_, future), result in zip(batch, _spread(results, len(batch)), strict=True):
            if isinstance(result, Exception) and not isinstance(result, EmporionError):
                log.warning("ledger write failed: %r", result)
                result = ServiceUnavailable("The billing database failed this request (nothing was charged); try again.")
            if not future.done():
                future.set_result(result)
        self.batches += 1
        self.ops += len(batch)

    async def _try(self, ops: list[Op]) -> list[Any] | BaseException:
        """Commits the batch; again, up to twice, when it lost a deadlock to another replica."""
        for _ in range(2):
            results = await self._commit(ops)
            if not _contended(results):
                return results
        return await self._commit(ops)

    async def _commit(self, ops: list[Op]) -> list[Any] | BaseException:
        try:
            async with self.engine.connect() as conn:
                await conn.execution_options(writer=True)
                async with conn.begin():
                    return await self.apply(conn, ops)
        except asyncio.CancelledError:
            self.on_rollback()
            raise
        except Exception as exc:  # the transaction rolled back: no write of this batch happened
            self.on_rollback()
            return exc


def _contended(results: list[Any] | BaseException) -> bool:
    """A deadlock or serialization failure: the whole batch may well pass when tried again."""
    return isinstance(results, DBAPIError) and getattr(results.orig, "sqlstate", None) in ("40P01", "40001")


def _spread(results: list[Any] | BaseException, count: int) -> list[Any]:
    return [results] * count if isinstance(results, BaseException) else results
