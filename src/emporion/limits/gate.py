"""Admission to a bounded resource (a local engine's slots): N run at once, a bounded queue waits, the rest are turned away (503 with Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from emporion.errors import EngineOverloaded


class Admission:
    def __init__(self, running: int, queued: int, *, retry_after_s: float = 1.0) -> None:
        self.capacity = running
        self.queue_size = queued
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(running)
        self.running = 0
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.running >= self.capacity and self.waiting >= self.queue_size:
            raise EngineOverloaded(
                "The local engine is at capacity and its queue is full; retry shortly.", retry_after_s=self.retry_after_s
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
