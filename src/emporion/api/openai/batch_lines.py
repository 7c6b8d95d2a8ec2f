"""One batch line, run as the live request it names would be — the same schema, the same request
path (limited, held, metered, recorded), the same response body — at the batch's share of the
price. What the batch worker (batches/worker.py) calls for each line."""

from __future__ import annotations

import logging
import secrets
from decimal import Decimal

import orjson
from pydantic import BaseModel, ValidationError

from emporion.api.errors import INTERNAL_ERROR
from emporion.api.openai import responses
from emporion.api.openai.render import new_id, render_completion
from emporion.api.openai.routes import embeddings_body
from emporion.auth.principal import Principal
from emporion.batches.lines import SCHEMAS, Line
from emporion.batches.worker import retryable
from emporion.core.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from emporion.core.usage import Usage
from emporion.errors import EmporionError, invalid_request
from emporion.formats import responses as responses_wire
from emporion.formats.responses_schemas import ResponsesRequest
from emporion.metering.attribution import tags_of
from emporion.pipeline import Answer, Deps, Embeddings, handle
from emporion.providers.base import Completion, Endpoint
from emporion.store.batches import Outcome

log = logging.getLogger("emporion.batches")


def new_request_id(url: str) -> str:
    """The id the line's request runs under, as a live request to ``url`` would get it."""
    if url == "/v1/chat/completions":
        return new_id("chat")
    if url == "/v1/completions":
        return new_id("completion")
    if url == "/v1/responses":
        return responses_wire.new_id("resp")
    return "emb-" + secrets.token_urlsafe(18)


async def run_line(
    deps: Deps, principal: Principal, line: Line, request_id: str, price_factor: Decimal, batch_id: str
) -> Outcome:
    """The line's response (or its error, as the endpoint would answer it), tagged ``batch:ID``
    (and with its metadata). Errors worth waiting for (a rate limit, a busy engine) are raised
    for the worker to retry."""
    try:
        wire = _parse(SCHEMAS[line.url], line.body)
        metadata = wire.metadata if isinstance(wire, ResponsesRequest) else (wire.model_extra or {}).get("metadata")
        tags = tags_of(f"batch:{batch_id}", metadata)
        if isinstance(wire, ResponsesRequest):
            done, outcome = await responses.respond(deps, principal, wire, request_id, price_factor, tags)
            return _answered(done, outcome)
        answer = await handle(deps, principal, wire, request_id, price_factor=price_factor, tags=tags)
        assert isinstance(answer, Answer)
        if isinstance(wire, EmbeddingRequest):
            return _answered(embeddings_body(wire, answer), answer)
        assert isinstance(answer.result, Completion)
        endpoint: Endpoint = "chat" if isinstance(wire, ChatCompletionRequest) else "completion"
        return _answered(render_completion(endpoint, request_id, answer.route, answer.result, answer.cost), answer)
    except EmporionError as exc:
        if retryable(exc):
            raise
        return Outcome(exc.status, exc.envelope())
    except Exception:
        log.exception("batch line %d (%s) failed unexpectedly", line.number, request_id)
        return Outcome(500, EmporionError(INTERNAL_ERROR).envelope())


def _parse(
    schema: type[BaseModel], body: dict
) -> ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest:
    try:
        parsed = schema.model_validate_json(orjson.dumps(body))
    except ValidationError as exc:
        raise invalid_request(exc) from None
    assert isinstance(parsed, ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest)
    return parsed


def _answered(body: dict, answer: Answer) -> Outcome:
    if isinstance(answer.result, Embeddings):
        usage = Usage(input_tokens=answer.result.embedded.tokens)
    else:
        usage = answer.result.usage
    return Outcome(
        200,
        body,
        input_tokens=usage.input_tokens + usage.cache_write_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        cost_nanos=answer.cost,
    )
