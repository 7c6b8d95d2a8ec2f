"""The Anthropic Messages adapter: requests to an upstream's ``POST /v1/messages`` and its
answers back, over HTTP. The translation both ways is formats/anthropic.py's, shared with the
``/v1/messages`` ingress."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from emporion.core.requests import ChatCompletionRequest
from emporion.errors import ContextLengthExceeded, EmporionError, InvalidRequest, ServiceUnavailable, UpstreamError
from emporion.formats.anthropic import UNSUPPORTED, StreamTranslator, from_anthropic, to_anthropic, with_hints
from emporion.providers.base import Chunk, Completion, Request, Upstream
from emporion.providers.http import (
    Transport,
    encode_body,
    error_json,
    mapped_transport_errors,
    parse_json,
    post_json,
    read_events,
    status_error,
    stream_timeout,
)
from emporion.providers.redaction import upstream_text

API_VERSION = "2023-06-01"


class AnthropicAdapter:
    name: ClassVar[str] = "anthropic"
    unsupported_parameters: ClassVar[frozenset[str]] = frozenset(UNSUPPORTED)

    def __init__(self) -> None:
        self.transport = Transport()

    def _session(self, upstream: Upstream):
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        if upstream.api_key:
            headers["x-api-key"] = upstream.api_key
        return self.transport.session(upstream, headers)

    async def complete(self, request: Request, upstream: Upstream) -> Completion:
        return from_anthropic(await post_json(self._session(upstream), upstream, _url(upstream), _body(request), _status_error))

    async def stream(self, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]:
        body = {**_body(request), "stream": True}
        with mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _url(upstream), data=encode_body(body), timeout=stream_timeout(upstream), allow_redirects=False
            ) as response:
                if response.status >= 300:
                    raise _status_error(upstream, response.status, await response.read(), response.headers)
                translator = StreamTranslator()
                async for event in read_events(response):
                    data = parse_json(upstream, event.data)
                    if data.get("type") == "error" or event.name == "error":
                        raise _stream_error(upstream, data)
                    for chunk in translator.feed(data):
                        yield chunk
                    if translator.finished:
                        return
                raise UpstreamError(f"upstream {upstream.name} ended the stream before message_stop")

    async def count_tokens(self, request: Request, upstream: Upstream) -> int | None:
        """Anthropic's own count (``POST /v1/messages/count_tokens``): the request without the
        fields of a generation."""
        body = {
            k: v
            for k, v in _body(request).items()
            if k not in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata")
        }
        counted = (await post_json(self._session(upstream), upstream, _count_url(upstream), body, _status_error)).get(
            "input_tokens"
        )
        if not isinstance(counted, int):
            raise UpstreamError(f"upstream {upstream.name} counted no input_tokens")
        return counted

    async def aclose(self) -> None:
        await self.transport.aclose()


def _count_url(upstream: Upstream) -> str:
    return upstream.base_url.rstrip("/") + "/messages/count_tokens"


def _url(upstream: Upstream) -> str:
    return upstream.base_url.rstrip("/") + "/messages"


def _body(request: Request) -> dict[str, Any]:
    """The request as Anthropic's, with what only Anthropic reads (cache breakpoints, thinking, an
    Anthropic client's own assistant blocks) where the client put it."""
    if not isinstance(request.ask, ChatCompletionRequest):
        raise InvalidRequest("Anthropic models serve chat completions only; use /v1/chat/completions.", param="model")
    return to_anthropic(with_hints(request.ask, request.body))


# --- errors -------------------------------------------------------------------------------------


def _status_error(upstream: Upstream, status: int, raw: bytes, headers) -> EmporionError:
    error = error_json(raw).get("error") or {}
    message = upstream_text(upstream, error.get("message") or f"HTTP {status}")
    if status == 400 and "prompt is too long" in message.lower():
        return ContextLengthExceeded(f"{upstream.name}: {message}", param="messages")
    return status_error(upstream, status, message, headers)


def _stream_error(upstream: Upstream, data: dict[str, Any]) -> EmporionError:
    error = data.get("error") or {}
    kind, message = upstream_text(upstream, error.get("type", "")), upstream_text(upstream, error.get("message", "stream failed"))
    if kind == "overloaded_error":
        return ServiceUnavailable(f"upstream {upstream.name} is overloaded: {message}", retry_after_s=1)
    return UpstreamError(f"upstream {upstream.name} failed mid-stream ({kind}): {message}")
