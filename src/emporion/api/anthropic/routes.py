"""Anthropic's ``POST /v1/messages``, served by any model behind Emporion (thin: translate, run
the same pipeline, translate back)."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion import pipeline
from emporion.api.anthropic.schemas import MessagesRequest
from emporion.api.anthropic.translate import new_message_id, to_events, to_message, to_openai
from emporion.api.body import invalid_request, parse_body
from emporion.api.openai.render import provenance
from emporion.api.openai.routes import authenticate, json_response
from emporion.api.openai.schemas import ChatCompletionRequest
from emporion.api.openai.sse import EventStream
from emporion.core.money import format_usd


async def messages(request: Request) -> Response:
    deps, principal = await authenticate(request)
    wire = await parse_body(request, MessagesRequest, deps.settings.server.max_body_bytes)
    try:
        chat = ChatCompletionRequest.model_validate(to_openai(wire))
    except ValidationError as exc:
        raise invalid_request(exc) from None
    message_id = new_message_id()
    if wire.stream:
        stream = await pipeline.generate_stream(deps, principal, chat, message_id)
        events = to_events(message_id, stream.route.model.id, aiter(stream))
        return EventStream(events, {**provenance(stream.route, message_id), **stream.headers}, on_close=stream.aclose)  # type: ignore[return-value]
    generation = await pipeline.generate(deps, principal, chat, message_id)
    body = to_message(message_id, generation.route.model.id, generation.completion)
    headers = {**provenance(generation.route, message_id), **generation.headers, "x-emporion-cost": format_usd(generation.cost)}
    return json_response(body, headers=headers)


routes = [Route("/v1/messages", messages, methods=["POST"])]
