"""The OpenAI-compatible adapter: OpenAI, vLLM, llama.cpp's server, Ollama, Groq, another Emporion.

Requests are already in OpenAI's wire format, so the work here is the HTTP exchange, SSE
parsing, usage normalization and the mapping of upstream failures onto Emporion's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from emporion.errors import (
    ContextLengthExceeded,
    EmporionError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from emporion.providers.base import Chunk, Completion, Request, Upstream
from emporion.providers.usage import usage_from_openai

PATHS = {"chat": "/chat/completions", "completion": "/completions"}
JSON = {"content-type": "application/json"}


class OpenAICompatAdapter:
    name: ClassVar[str] = "openai_compat"

    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, upstream: Upstream) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream.name)
        if session is None or session.closed:
            headers = {"authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
            session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30),
                read_bufsize=1 << 20,  # SSE lines with large tool-call arguments
                auto_decompress=True,
            )
            self._sessions[upstream.name] = session
        return session

    async def complete(self, request: Request, upstream: Upstream) -> Completion:
        body = {**request.body, "stream": False}
        body.pop("stream_options", None)
        timeout = aiohttp.ClientTimeout(total=upstream.timeout_s, connect=upstream.connect_timeout_s)
        with _mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _url(upstream, request), data=orjson.dumps(body), headers=JSON, timeout=timeout
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _upstream_status_error(upstream, response.status, raw, response.headers)
        data = _parse_json(upstream, raw)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise UpstreamError(f"upstream {upstream.name} answered without choices")
        usage = usage_from_openai(data.get("usage"))
        if usage is None:
            raise UpstreamError(f"upstream {upstream.name} answered without usage")
        return Completion(choices=choices, usage=usage)

    async def stream(self, request: Request, upstream: Upstream) -> AsyncIterator[Chunk]:
        body = {**request.body, "stream": True, "stream_options": {"include_usage": True}}
        # No total limit on a stream; the limit is on the silence between two reads.
        timeout = aiohttp.ClientTimeout(total=None, connect=upstream.connect_timeout_s, sock_read=upstream.timeout_s)
        with _mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _url(upstream, request), data=orjson.dumps(body), headers=JSON, timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise _upstream_status_error(upstream, response.status, await response.read(), response.headers)
                try:
                    async for line in response.content:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            return
                        data = _parse_json(upstream, payload)
                        if "error" in data:
                            raise _upstream_error_body(upstream, 500, data)
                        yield Chunk(choices=data.get("choices") or [], usage=usage_from_openai(data.get("usage")))
                finally:
                    if not response.content.at_eof():
                        response.close()  # drop the connection: the upstream sees the client leave and stops
                raise UpstreamError(f"upstream {upstream.name} ended the stream before [DONE]")

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _url(upstream: Upstream, request: Request) -> str:
    return upstream.base_url.rstrip("/") + PATHS[request.endpoint]


@contextlib.contextmanager
def _mapped_transport_errors(upstream: Upstream) -> Iterator[None]:
    """aiohttp's exceptions stop here; everything above sees Emporion's errors only."""
    try:
        yield
    except EmporionError:
        raise
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {upstream.name} timed out") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ServiceUnavailable(f"upstream {upstream.name} is unreachable ({type(exc).__name__})", retry_after_s=1) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream {upstream.name} failed ({type(exc).__name__})") from exc


def _parse_json(upstream: Upstream, raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"upstream {upstream.name} sent malformed JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream {upstream.name} sent JSON that is not an object")
    return data


def _upstream_status_error(upstream: Upstream, status: int, raw: bytes, headers: Mapping[str, str]) -> EmporionError:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = {}
    error = _upstream_error_body(upstream, status, data if isinstance(data, dict) else {})
    if status == 429 or status >= 500:
        error.retry_after_s = _retry_after(headers.get("retry-after"))
    return error


def _upstream_error_body(upstream: Upstream, status: int, data: dict[str, Any]) -> EmporionError:
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    message = str(error.get("message") or f"HTTP {status}")
    kind = str(error.get("type") or "")
    code = error.get("code")
    if kind == "exceed_context_size_error" or code == "context_length_exceeded":
        return ContextLengthExceeded(_context_message(error, message), param="messages")
    if status in (400, 422):
        return InvalidRequest(f"{upstream.name}: {message}", param=error.get("param"))
    if status == 429:
        return UpstreamError(f"upstream {upstream.name} is rate limiting: {message}", code="upstream_rate_limited")
    if status in (401, 403):
        return UpstreamError(f"upstream {upstream.name} refused Emporion's credentials", retryable=False)
    if status == 503:
        return ServiceUnavailable(f"upstream {upstream.name} is unavailable: {message}")
    return UpstreamError(f"upstream {upstream.name} failed with HTTP {status}: {message}", retryable=status >= 500)


def _context_message(error: dict[str, Any], fallback: str) -> str:
    n_prompt, n_ctx = error.get("n_prompt_tokens"), error.get("n_ctx")
    if isinstance(n_prompt, int) and isinstance(n_ctx, int):
        return (
            f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted "
            f"in {n_prompt} tokens. Please reduce the length of the messages."
        )
    return fallback


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
