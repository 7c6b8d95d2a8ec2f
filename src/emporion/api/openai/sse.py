"""Server-sent events exactly as OpenAI frames them, with disconnect handling.

A small ASGI response rather than Starlette's StreamingResponse: whatever happens (the stream
ends, fails, or the client goes away mid-stream) ``on_close`` runs, so the engine slot and the
upstream connection are freed and generation stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def ends_with_done(data: bytes) -> bool:
    return data.endswith(DONE)


class EventStream:
    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: dict[str, str],
        on_close: Callable[[], Awaitable[None]],
        is_last: Callable[[bytes], bool] = ends_with_done,
    ) -> None:
        self.events = events
        self.is_last = is_last  # the event that ends a whole stream (what a cut one never sent)
        self.headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **headers,
        }
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            sender = asyncio.create_task(self._send_all(send))
            watcher = asyncio.create_task(_wait_disconnect(receive))
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            for task in (sender, watcher):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await task
            if sender in done and not sender.cancelled():
                with contextlib.suppress(OSError):
                    sender.result()
        finally:
            await self.on_close()

    async def _send_all(self, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()],
            }
        )
        async for data in self.events:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
