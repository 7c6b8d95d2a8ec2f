"""A client that leaves stops its request: the ASGI middleware that cancels a handler whose client
disconnected before its response began.

A non-streamed generation can run for minutes; without this, a client that gives up (a timeout,
a closed laptop) leaves it generating on the local engine, holding a slot others wait for. Once
a request's body has been read, a watcher waits for ``http.disconnect``; if it comes before the
response has started, the handler's task is cancelled — the upstream call is dropped, the engine
stops generating, and the request path settles what was generated (its ``finally`` blocks run).
A response already under way (a stream) is not cancelled: the watcher hands the disconnect to
the response, which notices it itself (``api/openai/sse.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = _Watched(receive)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.responding = True
            await send(message)

        async def handling() -> None:  # create_task takes a coroutine, an ASGI app returns an awaitable
            await self.app(scope, request.receive, sending)

        handler = asyncio.create_task(handling())
        request.handler = handler
        try:
            await asyncio.shield(handler)
        except asyncio.CancelledError:
            if not handler.done():  # the server cancelled us: pass it on to the handler
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
                raise
            if not request.gone:
                raise
        finally:
            request.stop()


class _Watched:
    """The request's receive channel, with a watcher for the disconnect once the body is in."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.handler: asyncio.Task[Any] | None = None
        self.responding = False
        self.gone = False
        self._left = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._watcher is not None:  # the body is read: what comes next is the disconnect
            await self._left.wait()
            return DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._left.set()
            self.gone = True
        elif not message.get("more_body", False):
            self._watcher = asyncio.create_task(self._watch())
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._left.set()
        if not self.responding and self.handler is not None and not self.handler.done():
            self.handler.cancel()

    def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
