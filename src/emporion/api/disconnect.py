"""A client that leaves stops its request: the ASGI middleware that cancels a handler whose client
disconnected before its response began.

A non-streamed generation can run for minutes; without this, a client that gives up (a timeout,
a closed laptop) leaves it generating on the local engine, holding a slot others wait for. Once
a request's body has been read, a watcher waits for ``http.disconnect``; if it comes before the
response has started, the handler's task is cancelled — the upstream call is dropped, the engine
stops generating, and the request path settles what was generated (its ``finally`` blocks run).
A response already under way (a stream) is not cancelled: the watcher hands the disconnect to
the response, which notices it itself (``api/openai/sse.py``).

Under ``emporion serve`` the watcher costs nothing: the server's protocol (``api/protocol.py``)
calls the request's ``GONE`` callbacks when its connection is lost. Served by anything else (an
in-process ASGI client, another server), a task per request waits for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}
GONE = "emporion.gone"  # in the scope, where the server offers it: callbacks it calls when the client is gone


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None, "an ASGI app runs in a task"
        request = _Watched(receive, task, scope.get(GONE))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.responding = True
            await send(message)

        try:
            await self.app(scope, request.receive, sending)
        except asyncio.CancelledError:
            # The watcher's cancellation, and no other (the server's own, on shutdown) on top: the
            # client is gone and the path has settled what it made; nobody is left to answer.
            if request.cancelled and task.uncancel() == 0:
                return
            raise
        finally:
            request.stop()


class _Watched:
    """The request's receive channel; once the body is in, the client's leaving cancels the task."""

    def __init__(self, receive: Receive, handler: asyncio.Task[Any], gone: list[Callable[[], None]] | None) -> None:
        self._receive = receive
        self.handler = handler  # the task running the request, cancelled when its client leaves
        self.responding = False
        self.cancelled = False
        self.finished = False  # the app returned or raised: the task runs someone else's code now
        self._told = gone  # the server's callbacks: None where it offers none (then a watcher task)
        self._read = False
        self._left: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._read:  # the body is in: what comes next is the disconnect
            if self._told is not None:
                return await self._receive()
            assert self._left is not None
            await self._left.wait()
            return DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._read = True
            if self._told is None:
                self._left = asyncio.Event()
                self._left.set()
        elif not message.get("more_body", False):
            self._read = True
            if self._told is not None:
                self._told.append(self._gone)
            else:
                self._left = asyncio.Event()
                self._watcher = asyncio.create_task(self._watch())
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        assert self._left is not None
        self._left.set()
        self._gone()

    def _gone(self) -> None:
        if not self.responding and not self.finished:
            self.cancelled = True
            self.handler.cancel()

    def stop(self) -> None:
        self.finished = True
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
