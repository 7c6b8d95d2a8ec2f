"""The HTTP edge of the app: an x-request-id on every response, CORS, and unexpected exceptions answered in the envelope."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emporion.api.errors import INTERNAL_ERROR, render
from emporion.errors import EmporionError
from emporion.pipeline.stages import CLIENT_ADDRESS

log = logging.getLogger("emporion.api")

CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
# Any request header: the SDKs send their own (the OpenAI SDK's x-stainless-*, OpenAI-Organization);
# with no credentials mode (keys travel in Authorization) that gives a page nothing more.
CORS_HEADERS = ("*",)
# What a browser application may read of a response (a new x-emporion-* or x-ratelimit-* header goes here too).
CORS_EXPOSED = (
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-emporion-model",
    "x-emporion-provider",
    "x-emporion-upstream",
    "x-emporion-deployment",
    "x-emporion-attempts",
    "x-emporion-release",
    "x-emporion-license",
    "x-emporion-cost",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


class Edge:
    """Outermost: a response without its route's own ``x-request-id`` gets a new one; then CORS
    (only when origins are configured); then the net that turns an exception into a 500."""

    def __init__(self, app: ASGIApp, cors_origins: Sequence[str] = ()) -> None:
        inner: ASGIApp = Rescue(app)
        self.app = Cors(inner, cors_origins) if cors_origins else inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        client = scope.get("client")
        CLIENT_ADDRESS.set(client[0] if client else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message["headers"] = [*headers, (b"x-request-id", new_request_id().encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class Rescue:
    """An exception no handler took becomes OpenAI's 500 envelope here, with its traceback logged,
    so that Starlette's ServerErrorMiddleware never re-raises it and uvicorn keeps the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the lifespan: a failure to start must stop the server
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            if started:
                raise  # half a response is out: only closing the connection tells the client
            request_id = new_request_id()
            log.exception("unexpected error on %s %s (x-request-id %s)", scope["method"], scope["path"], request_id, exc_info=exc)
            response = render(Request(scope), EmporionError(INTERNAL_ERROR))
            response.headers["x-request-id"] = request_id
            await response(scope, receive, send)


class Cors:
    """Starlette's CORS for the configured origins; a request from any other origin gets no CORS
    header at all (its preflight is answered by the routes, with a 405 or 404)."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.any_origin = "*" in self.origins
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=CORS_METHODS, allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._allowed(scope):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"origin":
                return self.any_origin or value.decode("latin-1") in self.origins
        return False
