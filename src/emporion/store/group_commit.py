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

A write may also be *deferred* (``defer``): nobody waits for it, and the writer lets deferred
writes gather for up to ``flush_interval_s`` before it commits them (at once when an awaited
write arrives), so that at low load, too, one commit carries many of them. This is how requests
served from a balance lease settle after their answer left (metering/leases.py): what a deferred
write can lose is stated there. A deferred write whose transaction fails is tried again, after a
growing pause, until it commits (a refusal the ledger returns as a value is final, and so is a
constraint it breaks, which is logged); ``flush`` waits until everything deferred before it
committed, for a reader that must see its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emporion.errors import EmporionError, ServiceUnavailable

log = logging.getLogger("emporion.store")

Op = TypeVar("Op")
Apply = Callable[[AsyncConnection, Sequence[Op]], Awaitable[list[Any]]]

MAX_BATCH = 256
RETRY_S = (0.05, 0.2, 1.0, 5.0)  # pauses before a failed deferred write is tried again (the last repeats)

Item = tuple[Any, "asyncio.Future[Any] | None"]  # a write and its waiter (None: deferred)


class _Flush:
    """Queued by ``flush``: nothing to apply, it only makes the writer commit what is ahead of it."""


class GroupCommit(Generic[Op]):
    def __init__(
        self,
        engine: AsyncEngine,
        apply: Apply[Op],
        on_rollback: Callable[[], None] = lambda: None,
        flush_interval_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.apply = apply  # returns one result (or an exception instance) per op, in order
        self.on_rollback = on_rollback  # forget what the rolled-back transaction seemed to create
        self.flush_interval_s = flush_interval_s  # the longest a deferred write waits for company
        self._queue: asyncio.Queue[Item | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()  # an awaited write is queued: commit without waiting
        self._waiting: dict[asyncio.TimerHandle, Any] = {}  # deferred writes that failed, till they are tried again
        self._attempts: dict[int, int] = {}  # id of such a write -> the times it failed
        self.deferred = 0  # deferred writes not yet committed (or given up)
        self.batches = 0
        self.ops = 0

    def _queued(self) -> asyncio.Queue[Item | None]:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._queue), name="group-commit")
        assert self._queue is not None
        return self._queue

    async def submit(self, op: Op) -> Any:
        queue = self._queued()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.put_nowait((op, future))
        self._urgent.set()
        result = await asyncio.shield(future)  # a cancelled caller must not undo a committed write
        if isinstance(result, BaseException):
            raise result
        return result

    def defer(self, op: Op) -> None:
        """Queues a write nobody waits for: it commits within ``flush_interval_s`` (and one
        commit), or, when its transaction fails, later (see the module's docstring)."""
        self._queued().put_nowait((op, None))
        self.deferred += 1

    async def flush(self) -> None:
        """Returns once every write deferred before it has committed (those being tried again
        after a failure excepted)."""
        if self.deferred:
            await self.submit(_Flush())  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Applies what is queued (the batch being committed included), then stops."""
        if self._task is None:
            return
        assert self._queue is not None
        for handle, op in self._waiting.items():  # writes waiting to be tried again go with this last batch
            handle.cancel()
            self._queue.put_nowait((op, None))
        self._waiting.clear()
        self._queue.put_nowait(None)
        self._urgent.set()
        try:
            await self._task
        finally:
            self._task = None

    async def _run(self, queue: asyncio.Queue[Item | None]) -> None:
        stopping = False
        while not stopping or not queue.empty():  # what was queued after the stop is applied too
            batch: list[Item] = []
            item = await queue.get()
            if item is not None and item[1] is None and self.flush_interval_s and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):  # let deferred writes gather
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval_s)
            self._urgent.clear()
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

    async def _apply_batch(self, batch: list[Item]) -> None:
        flushes = [future for op, future in batch if isinstance(op, _Flush) and future is not None]
        batch = [(op, future) for op, future in batch if not isinstance(op, _Flush)]
        try:
            if batch:
                await self._apply_writes(batch)
        finally:
            for future in flushes:  # the writes ahead of them are committed
                if not future.done():
                    future.set_result(None)

    async def _apply_writes(self, batch: list[Item]) -> None:
        ops = [op for op, _ in batch]
        results = await self._try(ops)
        if len(ops) > 1 and isinstance(results, BaseException):
            results = [r if isinstance(r, BaseException) else r[0] for r in [await self._try([op]) for op in ops]]
        for (op, future), result in zip(batch, _spread(results, len(batch)), strict=True):
            if future is None:
                self._deferred_done(op, result)
                continue
            if isinstance(result, Exception) and not isinstance(result, EmporionError):
                log.warning("ledger write failed: %r", result)
                result = ServiceUnavailable("The billing database failed this request (nothing was charged); try again.")
            if not future.done():
                future.set_result(result)
        self.batches += 1
        self.ops += len(batch)

    def _deferred_done(self, op: Any, result: Any) -> None:
        attempt = self._attempts.pop(id(op), 0)
        if not isinstance(result, Exception) or isinstance(result, EmporionError):
            self.deferred -= 1  # committed (a refusal returned as a value is an answer too)
        elif isinstance(result, IntegrityError):
            self.deferred -= 1
            log.error("a deferred ledger write broke a constraint and is dropped: %r (%r)", op, result)
        else:
            pause = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            log.warning("a deferred ledger write failed (%r); trying again in %.2f s", result, pause)
            self._attempts[id(op)] = attempt + 1
            handle = asyncio.get_running_loop().call_later(pause, self._requeue, op)
            self._waiting[handle] = op

    def _requeue(self, op: Any) -> None:
        self._waiting = {handle: waiting for handle, waiting in self._waiting.items() if waiting is not op}
        self._queued().put_nowait((op, None))

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
