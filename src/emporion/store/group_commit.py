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
write arrives), so that at low load, too, one commit carries many of them. Awaited writes go
ahead of deferred ones, in batches of their own (short ones: under load the event loop is slow to
come back to a transaction between its statements, so a backlog of settlements must never delay a
request's hold); each kind keeps its order. This is how requests
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
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emporion.errors import EmporionError, ServiceUnavailable

log = logging.getLogger("emporion.store")

Op = TypeVar("Op")
Apply = Callable[[AsyncConnection, Sequence[Op]], Awaitable[list[Any]]]

MAX_BATCH = 256
MAX_BACKLOG = 8 * MAX_BATCH  # deferred writes queued at most: past it, ``room`` makes callers wait
ROOM_WAIT_S = 5.0
RETRY_S = (0.05, 0.2, 1.0, 5.0)  # pauses before a failed deferred write is tried again (the last repeats)


class _WriterThread:
    """An event loop on a thread of its own, with an engine of its own, where the writer's
    transactions run. On the gateway's event loop a transaction of ten statements waits ten
    times for a turn of that loop — under load, tens of milliseconds each — and the writer fell
    behind the requests it settles; here each batch costs the busy loop two turns: out and back."""

    def __init__(self, make_engine: Callable[[], AsyncEngine]) -> None:
        self.make_engine = make_engine
        self.engine: AsyncEngine | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="ledger-writer", daemon=True)
        self.thread.start()

    async def run(self, work: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._run(work), self.loop))

    async def _run(self, work: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
        if self.engine is None:
            self.engine = self.make_engine()
        return await work(self.engine)

    def _main(self) -> None:
        self.loop.run_forever()
        self.loop.close()

    def close(self) -> None:
        """Closes its connections and stops its loop; from any thread, without waiting."""
        if self.loop.is_closed() or not self.thread.is_alive():
            return

        async def finish() -> None:
            if self.engine is not None:
                await self.engine.dispose()
            self.loop.stop()

        with contextlib.suppress(RuntimeError):  # its loop is closed already
            asyncio.run_coroutine_threadsafe(finish(), self.loop)

    async def aclose(self) -> None:
        self.close()
        await asyncio.to_thread(self.thread.join, 10)


class GroupCommit(Generic[Op]):
    def __init__(
        self,
        engine: AsyncEngine,
        apply: Apply[Op],
        on_rollback: Callable[[], None] = lambda: None,
        flush_interval_s: float = 0.0,
        writer_engine: Callable[[], AsyncEngine] | None = None,
    ) -> None:
        """``writer_engine``: when given, transactions run on a thread of their own (_WriterThread)
        with an engine it makes there; else on the caller's event loop, with ``engine``."""
        self.engine = engine
        self.writer_engine = writer_engine
        self._thread: _WriterThread | None = None
        self.apply = apply  # returns one result (or an exception instance) per op, in order
        self.on_rollback = on_rollback  # forget what the rolled-back transaction seemed to create
        self.flush_interval_s = flush_interval_s  # the longest a deferred write waits for company
        # Awaited writes go first: a caller waits on them (a request's hold), while deferred ones
        # only have to be in the books soon; each queue keeps its own order.
        self._awaited: deque[tuple[Op, asyncio.Future[Any]]] = deque()
        self._deferred: deque[tuple[Op, int]] = deque()  # with its number (0: tried again after a failure)
        self._work = asyncio.Event()  # something is queued
        self._hurry = asyncio.Event()  # an awaited write or a flush is waiting: stop gathering
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._numbered = 0  # deferred writes numbered so far
        self._done = 0  # every deferred write up to this number has been tried
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._roomy: list[asyncio.Future[None]] = []  # callers of ``room`` waiting
        self._waiting: dict[asyncio.TimerHandle, Op] = {}  # deferred writes that failed, till they are tried again
        self._attempts: dict[int, int] = {}  # id of such a write -> the times it failed
        self.deferred = 0  # deferred writes not yet committed (or given up)
        self.batches = 0
        self.ops = 0

    def _running(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._work, self._hurry = asyncio.Event(), asyncio.Event()  # of this event loop
            self._task = asyncio.create_task(self._run(), name="group-commit")
        self._work.set()

    async def submit(self, op: Op) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._awaited.append((op, future))
        self._hurry.set()
        self._running()
        result = await asyncio.shield(future)  # a cancelled caller must not undo a committed write
        if isinstance(result, BaseException):
            raise result
        return result

    def defer(self, op: Op) -> None:
        """Queues a write nobody waits for: it commits within ``flush_interval_s`` (and one
        commit), or, when its transaction fails, later (see the module's docstring)."""
        self._numbered += 1
        self._deferred.append((op, self._numbered))
        self.deferred += 1
        self._running()

    async def room(self) -> None:
        """Waits while MAX_BACKLOG deferred writes or more are queued (backpressure: the writer
        falling behind slows the callers down instead of piling their writes up in memory), for
        ROOM_WAIT_S at most (a database that is down must not hang the callers)."""
        if len(self._deferred) < MAX_BACKLOG:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._roomy.append(future)
        self._running()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), ROOM_WAIT_S)

    async def flush(self) -> None:
        """Returns once every write deferred before it has been tried (committed, unless it failed
        and waits to be tried again)."""
        if self._done >= self._numbered:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((self._numbered, future))
        self._hurry.set()
        self._running()
        await asyncio.shield(future)

    async def aclose(self) -> None:
        """Applies what is queued (the batch being committed included), then stops."""
        if self._task is None:
            return
        for handle, op in self._waiting.items():  # writes waiting to be tried again go with this last batch
            handle.cancel()
            self._deferred.append((op, 0))
        self._waiting.clear()
        self._stopping = True
        self._work.set()
        self._hurry.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._thread is not None:
                thread, self._thread = self._thread, None
                await thread.aclose()

    async def _run(self) -> None:
        while True:
            if not self._awaited and not self._deferred:
                if self._stopping:
                    return
                self._work.clear()
                await self._work.wait()
                continue
            if not self._awaited and not self._flushes and not self._stopping and len(self._deferred) < MAX_BATCH:
                self._hurry.clear()
                if self.flush_interval_s:
                    with contextlib.suppress(TimeoutError):  # let deferred writes gather
                        await asyncio.wait_for(self._hurry.wait(), self.flush_interval_s)
            batch: list[tuple[Op, asyncio.Future[Any] | None]] = []
            last = 0
            if self._awaited:  # a batch of awaited writes only: it stays short
                while self._awaited and len(batch) < MAX_BATCH:
                    batch.append(self._awaited.popleft())
            else:
                while self._deferred and len(batch) < MAX_BATCH:
                    op, number = self._deferred.popleft()
                    batch.append((op, None))
                    last = max(last, number)
            if not self._awaited:
                self._hurry.clear()
            await self._apply_batch(batch)
            self._done = max(self._done, last)
            for target, future in [item for item in self._flushes if item[0] <= self._done]:
                self._flushes.remove((target, future))
                if not future.done():
                    future.set_result(None)
            if self._roomy and len(self._deferred) < MAX_BACKLOG // 2:
                for future in self._roomy:
                    if not future.done():
                        future.set_result(None)
                self._roomy.clear()

    async def _apply_batch(self, batch: list[tuple[Op, asyncio.Future[Any] | None]]) -> None:
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

    def _deferred_done(self, op: Op, result: Any) -> None:
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

    def _requeue(self, op: Op) -> None:
        self._waiting = {handle: waiting for handle, waiting in self._waiting.items() if waiting is not op}
        self._deferred.append((op, 0))
        self._running()

    async def _try(self, ops: list[Op]) -> list[Any] | BaseException:
        """Commits the batch; again, up to twice, when it lost a deadlock to another replica."""
        for _ in range(2):
            results = await self._commit(ops)
            if not _contended(results):
                return results
        return await self._commit(ops)

    async def _commit(self, ops: list[Op]) -> list[Any] | BaseException:
        if self.writer_engine is None:
            return await self._commit_on(self.engine, ops)
        if self._thread is None:
            self._thread = _WriterThread(self.writer_engine)
            weakref.finalize(self, self._thread.close)  # a writer dropped without aclose (a test's "crash")
        try:
            return await self._thread.run(lambda engine: self._commit_on(engine, ops))
        except asyncio.CancelledError:
            self.on_rollback()
            raise

    async def _commit_on(self, engine: AsyncEngine, ops: list[Op]) -> list[Any] | BaseException:
        try:
            async with engine.connect() as conn:
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
