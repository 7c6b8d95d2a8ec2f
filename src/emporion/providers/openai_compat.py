"""The OpenAI-compatible adapter: OpenAI, vLLM, llama.cpp's server, Ollama, Groq, another Emporion.

Requests are already in OpenAI's wire format, so the work here is the HTTP exchange, SSE
parsing, usage normalization and the mapping of upstream failures onto Emporion's errors.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from emporion.core.answers import Choice, Delta
from emporion.core.requests import ChatCompletionRequest, CompletionRequest
from emporion.core.usage import usage_from_openai
from emporion.errors import ContextLengthExceeded, EmporionError, UpstreamError
from emporion.formats.responses_upstream import EventTranslator, from_responses, upstream_body
from emporion.providers import llama_legacy
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

PATHS = {"chat": "/chat/completions", "completion": "/completions"}


class OpenAICompatAdapter:
    name: ClassVar[str] = "openai_compat"
    unsupported_parameters: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.transport = Transport()

    def _session(self, upstream: Upstream):
        headers = {"content-type": "application/json"}
        if upstream.api_key:
            headers["authorization"] = f"Bearer {upstream.api_key}"
        return self.transport.session(upstream, headers)

    async def complete(self, request: Request, upstream: Upstream) -> Completion:
        if (legacy := _llama_legacy(request, upstream)) is not None:
            return await llama_legacy.folded(self._llama_legacy_chunks(legacy, request, upstream), legacy.logprobs is not None)
        if (passed := _passed(request, upstream, streamed=False)) is not None:
            reply = await post_json(self._session(upstream), upstream, _responses_url(upstream), passed, _upstream_status_error)
            choice, used = from_responses(reply)
            if used is None:
                raise UpstreamError(f"upstream {upstream.name} answered without usage")
            return Completion(choices=[choice], usage=used)
        body = {**request.body, "stream": False}
        body.pop("stream_options", None)
        data = await post_json(self._session(upstream), upstream, _url(upstream, request), body, _upstream_status_error)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise UpstreamError(f"upstream {upstream.name} answered without choices")
        usage = usage_from_openai(data.get("usage"))
        if usage is None:
            raise UpstreamError(f"upstream {upstream.name} answered without usage")
        return Completion(choices=[Choice.from_openai(choice) for choice in choices if isinstance(choice, dict)], usage=usage)

    def stream(self, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]:
        if (legacy := _llama_legacy(request, upstream)) is not None:
            return self._llama_legacy_chunks(legacy, request, upstream)
        if (passed := _passed(request, upstream, streamed=True)) is not None:
            return self._passed_stream(upstream, passed)
        return self._streamed(request, upstream, request.body)

    async def _passed_stream(self, upstream: Upstream, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        """The upstream's own Responses stream, as chunks (formats/responses_upstream.py)."""
        translator = EventTranslator()
        with mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _responses_url(upstream), data=encode_body(body), timeout=stream_timeout(upstream), allow_redirects=False
            ) as response:
                if response.status >= 300:
                    raise _upstream_status_error(upstream, response.status, await response.read(), response.headers)
                async for event in read_events(response):
                    data = parse_json(upstream, event.data)
                    if data.get("type") in ("response.failed", "error"):
                        raise UpstreamError(f"upstream {upstream.name} failed the response")
                    deltas, used = translator.feed(data)
                    if deltas:
                        yield Chunk(choices=deltas)
                    if used is not None:
                        yield Chunk(choices=[], usage=used)
                    if translator.finished:
                        return
                raise UpstreamError(f"upstream {upstream.name} ended the stream before response.completed")

    async def _streamed(self, request: Request, upstream: Upstream, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        # llama-server closes the connection after a stream, a moment after its end: were it pooled,
        # the next request could be sent down it as it closes (seen after streams with logprobs).
        headers = {"connection": "close"} if upstream.llama_server else None
        with mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _url(upstream, request),
                data=encode_body(body),
                headers=headers,
                timeout=stream_timeout(upstream),
                allow_redirects=False,
            ) as response:
                if response.status >= 300:
                    raise _upstream_status_error(upstream, response.status, await response.read(), response.headers)
                async for event in read_events(response):
                    if event.data == b"[DONE]":
                        return
                    data = parse_json(upstream, event.data)
                    if "error" in data:
                        raise _upstream_error_body(upstream, 500, data, {})
                    deltas = [Delta.from_openai(choice) for choice in data.get("choices") or () if isinstance(choice, dict)]
                    yield Chunk(choices=deltas, usage=usage_from_openai(data.get("usage")))
                raise UpstreamError(f"upstream {upstream.name} ended the stream before [DONE]")

    def _llama_legacy_chunks(self, ask: CompletionRequest, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]:
        """A legacy completion on llama-server, its logprobs and echo in OpenAI's shape (llama_legacy.py)."""

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            return await self._posted(upstream, _root(upstream) + path, body)

        def stream_of(body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
            return self._streamed(request, upstream, body)

        return llama_legacy.chunks(ask, request.body, post, stream_of)

    async def _posted(self, upstream: Upstream, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await post_json(self._session(upstream), upstream, url, body, _upstream_status_error)

    async def count_tokens(self, request: Request, upstream: Upstream) -> int | None:
        """Exact on a local llama-server: the chat template applied as for a generation
        (``/apply-template``), then its tokenizer (``/tokenize``, with the BOS the prompt gets).
        A remote OpenAI-compatible API has no counting endpoint: None."""
        if not upstream.local or request.endpoint != "chat":
            return None
        applied = await self._posted(upstream, _root(upstream) + "/apply-template", {"messages": request.body["messages"]})
        prompt = applied.get("prompt")
        if not isinstance(prompt, str):
            raise UpstreamError(f"upstream {upstream.name} applied no chat template")
        tokenize = {"content": prompt, "add_special": True, "parse_special": True}
        tokens = (await self._posted(upstream, _root(upstream) + "/tokenize", tokenize)).get("tokens")
        if not isinstance(tokens, list):
            raise UpstreamError(f"upstream {upstream.name} answered /tokenize without tokens")
        return len(tokens)

    async def aclose(self) -> None:
        await self.transport.aclose()


def _url(upstream: Upstream, request: Request) -> str:
    return upstream.base_url.rstrip("/") + PATHS[request.endpoint]


def _responses_url(upstream: Upstream) -> str:
    return upstream.base_url.rstrip("/") + "/responses"


def _passed(request: Request, upstream: Upstream, *, streamed: bool) -> dict[str, Any] | None:
    """The body for the upstream's own /v1/responses: a Responses request to an upstream that
    serves them (``responses_api``); None for every other request, which goes as chat."""
    if not upstream.responses_api or not isinstance(request.ask, ChatCompletionRequest):
        return None
    return upstream_body(request.ask, request.body["model"], streamed)


def _root(upstream: Upstream) -> str:
    """llama-server's root, where /tokenize and /detokenize are (its OpenAI routes are under /v1)."""
    return upstream.base_url.rstrip("/").removesuffix("/v1")


def _llama_legacy(request: Request, upstream: Upstream) -> CompletionRequest | None:
    """The legacy completion that llama-server cannot answer in OpenAI's shape itself (logprobs,
    echo); None for any other request, which goes as it is."""
    ask = request.ask
    if upstream.llama_server and isinstance(ask, CompletionRequest) and llama_legacy.wants(ask):
        return ask
    return None


def _upstream_status_error(upstream: Upstream, status: int, raw: bytes, headers: Mapping[str, str]) -> EmporionError:
    return _upstream_error_body(upstream, status, error_json(raw), headers)


def _upstream_error_body(upstream: Upstream, status: int, data: dict[str, Any], headers: Mapping[str, str]) -> EmporionError:
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    message = upstream_text(upstream, error.get("message") or f"HTTP {status}")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if error.get("type") == "exceed_context_size_error" or error.get("code") == "context_length_exceeded":
        return ContextLengthExceeded(_context_message(error, message), param="messages")
    return status_error(upstream, status, message, headers, param=param)


def _context_message(error: dict[str, Any], fallback: str) -> str:
    n_prompt, n_ctx = error.get("n_prompt_tokens"), error.get("n_ctx")
    if isinstance(n_prompt, int) and isinstance(n_ctx, int):
        return (
            f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted "
            f"in {n_prompt} tokens. Please reduce the length of the messages."
        )
    return fallback
