"""The request log: every call, refused ones included, as a stage on the request path.

``observe`` only appends the call's entry to a queue; a writer task of its own writes the queue
in batches (every ``[request_log] flush_ms``, in a transaction of its own: never in the ledger's),
so logging cannot slow a request down. A queue past ``max_queued`` entries drops the oldest (a
warning says how many): a database that stops answering costs the log, not the service.

An entry has the request's id, time, organization, key, end user, tags, model asked and served,
deployment, upstream, attempts, status (``completed``, ``partial``, ``cancelled``, ``failed``, or
``refused`` before anything was held), the HTTP status and error code, tokens, cost, latency, time
to first token and tokens per second (streams), finish reason, screening flags and the client's
address. Prompt and completion bodies are kept only under the organization's retention policy
(``retention_days``; none by default) in ``request_bodies``, which the sweeper purges when their
days are up (the entry and the billing record stay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson

from emporion.errors import EmporionError
from emporion.pipeline.stages import Call, Stage
from emporion.providers.base import Chunk
from emporion.store import request_log as store
from emporion.store.session import Database

log = logging.getLogger("emporion.request_log")

FIRST_TOKEN = "request_log.first_token_at"
STREAMED_TEXT = "request_log.text"
KINDS = {"ChatCompletionRequest": "chat", "CompletionRequest": "completion", "EmbeddingRequest": "embedding"}


class RequestLog(Stage):
    def __init__(self, db: Database, flush_s: float, max_queued: int) -> None:
        self.db = db
        self.flush_s = flush_s
        self._entries: deque[tuple[dict[str, Any], dict[str, Any] | None]] = deque(maxlen=max_queued)
        self._dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- the stage -------------------------------------------------------------------------------

    def on_chunk(self, call: Call, chunk: Chunk) -> None:
        if not any(choice.carries_output for choice in chunk.choices):
            return
        call.extra.setdefault(FIRST_TOKEN, time.monotonic())
        if call.principal.retention_days:
            pieces = call.extra.setdefault(STREAMED_TEXT, [])
            assert isinstance(pieces, list)
            pieces.extend(choice.text for choice in chunk.choices if choice.text)

    async def observe(self, call: Call) -> None:
        if len(self._entries) == self._entries.maxlen:
            self._dropped += 1
        self._entries.append((entry_of(call), body_of(call)))
        if len(self._entries) >= 256:
            self._wake.set()

    # --- the writer ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_on(), name="request-log")

    async def aclose(self) -> None:
        """Writes what is queued, then stops."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Writes every entry queued so far (tests, shutdown)."""
        while self._entries:
            batch = [self._entries.popleft() for _ in range(min(len(self._entries), 1000))]
            try:
                await store.write(self.db, [entry for entry, _ in batch], [body for _, body in batch if body is not None])
            except Exception as exc:  # the log is lost, never the request: say so and go on
                log.error("the request log could not write %d entries: %r", len(batch), exc)
        if self._dropped:
            log.warning("the request log dropped %d entries: its queue was full", self._dropped)
            self._dropped = 0

    async def _write_on(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()


def entry_of(call: Call) -> dict[str, Any]:
    route, usage, error = call.route, call.usage, call.error
    now = time.time()
    latency_s = time.monotonic() - call.started_at
    first = call.extra.get(FIRST_TOKEN)
    ttft_ms = int((first - call.started_at) * 1000) if isinstance(first, float) else None
    output = usage.output_tokens if usage else 0
    per_s = None
    if isinstance(first, float) and output > 1:
        generating = time.monotonic() - first
        per_s = round(output / generating, 2) if generating > 0 else None
    status = call.status or ("refused" if error is not None else "completed")
    http_status = 200
    code = None
    if isinstance(error, EmporionError):
        http_status, code = error.status, error.instance_code or error.code
    elif isinstance(error, asyncio.CancelledError):
        http_status, code = 499, "client_closed_request"
    elif error is not None:
        http_status, code = 500, "server_error"
    finish = None
    if call.completion is not None and call.completion.choices:
        finish = call.completion.choices[0].finish_reason
    ask = call.ask
    flags = call.extra.get("screening.flags")
    return {
        "id": call.request_id,
        "org_id": call.principal.org_id,
        "key_id": call.principal.key_id,
        "end_user": _user(getattr(ask, "user", None)),
        "tags": orjson.dumps(call.tags).decode() if call.tags else None,
        "endpoint": KINDS.get(type(ask).__name__, "chat"),
        "model": ask.model[:200],
        "served_model": route.model.id if route else None,
        "deployment": route.candidate.key[:400] if route else None,
        "upstream": route.candidate.upstream.name if route else None,
        "provider": route.provider if route else None,
        "attempts": route.attempts if route else 0,
        "status": status,
        "http_status": http_status,
        "error_code": code[:80] if code else None,
        "streamed": call.streamed,
        "input_tokens": (usage.input_tokens + usage.cache_write_tokens) if usage else 0,
        "cached_input_tokens": usage.cached_input_tokens if usage else 0,
        "output_tokens": output,
        "cost_nanos": int(call.cost or 0),
        "latency_ms": int(latency_s * 1000),
        "ttft_ms": ttft_ms,
        "tokens_per_s": per_s,
        "finish_reason": finish,
        "flags": orjson.dumps(flags).decode() if flags else None,
        "client_address": call.client[:64] if call.client else None,
        "created_at": int(now),
        "created_ms": int(now * 1000),
    }


def body_of(call: Call) -> dict[str, Any] | None:
    """The prompt and completion to keep, when the organization keeps them."""
    days = call.principal.retention_days
    if not days:
        return None
    completion: str | None = None
    if call.completion is not None:
        completion = "".join(choice.text or "" for choice in call.completion.choices)
    elif isinstance(pieces := call.extra.get(STREAMED_TEXT), list):
        completion = "".join(pieces)
    return {
        "request_id": call.request_id,
        "org_id": call.principal.org_id,
        "prompt": call.ask.model_dump_json(exclude_none=True),
        "completion": completion,
        "expires_at": int(time.time() + days * 86_400),
    }


def _user(user: object) -> str | None:
    return user.replace("\x00", "")[:256] or None if isinstance(user, str) else None
