"""Anthropic's ``POST /v1/messages``, served by any model behind Emporion (thin: translate, run
the same pipeline, translate back)."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import invalid_request, parse_body
from emporion.api.openai.render import provenance
from emporion.api.openai.routes import authenticate_caller, json_response
from emporion.api.openai.sse import EventStream
from emporion.core.money import format_usd
from emporion.core.requests import ChatCompletionRequest
from emporion.engine.openai_tokens import estimate_chat
from emporion.formats.anthropic import new_message_id, to_events, to_message, to_openai
from emporion.formats.anthropic_schemas import CountTokensRequest, MessagesRequest
from emporion.pipeline import Streamed, handle
from emporion.pipeline.plan import plan
from emporion.providers.base import Completion


async def messages(request: Request) -> Response:
    deps, principal = await authenticate_caller(request)
    wire = await parse_body(request, MessagesRequest, deps.settings.server.max_body_bytes)
    try:
        chat = ChatCompletionRequest.model_validate(to_openai(wire))
    except ValidationError as exc:
        raise invalid_request(exc) from None
    message_id = new_message_id()
    outcome = await handle(deps, principal, chat, message_id, streamed=wire.stream)
    if isinstance(outcome, Streamed):
        events = to_events(message_id, outcome.route.model.id, aiter(outcome))
        return EventStream(events, {**provenance(outcome.route, message_id), **outcome.headers}, on_close=outcome.aclose)  # type: ignore[return-value]  # an ASGI app, as on the OpenAI routes
    assert isinstance(outcome.result, Completion)
    body = to_message(message_id, outcome.route.model.id, outcome.result)
    headers = {**provenance(outcome.route, message_id), **outcome.headers, "x-emporion-cost": format_usd(outcome.cost)}
    return json_response(body, headers=headers)


async def count_tokens(request: Request) -> Response:
    """The prompt tokens a Messages request would be charged for on the deployment the path would
    pick: exact where the deployment can count (the local engine's own tokenizer, Anthropic's and
    Gemini's counting endpoints), else an estimate in OpenAI's cl100k_base, flagged as one
    (``"estimate": true`` and ``x-emporion-token-count: estimate``). Free, as on Anthropic."""
    deps, principal = await authenticate_caller(request)
    wire = await parse_body(request, CountTokensRequest, deps.settings.server.max_body_bytes)
    try:
        messages_request = MessagesRequest.model_validate({**wire.model_dump(exclude_none=True), "max_tokens": 1})
        chat = ChatCompletionRequest.model_validate({**to_openai(messages_request), "max_tokens": None})
    except ValidationError as exc:
        raise invalid_request(exc) from None
    chosen = plan(deps, principal, chat, chat.model_dump(exclude_none=True))
    candidate = chosen.candidates[0]
    outgoing = chosen.request_for(candidate, chat)
    counted = await deps.adapters[candidate.upstream.adapter].count_tokens(outgoing, candidate.upstream)
    headers = {"x-emporion-model": candidate.model.id, "x-emporion-upstream": candidate.upstream.name}
    if counted is None:
        body = {"input_tokens": estimate_chat(outgoing.body), "estimate": True}
        return json_response(body, headers={**headers, "x-emporion-token-count": "estimate"})
    return json_response({"input_tokens": counted}, headers={**headers, "x-emporion-token-count": "exact"})


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
