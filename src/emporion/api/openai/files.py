"""OpenAI's Files API: upload (multipart, as the SDK sends it), list, retrieve, content, delete —
each file its organization's only. Batch inputs and training files are checked line by line on
upload, so a broken line is a 400 naming it, not a batch that fails later."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import no_nul, read_body
from emporion.api.openai.routes import authenticate, authenticate_caller, json_response, list_page
from emporion.batches import lines as batch_lines
from emporion.errors import Conflict, InvalidRequest, NotFound
from emporion.formats import training_data
from emporion.formats.jsonl import describe
from emporion.store import batches as stored_batches
from emporion.store import files as stored

# what a client may upload; batch_output is what Emporion writes (a batch's output and error files)
PURPOSES = ("batch", "fine-tune", "user_data", "evals", "assistants", "vision")
MULTIPART_OVERHEAD = 64 * 1024
MIN_EXPIRY_S, MAX_EXPIRY_S = 3_600, 2_592_000  # OpenAI's bounds on expires_after[seconds]


async def upload(request: Request) -> Response:
    deps, principal = await authenticate_caller(request)
    limit = deps.settings.files.max_bytes
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Upload a file as multipart/form-data with the fields `file` and `purpose`.")
    raw = await read_body(request, limit + MULTIPART_OVERHEAD)

    async def body() -> AsyncGenerator[bytes, None]:
        yield raw

    try:
        form = await MultiPartParser(request.headers, body(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc.message}.") from None
    purpose = form.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"Invalid 'purpose': '{purpose}'. Expected one of {', '.join(PURPOSES)}.", param="purpose", code="invalid_value"
        )
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise InvalidRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    content = await file.read()
    if len(content) > limit:
        raise InvalidRequest(f"The file is larger than the limit of {limit} bytes.", param="file", code="file_too_large")
    filename = no_nul(file.filename or "upload", "file")[:255]
    _check(purpose, content, deps.settings.batches.max_lines)
    values = stored.row(principal.org_id, filename, purpose, content, _expiry(form))
    info = await stored.save(deps.db, values)
    return json_response(info.to_openai())


def _check(purpose: str, content: bytes, max_lines: int) -> None:
    if purpose == "batch":
        errors = batch_lines.parse(content, max_lines)[1]
    elif purpose == "fine-tune":
        errors = training_data.check(content, max_lines)
    else:
        return
    if errors:
        raise InvalidRequest(f"Invalid file: {describe(errors)}", param="file", code="invalid_file")


def _expiry(form) -> float | None:
    """``expires_after[anchor]=created_at`` and ``expires_after[seconds]``, as the SDK sends them."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("Invalid 'expires_after.anchor': expected 'created_at'.", param="expires_after.anchor")
    if not isinstance(seconds, str) or not seconds.isdigit() or not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"Invalid 'expires_after.seconds': expected an integer from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}.",
            param="expires_after.seconds",
        )
    return float(seconds)


async def listed(request: Request) -> Response:
    """Newest first by default (``order``), ``limit`` 1 to 10,000 (10,000), after the file ``after``."""
    deps, principal = await authenticate(request)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    raw_limit = query.get("limit", "10000")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
        raise InvalidRequest("Invalid 'limit': expected an integer from 1 to 10000.", param="limit")
    purpose = query.get("purpose")
    after = query.get("after")
    page, more = await stored.listed(
        deps.db,
        principal.org_id,
        purpose=no_nul(purpose, "purpose") if purpose else None,
        limit=int(raw_limit),
        newest_first=order == "desc",
        after=no_nul(after, "after") if after else None,
    )
    data = [info.to_openai() for info in page]
    return list_page(data, more)


async def retrieve(request: Request) -> Response:
    deps, principal = await authenticate(request)
    info = await stored.get(deps.db, principal.org_id, _file_id(request))
    if info is None:
        raise _not_found(request)
    return json_response(info.to_openai())


async def content(request: Request) -> Response:
    deps, principal = await authenticate(request)
    data = await stored.content(deps.db, principal.org_id, _file_id(request))
    if data is None:
        raise _not_found(request)
    return Response(data, media_type="application/octet-stream")


async def delete(request: Request) -> Response:
    deps, principal = await authenticate(request)
    file_id = _file_id(request)
    running = await stored_batches.unfinished_using(deps.db, principal.org_id, file_id)
    if running is not None:
        raise Conflict(f"File '{file_id}' is the input of batch '{running}', which has not ended: cancel it first.")
    if not await stored.remove(deps.db, principal.org_id, file_id):
        raise _not_found(request)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def _file_id(request: Request) -> str:
    return no_nul(request.path_params["file_id"], "file_id")


def _not_found(request: Request) -> NotFound:
    return NotFound(f"No such File object: {request.path_params['file_id']}", param="id", code="file_not_found")


routes = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", listed, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
    Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", content, methods=["GET"]),
]
