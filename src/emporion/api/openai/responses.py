"""OpenAI's Responses API, served by any chat model behind Emporion (thin: translate, run the same
pipeline as chat — limited, held, metered, recorded — translate back), and the stored responses
of each organization: retrieve, delete, list a response's input items."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import invalid_request, no_nul, parse_body
from emporion.api.idempotency import idempotent
from emporion.api.openai.render import provenance
from emporion.api.openai.routes import authenticate, authenticate_caller, json_response, list_page
from emporion.api.openai.sse import EventStream
from emporion.auth.principal import Principal
from emporion.core.money import format_usd
from emporion.core.requests import ChatCompletionRequest
from emporion.errors import InvalidRequest, NotFound
from emporion.formats import responses as wire
from emporion.formats.responses_schemas import ResponsesRequest
from emporion.formats.responses_upstream import passthrough
from emporion.metering.attribution import HEADER, tags_of
from emporion.pipeline import Answer, Deps, Streamed, handle
from emporion.providers.base import Completion
from emporion.store import responses as kept

log = logging.getLogger("emporion.api")

LAST_EVENTS = (b"event: response.completed\n", b"event: response.incomplete\n")


@idempotent
async def create(request: Request) -> Response:
    deps, principal = await authenticate_caller(request)
    body = await parse_body(request, ResponsesRequest, deps.settings.server.max_body_bytes)
    response_id = wire.new_id("resp")
    tags = tags_of(request.headers.get(HEADER), body.metadata)
    if not body.stream:
        done, outcome = await respond(deps, principal, body, response_id, tags=tags)
        headers = {**provenance(outcome.route, response_id), **outcome.headers, "x-emporion-cost": format_usd(outcome.cost)}
        return json_response(done, headers=headers)
    chat, items = await _as_chat(deps, principal, body)
    opened = await handle(deps, principal, chat, response_id, streamed=True, tags=tags)
    assert isinstance(opened, Streamed)

    async def store(done: dict[str, Any]) -> None:
        if body.stored:
            await _save(deps, principal.org_id, done, items)

    start = wire.skeleton(body, response_id, opened.route.model.id)
    events = wire.to_events(start, aiter(opened), lambda: opened.charged, store)
    headers = {**provenance(opened.route, response_id), **opened.headers}
    return EventStream(events, headers, on_close=opened.aclose, is_last=_is_last)  # type: ignore[return-value]  # an ASGI app, as on chat


async def respond(
    deps: Deps,
    principal: Principal,
    body: ResponsesRequest,
    response_id: str,
    price_factor: Decimal = Decimal(1),
    tags: tuple[str, ...] = (),
) -> tuple[dict[str, Any], Answer]:
    """A whole (not streamed) response, stored where ``store`` says: the route's, and a batch line's."""
    chat, items = await _as_chat(deps, principal, body)
    outcome = await handle(deps, principal, chat, response_id, price_factor=price_factor, tags=tags)
    assert isinstance(outcome, Answer) and isinstance(outcome.result, Completion)
    done = wire.to_response(wire.skeleton(body, response_id, outcome.route.model.id), outcome.result, outcome.cost)
    if body.stored:
        await _save(deps, principal.org_id, done, items)
    return done, outcome


async def _as_chat(
    deps: Deps, principal: Principal, body: ResponsesRequest
) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat request a Responses request becomes (its conversation so far first, where it
    continues one), and its own input items (what a stored response keeps)."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        found = await kept.conversation(deps.db, principal.org_id, no_nul(body.previous_response_id, "previous_response_id"))
        if found is None:
            raise NotFound(
                f"Previous response with id '{body.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = found
    items = wire.input_items(body)
    try:
        chat = ChatCompletionRequest.model_validate(wire.to_chat(body, history, items))
    except ValidationError as exc:
        raise invalid_request(exc) from None
    chat.responses_body = passthrough(body, history + items)
    return chat, items


async def _save(deps: Deps, org_id: str, done: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Keeps a response; a failure is logged, never the request's: the answer is paid for and the
    client's, it only cannot be retrieved or continued later."""
    try:
        await kept.save(deps.db, org_id, done, items, deps.settings.responses.store_days)
    except Exception as exc:
        log.error("response %s could not be stored: %r", done["id"], exc)


def _is_last(data: bytes) -> bool:
    return data.startswith(LAST_EVENTS)


async def retrieve(request: Request) -> Response:
    deps, principal = await authenticate(request)
    found = await kept.load(deps.db, principal.org_id, _response_id(request))
    if found is None:
        raise _not_found(request)
    return json_response(found.response)


async def delete(request: Request) -> Response:
    deps, principal = await authenticate(request)
    response_id = _response_id(request)
    if not await kept.remove(deps.db, principal.org_id, response_id):
        raise _not_found(request)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: Request) -> Response:
    """The items a response answered, as OpenAI lists them: newest first by default (``order``),
    ``limit`` 1 to 100 (20), from after the item ``after``."""
    deps, principal = await authenticate(request)
    found = await kept.load(deps.db, principal.org_id, _response_id(request))
    if found is None:
        raise _not_found(request)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise InvalidRequest("Invalid 'limit': expected an integer from 1 to 100.", param="limit")
    items = found.input_items if order == "asc" else found.input_items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"Invalid 'after': no input item '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[: int(raw_limit)]
    return list_page(page, len(items) > len(page))


def _response_id(request: Request) -> str:
    return no_nul(request.path_params["response_id"], "response_id")


def _not_found(request: Request) -> NotFound:
    return NotFound(f"Response with id '{request.path_params['response_id']}' not found.", code="response_not_found")


routes = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
]
