"""OpenAI's routes, kept thin: authenticate, parse, run the pipeline, render."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import no_nul, parse_body
from emporion.api.idempotency import idempotent
from emporion.api.openai.render import new_id, provenance, render_completion, render_stream
from emporion.api.openai.sse import EventStream
from emporion.auth.principal import Principal
from emporion.core.money import format_usd, to_usd
from emporion.core.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from emporion.errors import InvalidRequest, NotFound, PermissionDenied
from emporion.metering import records
from emporion.metering.attribution import HEADER, tags_of
from emporion.pipeline import Answer, Deps, Embeddings, Streamed, handle
from emporion.providers.base import Completion, Endpoint


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


def list_page(data: list[dict[str, Any]], has_more: bool) -> Response:
    """A page of a list as OpenAI's cursor-paginated routes answer it."""
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": has_more,
        }
    )


async def authenticate(request: Request) -> tuple[Deps, Principal]:
    deps: Deps = request.app.state.deps
    principal = await deps.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
    return deps, principal


async def authenticate_caller(request: Request) -> tuple[Deps, Principal]:
    """For the routes that generate (and spend): API keys only. Admin and operator keys manage
    accounts on /admin/v1 (as OpenRouter's provisioning keys), so a leaked admin key cannot also
    be used to run up its organization's bill, nor an API key's limits be dodged with one."""
    deps, principal = await authenticate(request)
    if principal.key_kind != "api":
        raise PermissionDenied(
            f"This is an {principal.key_kind} key: it manages accounts on /admin/v1. Call {request.url.path} with an API key.",
            code="api_key_required",
        )
    return deps, principal


@idempotent
async def chat_completions(request: Request) -> Response:
    return await _generate(request, ChatCompletionRequest)


@idempotent
async def completions(request: Request) -> Response:
    return await _generate(request, CompletionRequest)


async def _generate(request: Request, schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> Response:
    deps, principal = await authenticate_caller(request)
    wire = await parse_body(request, schema, deps.settings.server.max_body_bytes)
    endpoint: Endpoint = "chat" if isinstance(wire, ChatCompletionRequest) else "completion"
    response_id = new_id(endpoint)
    tags = tags_of(request.headers.get(HEADER), (wire.model_extra or {}).get("metadata"))
    outcome = await handle(deps, principal, wire, response_id, streamed=wire.stream, tags=tags)
    if isinstance(outcome, Streamed):
        events = render_stream(endpoint, response_id, outcome.route, aiter(outcome), wire.include_usage, lambda: outcome.charged)
        headers = {**provenance(outcome.route, response_id), **outcome.headers}
        return EventStream(events, headers, on_close=outcome.aclose)  # type: ignore[return-value]  # an ASGI app: Starlette runs whatever a route returns
    assert isinstance(outcome.result, Completion)
    body = render_completion(endpoint, response_id, outcome.route, outcome.result, outcome.cost)
    headers = {**provenance(outcome.route, response_id), **outcome.headers, "x-emporion-cost": format_usd(outcome.cost)}
    return json_response(body, headers=headers)


@idempotent
async def embeddings(request: Request) -> Response:
    deps, principal = await authenticate_caller(request)
    wire = await parse_body(request, EmbeddingRequest, deps.settings.server.max_body_bytes)
    request_id = "emb-" + secrets.token_urlsafe(18)
    outcome = await handle(deps, principal, wire, request_id, tags=tags_of(request.headers.get(HEADER)))
    assert isinstance(outcome, Answer)
    headers = {**provenance(outcome.route, request_id), **outcome.headers, "x-emporion-cost": format_usd(outcome.cost)}
    return json_response(embeddings_body(wire, outcome), headers=headers)


def embeddings_body(wire: EmbeddingRequest, outcome: Answer) -> dict[str, object]:
    assert isinstance(outcome.result, Embeddings)
    embedded = outcome.result.embedded
    data = [
        {"object": "embedding", "index": index, "embedding": _encode_vector(vector, wire.encoding_format)}
        for index, vector in enumerate(embedded.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": outcome.route.model.id,
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens, "cost": float(to_usd(outcome.cost))},
    }


def _encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def generation(request: Request) -> Response:
    """OpenRouter's ``GET /v1/generation?id=``: the stored record of one of the organization's requests."""
    deps, principal = await authenticate(request)
    request_id = no_nul(request.query_params.get("id", ""), "id")
    if not request_id:
        raise InvalidRequest("Pass the id of a response as `id`.", param="id")
    await deps.ledger.flush()  # a request this replica just answered may still be settling
    record = await records.find(deps.db, principal.org_id, request_id)
    if record is None:
        raise NotFound(f"No generation with id `{request_id}`.", param="id", code="generation_not_found")
    return json_response({"data": records.to_wire(record, wholesale=not principal.resellers)})


async def list_models(request: Request) -> Response:
    """The catalog, each model at the price the caller pays (its reseller's markups included)."""
    deps, principal = await authenticate(request)
    markups = [markup for _, markup in principal.resellers]
    return json_response(
        {"object": "list", "data": [model.to_openai(deps.pricebook.list_price(model, markups)) for model in deps.catalog]}
    )


async def get_model(request: Request) -> Response:
    deps, principal = await authenticate(request)
    model = deps.catalog.get(request.path_params["model_id"])
    return json_response(model.to_openai(deps.pricebook.list_price(model, [markup for _, markup in principal.resellers])))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/generation", generation, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
]
