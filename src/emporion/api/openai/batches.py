"""OpenAI's Batch API: create a batch from an uploaded JSONL file, retrieve, list, cancel — each
batch its organization's only. The lines run in the background (batches/worker.py), not here."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import no_nul, parse_body
from emporion.api.openai.routes import authenticate, authenticate_caller, json_response, list_page
from emporion.batches.lines import SCHEMAS
from emporion.errors import InvalidRequest, NotFound
from emporion.formats.responses_schemas import MetadataKey, MetadataValue
from emporion.pipeline import Deps
from emporion.store import batches as stored
from emporion.store import files
from emporion.store.tables import Batch

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
assert set(Endpoint.__args__) == set(SCHEMAS)  # type: ignore[attr-defined]  # a Literal's members


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: Annotated[str, Field(min_length=1, max_length=40)]
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    output_expires_after: dict[str, Any] | None = None  # accepted; output files are kept [files] output_days


async def create(request: Request) -> Response:
    deps, principal = await authenticate_caller(request)
    body = await parse_body(request, CreateBatch, deps.settings.server.max_body_bytes)
    file_id = no_nul(body.input_file_id, "input_file_id")
    found = await files.get(deps.db, principal.org_id, file_id)
    if found is None:
        raise InvalidRequest(f"No such File object: {file_id}", param="input_file_id", code="invalid_file_id")
    if found.purpose != "batch":
        raise InvalidRequest(
            f"File {file_id} has purpose '{found.purpose}'; a batch reads a file uploaded with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    factor = 1 - deps.settings.batches.discount_percent / Decimal(100)
    batch_id = await stored.create(
        deps.db,
        org_id=principal.org_id,
        key_id=principal.key_id,
        endpoint=body.endpoint,
        input_file_id=file_id,
        completion_window=body.completion_window,
        metadata=body.metadata,
        price_factor=factor,
    )
    _wake(request)
    return await _answer(deps, principal.org_id, batch_id)


async def retrieve(request: Request) -> Response:
    deps, principal = await authenticate(request)
    return await _answer(deps, principal.org_id, _batch_id(request))


async def cancel(request: Request) -> Response:
    """``cancelling`` at once; ``cancelled`` once the lines running have finished (what they and
    the lines before them answered is in the output and error files)."""
    deps, principal = await authenticate_caller(request)
    batch_id = _batch_id(request)
    batch = await _own(deps, principal.org_id, batch_id)
    if batch.status in stored.ENDED:
        raise InvalidRequest(f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")
    await stored.request_cancel(deps.db, principal.org_id, batch_id)
    _wake(request)
    return await _answer(deps, principal.org_id, batch_id)


async def listed(request: Request) -> Response:
    """Newest first, ``limit`` 1 to 100 (20), after the batch ``after``."""
    deps, principal = await authenticate(request)
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise InvalidRequest("Invalid 'limit': expected an integer from 1 to 100.", param="limit")
    after = request.query_params.get("after")
    page, more = await stored.listed(deps.db, principal.org_id, int(raw_limit), no_nul(after, "after") if after else None)
    data = [stored.to_openai(batch, await stored.usage(deps.db, batch.id)) for batch in page]
    return list_page(data, more)


async def _own(deps: Deps, org_id: str, batch_id: str) -> Batch:
    batch = await stored.get(deps.db, org_id, batch_id)
    if batch is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
    return batch


async def _answer(deps: Deps, org_id: str, batch_id: str) -> Response:
    batch = await _own(deps, org_id, batch_id)
    return json_response(stored.to_openai(batch, await stored.usage(deps.db, batch_id)))


def _batch_id(request: Request) -> str:
    return no_nul(request.path_params["batch_id"], "batch_id")


def _wake(request: Request) -> None:
    """Tells this replica's worker at once (the others find the batch on their next look)."""
    worker = getattr(request.app.state, "batch_worker", None)
    if worker is not None:
        worker.wake.set()


routes = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", listed, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
]
