"""HTTP to upstreams, shared by every adapter: one pooled aiohttp session per upstream, server-sent
events read line by line, and transport failures mapped onto Emporion's errors in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from emporion.errors import (
    EmporionError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from emporion.providers.base import Upstream
from emporion.providers.redaction import upstream_text


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its ``event:`` name (empty when absent) and ``data:`` payload."""

    name: str
    data: bytes


class Transport:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, upstream: Upstream, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream.name)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                headers=dict(headers),
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30),
                read_bufsize=1 << 20,  # SSE lines with large tool-call arguments
            )
            self._sessions[upstream.name] = session
        return session

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def request_timeout(upstream: Upstream) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=upstream.timeout_s, connect=upstream.connect_timeout_s)


def stream_timeout(upstream: Upstream) -> aiohttp.ClientTimeout:
    """No total limit on a stream; the limit is on the silence between two reads."""
    return aiohttp.ClientTimeout(total=None, connect=upstream.connect_timeout_s, sock_read=upstream.timeout_s)


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of an SSE body. If the consumer stops early, the connection is dropped rather
    than returned to the pool, so the upstream sees the client leave and stops generating."""
    data: list[bytes]
    name, data = "", []
    try:
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    yield Event(name, b"\n".join(data))
                name, data = "", []
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if data:
            yield Event(name, b"\n".join(data))
    finally:
        if not response.content.at_eof():
            response.close()


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as JSON for an upstream. JSON has integers of any size, orjson (and the
    upstreams) only 64-bit ones: a larger one in a field passed through is the client's 400."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        param = _too_big(body)
        if param is None:
            raise
        message = f"Invalid '{param}': the integer is out of range (a number sent upstream must fit in 64 bits)."
        raise InvalidRequest(message, param=param, code="invalid_value") from exc


def _too_big(value: Any, path: str = "") -> str | None:
    """The path (``messages.[0].content``, as validation errors name it) to the first integer beyond 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not -(2**63) <= value < 2**64 else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        part = f"[{key}]" if isinstance(key, int) else str(key)
        if (found := _too_big(item, f"{path}.{part}" if path else part)) is not None:
            return found
    return None


def parse_json(upstream: Upstream, raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"upstream {upstream.name} sent malformed JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream {upstream.name} sent JSON that is not an object")
    return data


def error_json(raw: bytes) -> dict[str, Any]:
    """An error body as a dict, or {} when it is not JSON (an HTML error page, say)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@contextlib.contextmanager
def mapped_transport_errors(upstream: Upstream) -> Iterator[None]:
    """aiohttp's exceptions stop here; everything above sees Emporion's errors only."""
    try:
        yield
    except EmporionError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {upstream.name} timed out") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ServiceUnavailable(f"upstream {upstream.name} is unreachable ({type(exc).__name__})", retry_after_s=1) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream {upstream.name} failed ({type(exc).__name__})") from exc


def status_error(
    upstream: Upstream, status: int, message: str, headers: Mapping[str, str], param: str | None = None
) -> EmporionError:
    """An upstream's HTTP error status as Emporion's error, with whether another try may succeed."""
    retry_after = retry_after_s(headers)
    message = upstream_text(upstream, message)
    if status < 400:
        return UpstreamError(
            f"upstream {upstream.name} answered with a redirect ({status}); redirects are not followed", retryable=False
        )
    if status in (400, 413, 422):
        return InvalidRequest(f"{upstream.name}: {message}", param=param)
    if status == 429:
        return UpstreamRateLimited(f"upstream {upstream.name} is rate limiting: {message}", retry_after_s=retry_after or 1)
    if status in (401, 403):
        return UpstreamError(f"upstream {upstream.name} refused Emporion's credentials ({status})", retryable=False)
    if status == 404:
        return UpstreamNotFound(f"upstream {upstream.name} does not know this model or route: {message}")
    if status == 408:
        return UpstreamTimeout(f"upstream {upstream.name} timed out: {message}")
    if status in (503, 529):
        return ServiceUnavailable(f"upstream {upstream.name} is overloaded or unavailable: {message}", retry_after_s=retry_after)
    return UpstreamError(
        f"upstream {upstream.name} failed with HTTP {status}: {message}", retryable=status >= 500, retry_after_s=retry_after
    )


StatusError = Callable[[Upstream, int, bytes, Mapping[str, str]], EmporionError]


async def post_json(
    session: aiohttp.ClientSession, upstream: Upstream, url: str, body: dict[str, Any], status_error: StatusError
) -> dict[str, Any]:
    """One JSON request and its JSON answer (a whole one, not a stream): a transport failure, or a
    status of 300 or more (worded by the adapter's ``status_error``), is the upstream's error."""
    with mapped_transport_errors(upstream):
        async with session.post(
            url, data=encode_body(body), timeout=request_timeout(upstream), allow_redirects=False
        ) as response:
            raw = await response.read()
            if response.status >= 300:
                raise status_error(upstream, response.status, raw, response.headers)
    return parse_json(upstream, raw)
