"""Reading a request body: size-limited (413), parsed and validated into a wire schema (400)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from emporion.errors import InvalidRequest, PayloadTooLarge

Schema = TypeVar("Schema", bound=BaseModel)

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The API expects a JSON payload, but what was sent was not valid "
    "JSON.)"
)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, schema: type[Schema], limit: int) -> Schema:
    raw = await read_body(request, limit)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def no_nul(text: str, param: str) -> str:
    """Text bound for the database: PostgreSQL refuses NUL characters in text, so they are a 400 here."""
    if "\x00" in text:
        raise InvalidRequest(f"Invalid '{param}': it contains a NUL character.", param=param, code="invalid_value")
    return text


def invalid_request(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return InvalidRequest(NOT_JSON)
    if errors and errors[0]["type"] == "model_type":
        return InvalidRequest("The request body must be a JSON object.")
    first = min(errors, key=lambda err: len(err["loc"]))
    loc = [part for part in first["loc"] if not _is_union_tag(part)]
    param = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
    if first["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    message = str(first["msg"]).removeprefix("Value error, ")
    return InvalidRequest(f"Invalid '{param}': {message}.", param=param or None, code="invalid_value")


def _is_union_tag(part: object) -> bool:
    """Pydantic names the union member it tried ('str', 'list[...]', 'function-after[...]', 'text')."""
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool"} or "[" in part or part.startswith("function-")
    )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
