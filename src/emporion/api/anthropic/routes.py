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
from emporion.formats.anthropic import new_message_id, to_events, to_message, to_openai
from emporion.formats.anthropic_schemas import MessagesRequest
from emporion.pipeline import Streamed, handle
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


routes = [Route("/v1/messages", messages, methods=["POST"])]
