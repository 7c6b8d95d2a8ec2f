"""Reading a request body: size-limited (413), time-limited (408), parsed and validated into a wire schema (400)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from emporion.errors import InvalidRequest, PayloadTooLarge, RequestTimeout

Schema = TypeVar("Schema", bound=BaseModel)

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The API expects a JSON payload, but what was sent was not valid "
    "JSON.)"
)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (else 413), all of it within ``[server] body_timeout_s`` (else 408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    timeout_s = request.app.state.deps.settings.server.body_timeout_s
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} seconds.") from None
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
    """Pydantic's first error as OpenAI words it, with the client's own path to the field as ``param``.

    Where a field is a union, pydantic reports every member that failed, each under a label of its
    own ('str', 'list[constrained-str]', 'function-after[...]' ...) that no client ever wrote. The
    labels are dropped; of the members, the one that got deepest into the input is what the client
    meant (a list whose third item is wrong), else one of the input's type that broke a constraint
    (an empty list), else the types are listed: "Input should be a valid string or a valid array"."""
    errors = exc.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return InvalidRequest(NOT_JSON)
    if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
        return InvalidRequest("The request body must be a JSON object.")
    first = errors[0]
    base = _union_base(first["loc"])
    members = [err for err in errors if base is not None and _union_base(err["loc"]) == base] or [first]
    paths = [_client_path(err["loc"]) for err in members]
    depth = max(len(path) for path in paths)
    deepest = [err for err, path in zip(members, paths, strict=True) if len(path) == depth]
    loc = _client_path(deepest[0]["loc"])
    param = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
    if deepest[0]["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    meant = [err for err in deepest if not _mismatch(err)] or deepest  # a member of the right type
    said = list(dict.fromkeys(_message(err) for err in meant))
    message = said[0] + "".join(" or " + other.removeprefix("Input should be ") for other in said[1:])
    return InvalidRequest(f"Invalid '{param}': {message}.", param=param or None, code="invalid_value")


def _mismatch(err: ErrorDetails) -> bool:
    """The input is not of this member's type at all (as opposed to breaking one of its constraints)."""
    return err["type"].endswith("_type") or err["type"] == "literal_error"


def _message(err: ErrorDetails) -> str:
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "Input should be an object"  # pydantic would name the schema's class
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ").rstrip(".")


def _union_base(loc: tuple[int | str, ...]) -> list[int | str] | None:
    """The client's path to the union whose member failed, or None when no union is on the path."""
    for index, part in enumerate(loc):
        if _is_label(part):
            return _client_path(loc[:index])
    return None


def _client_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """The location without pydantic's labels, nor the tag a tagged union chose its member by."""
    path: list[int | str] = []
    tag_next = False
    for part in loc:
        if _is_label(part):
            tag_next = tag_next or "tagged-union[" in str(part)
        elif tag_next and isinstance(part, str):
            tag_next = False  # the discriminator's value ('text', 'image_url'), not a field
        else:
            path.append(part)
    return path


def _is_label(part: object) -> bool:
    """Pydantic's label of a union member: a type ('str', 'int', 'none'), a schema ('list[...]',
    'constrained-str', 'function-after[...]', 'lax-or-strict[...]', 'json-or-python[...]',
    "literal['a','b']") or a model's class name ('TextPart'). Field names are snake_case."""
    return isinstance(part, str) and (part in LABELS or "[" in part or "-" in part or part[:1].isupper())


LABELS = frozenset({"str", "int", "float", "bool", "bytes", "none", "any", "decimal", "list", "dict", "url"})


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
