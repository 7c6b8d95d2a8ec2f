"""CancelOnDisconnect (api/disconnect.py) on its own: a client that leaves before the response
starts cancels the request's task, told by the server (``GONE``) or found by a watcher task."""

from __future__ import annotations

import asyncio

import pytest

from emporion.api.disconnect import GONE, CancelOnDisconnect

BODY = {"type": "http.request", "body": b"{}", "more_body": False}


class Request:
    """One request's ASGI channel: the body, then nothing until ``leave()``."""

    def __init__(self, told: bool) -> None:
        self.scope: dict = {"type": "http", "method": "POST"}
        if told:
            self.scope[GONE] = []
        self.sent: list[dict] = []
        self._left = asyncio.Event()
        self._messages = [BODY]

    async def receive(self) -> dict:
        if self._messages:
            return self._messages.pop(0)
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self._left.set()
        for gone in self.scope.get(GONE, ()):
            gone()


def slow_app(events: list[str], respond_first: bool = False):
    async def app(scope, receive, send) -> None:
        await receive()
        if respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await asyncio.sleep(5)
            events.append("finished")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return app


async def started(told: bool, respond_first: bool = False) -> tuple[Request, list[str], asyncio.Task]:
    """A request to ``slow_app`` through the middleware, running and past its body."""
    events: list[str] = []
    request = Request(told)
    app = CancelOnDisconnect(slow_app(events, respond_first))
    running = asyncio.create_task(app(request.scope, request.receive, request.send))
    await asyncio.sleep(0.01)
    return request, events, running


TOLD = pytest.mark.parametrize("told", [True, False], ids=["told by the server", "watcher task"])


@TOLD
async def test_leaving_before_the_response_cancels_the_request_and_ends_quietly(told: bool) -> None:
    request, events, running = await started(told)
    request.leave()
    await asyncio.wait_for(running, 1)  # returns: nobody is left to answer
    assert events == ["cancelled"] and running.cancelling() == 0


@TOLD
async def test_leaving_during_a_response_leaves_it_to_the_response(told: bool) -> None:
    request, events, running = await started(told, respond_first=True)
    request.leave()
    await asyncio.sleep(0.05)
    assert not running.done() and events == []
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


@TOLD
async def test_the_servers_own_cancellation_goes_through(told: bool) -> None:
    _, events, running = await started(told)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert events == ["cancelled"]


async def test_leaving_after_the_app_returned_cancels_nothing() -> None:
    request = Request(told=True)

    async def quick(scope, receive, send) -> None:
        await receive()

    await CancelOnDisconnect(quick)(request.scope, request.receive, request.send)
    request.leave()  # the server calls back after the request is over
    await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0
