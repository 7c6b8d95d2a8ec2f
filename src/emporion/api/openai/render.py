"""Replies in OpenAI's wire format: completion objects, stream chunks, provenance headers."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from emporion.api.openai.sse import DONE, event
from emporion.core.money import Nanos, to_usd
from emporion.core.usage import Usage
from emporion.errors import EmporionError
from emporion.providers.base import Chunk, Completion, Endpoint
from emporion.routing.router import Route

OBJECT = {"chat": "chat.completion", "completion": "text_completion"}
CHUNK_OBJECT = {"chat": "chat.completion.chunk", "completion": "text_completion"}
ID_PREFIX = {"chat": "chatcmpl-", "completion": "cmpl-"}


def new_id(endpoint: Endpoint) -> str:
    return ID_PREFIX[endpoint] + secrets.token_urlsafe(18)


def provenance(route: Route, request_id: str) -> dict[str, str]:
    model = route.model
    return {
        "x-request-id": request_id,
        "x-emporion-model": model.id,
        "x-emporion-provider": route.provider,
        "x-emporion-upstream": route.candidate.upstream.name,
        "x-emporion-deployment": route.candidate.key,
        "x-emporion-attempts": str(route.attempts),
        "x-emporion-release": model.release,
        "x-emporion-license": model.license,
    }


def usage_with_cost(usage: Usage, cost: Nanos) -> dict[str, Any]:
    """OpenAI's usage object, with the request's cost in USD as OpenRouter reports it."""
    return {**usage.to_openai(), "cost": float(to_usd(cost))}


def render_completion(
    endpoint: Endpoint, response_id: str, route: Route, completion: Completion, cost: Nanos = Nanos(0)
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": OBJECT[endpoint],
        "created": int(time.time()),
        "model": route.model.id,
        "choices": [replace(choice, index=index).to_openai(endpoint) for index, choice in enumerate(completion.choices)],
        "usage": usage_with_cost(completion.usage, cost),
        "system_fingerprint": None,
    }


async def render_stream(
    endpoint: Endpoint,
    response_id: str,
    route: Route,
    chunks: AsyncIterator[Chunk],
    include_usage: bool,
    charged: Callable[[], Nanos] = lambda: Nanos(0),
) -> AsyncIterator[bytes]:
    """OpenAI's framing: delta chunks, the finish_reason chunk, a usage chunk with empty choices
    when ``stream_options.include_usage`` is set (and ``usage: null`` on the others), [DONE].
    ``charged()`` is what the request cost once its chunks ran out (it is settled by then)."""
    created = int(time.time())
    head = {
        "id": response_id,
        "object": CHUNK_OBJECT[endpoint],
        "created": created,
        "model": route.model.id,
        "system_fingerprint": None,
    }
    extra = {"usage": None} if include_usage else {}
    usage = None
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices:
                yield event({**head, "choices": [choice.to_openai(endpoint) for choice in chunk.choices], **extra})
    except EmporionError as exc:
        # Output was already sent: the status line is gone. The stream ends with finish_reason
        # "error" and the error as an event; another model's tokens are never spliced in.
        finish = (
            {"index": 0, "delta": {}, "finish_reason": "error"}
            if endpoint == "chat"
            else {"index": 0, "text": "", "finish_reason": "error"}
        )
        yield event({**head, "choices": [{**finish, "logprobs": None}], **extra})
        yield event(exc.envelope())
        return
    if include_usage and usage is not None:
        yield event({**head, "choices": [], "usage": usage_with_cost(usage, charged())})
    yield DONE
