"""``Idempotency-Key`` on the generation routes, as Stripe and the IETF httpapi draft have it: a
retry of a request with the same key (and the same body) by the same organization within 24 hours
gets the first request's response again, with ``idempotent-replayed: true``, and is neither sent
upstream nor charged again.

- The same key with another request (another body or route): 422 ``idempotency_key_reused``.
- The same request again while the first still runs: 409 ``idempotency_request_in_progress``
  with ``Retry-After: 1`` (the OpenAI SDKs retry a 409 by themselves).
- A request that fails (any error: 4xx or 5xx) is not stored, unlike Stripe: nothing was charged
  for it, and a retry with the same key runs anew. Nor is one cancelled because its client left
  before the answer (api/disconnect.py): it is billed for what it generated, and a retry runs.
- A stream is stored whole once it reached its last event (``data: [DONE]``, or the Responses
  API's ``response.completed``), before the client reads it, so a retry that follows finds it,
  and is replayed as the same event stream; a stream
  cut short (client gone, upstream failed mid-way) is charged for what it generated but not
  stored: the key is released, and a retry generates again.

A request without the header costs nothing here: no database round trip. The rows live in the
database (store/idempotency.py), so every replica sees them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from emporion.api.body import read_body
from emporion.api.openai.sse import EventStream
from emporion.errors import Conflict, InvalidRequest, Unprocessable
from emporion.pipeline import Deps
from emporion.store import idempotency as store

log = logging.getLogger("emporion.api")

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"
MAX_KEY_LENGTH = 255
NOT_STORED = ("content-length", "x-ratelimit-")  # computed again / what the limits were then, not now

Handler = Callable[[Request], Awaitable[Response]]


def idempotent(handler: Handler) -> Handler:
    """The route, made idempotent for requests that carry an ``Idempotency-Key``."""

    @functools.wraps(handler)
    async def route(request: Request) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(request)
        return await _guarded(request, handler, key)

    return route


async def _guarded(request: Request, handler: Handler, key: str) -> Response:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    deps: Deps = request.app.state.deps
    principal = await deps.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
    raw = await read_body(request, deps.settings.server.max_body_bytes)
    request._body = raw  # the route reads the body again (Starlette serves it from here)
    outcome = await store.claim(
        deps.db, principal.org_id, key, fingerprint(request.method, request.url.path, raw), deps.settings.metering.hold_ttl_s
    )
    if outcome == "reused":
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request; use a new key for a new request.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    if outcome == "in_progress":
        raise Conflict(
            "A request with this Idempotency-Key is still being processed; retry it shortly.",
            param="Idempotency-Key",
            code="idempotency_request_in_progress",
            retry_after_s=1,
        )
    if isinstance(outcome, store.Stored):
        return Response(outcome.body, status_code=outcome.status, headers={**outcome.headers, REPLAYED: "true"})
    assert isinstance(outcome, store.Claim)
    try:
        response = await handler(request)
    except BaseException:
        await _quietly(store.release(deps.db, outcome))
        raise
    if isinstance(response, EventStream):
        return _recorded(response, deps, outcome)
    if response.status_code >= 400:
        await _quietly(store.release(deps.db, outcome))
    else:
        await _quietly(
            store.complete(deps.db, outcome, response.status_code, _kept(response.headers.items()), bytes(response.body))
        )
    return response


def fingerprint(method: str, path: str, raw: bytes) -> str:
    """Which request this is: the same JSON body written with other spacing or key order is the same request."""
    try:
        body = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        body = raw  # the route refuses it (400), and the key is released
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode("utf-8", "surrogateescape"), body)).hexdigest()


def _kept(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers if not name.lower().startswith(NOT_STORED)}


def _recorded(response: EventStream, deps: Deps, held: store.Claim) -> EventStream:
    """The stream, recorded as it goes: stored once its last event is reached, released otherwise."""
    recorder = _Recorder(response.events, deps, held, _kept(response.headers.items()), response.is_last)
    response.events = recorder
    settle = response.on_close

    async def on_close() -> None:
        try:
            await settle()
        finally:
            if not recorder.stored:
                await _quietly(store.release(deps.db, held))

    response.on_close = on_close
    return response


class _Recorder:
    """Passes a stream's events on, keeping them; stores them all just before its last event (the
    ``[DONE]`` line of chat, ``response.completed`` of the Responses API) goes out (the stream was
    settled before its last chunk, see pipeline.StreamMeter)."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        deps: Deps,
        held: store.Claim,
        headers: dict[str, str],
        is_last: Callable[[bytes], bool],
    ) -> None:
        self.events = events
        self.is_last = is_last
        self.deps = deps
        self.held = held
        self.headers = headers
        self.body = bytearray()
        self.stored = False

    def __aiter__(self) -> _Recorder:
        return self

    async def __anext__(self) -> bytes:
        data = await self.events.__anext__()
        self.body += data
        if self.is_last(data):
            self.stored = await _quietly(store.complete(self.deps.db, self.held, 200, self.headers, bytes(self.body))) or False
        return data


async def _quietly(write: Coroutine[Any, Any, bool]) -> bool | None:
    """A key's write, finished even if the request is being cancelled; a failure is logged, never
    the request's: the worst it leaves is a key that answers 409 until its lock expires."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])  # the write goes on; the cancellation is the caller's
        raise
    except Exception as exc:
        log.warning("idempotency key write failed: %r", exc)
        return None
