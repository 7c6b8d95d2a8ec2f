"""The in-process limiter: a dict of TATs and a dict of held concurrency slots.

``MemoryLimiter(clock=time.monotonic, max_buckets=100_000)``. A check reads, decides and charges
with no ``await`` in between, so under asyncio it is atomic without locks, and costs O(number of
buckets in the request). Buckets whose TAT has passed are full, exactly as if absent; they are
swept every ``sweep_interval_s`` or when there are more than ``max_buckets``, so memory holds only
buckets used within the last period (the sweep is O(n), amortized over the checks between).
``clock`` is injectable: tests drive it by hand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from emporion.limits import Decision, Held, Kind, Limit, Slot, decide, hold_in_steps
from emporion.limits.gcra import debit, refund
from emporion.limits.headers import concurrency_exceeded


class MemoryLimiter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_buckets: int = 100_000,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self.clock = clock
        self.max_buckets = max_buckets
        self.sweep_interval_s = sweep_interval_s
        self.tats: dict[str, float] = {}
        self.held: dict[str, int] = {}  # concurrency scope -> slots held
        self._sweep_at = clock() + sweep_interval_s
        self._sweep_size = max_buckets

    async def check(self, limits: Sequence[Limit]) -> Decision:
        return self.check_now(limits)

    def check_now(self, limits: Sequence[Limit]) -> Decision:
        """``check`` without the coroutine: decide and charge in one synchronous step."""
        now = self.clock()
        decision, charged = decide(limits, self.tats, now)
        self.tats.update(charged)
        if len(self.tats) > self._sweep_size or now >= self._sweep_at:
            self.sweep(now)
        return decision

    async def refund(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        now = self.clock()
        for limit in limits:
            given = units.get(limit.kind, 0)
            tat = self.tats.get(limit.key)
            if given > 0 and tat is not None:
                self.tats[limit.key] = refund(tat, now, limit.rate, given)

    async def debit(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        now = self.clock()
        for limit in limits:
            if (used := units.get(limit.kind, 0)) > 0:
                self.tats[limit.key] = debit(self.tats.get(limit.key), now, limit.rate, used)

    @asynccontextmanager
    async def concurrency(self, scope: str, max_concurrent: int) -> AsyncIterator[None]:
        held = self.held.get(scope, 0)
        if held >= max_concurrent:
            raise concurrency_exceeded(scope, max_concurrent)
        self.held[scope] = held + 1
        try:
            yield
        finally:
            if (left := self.held[scope] - 1) > 0:
                self.held[scope] = left
            else:
                del self.held[scope]

    def hold(self, limits: Sequence[Limit], slots: Sequence[Slot]) -> AbstractAsyncContextManager[Held]:
        return hold_in_steps(self, limits, slots)

    def sweep(self, now: float) -> None:
        """Forget full buckets (TAT in the past): they decide exactly as absent ones."""
        self.tats = {key: tat for key, tat in self.tats.items() if tat > now}
        self._sweep_at = now + self.sweep_interval_s
        self._sweep_size = max(self.max_buckets, 2 * len(self.tats))

    async def aclose(self) -> None:
        self.tats.clear()
