"""Reading a request body: size-limited (413), time-limited (408), parsed and validated into a wire schema (400)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from emporion.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, invalid_request

Schema = TypeVar("Schema", bound=BaseModel)


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
    valid_unicode(raw)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def valid_unicode(raw: bytes) -> None:
    """A 400 for a body whose JSON escapes a lone UTF-16 surrogate (``"\\ud800"``): valid JSON
    syntax, but no text — no upstream, database or encoder takes it. Checked only when the body has
    such an escape at all (a pair, an emoji written escaped, is fine)."""
    if b"\\ud" not in raw and b"\\uD" not in raw:
        return
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            raise InvalidRequest(
                "The request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): it is not text.",
                code="invalid_unicode",
            ) from None


def no_nul(text: str, param: str) -> str:
    """Text bound for the database: PostgreSQL refuses NUL characters in text, so they are a 400 here."""
    if "\x00" in text:
        raise InvalidRequest(f"Invalid '{param}': it contains a NUL character.", param=param, code="invalid_value")
    return text


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
