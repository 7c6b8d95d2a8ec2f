"""The Anthropic Messages adapter: OpenAI-format requests to ``POST /v1/messages`` and back.

Translates system prompts, multi-turn messages, images, tools, ``tool_choice``, tool results,
stop sequences and ``max_tokens``; maps ``stop_reason`` onto ``finish_reason``; turns the
streaming events into OpenAI chunks (tool-call deltas included); reads usage with cache tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from emporion.core.answers import Choice, Delta, ToolCall, ToolCallDelta
from emporion.core.usage import Usage
from emporion.errors import ContextLengthExceeded, EmporionError, InvalidRequest, ServiceUnavailable, UpstreamError
from emporion.providers.base import Chunk, Completion, Request, Upstream
from emporion.providers.http import (
    Transport,
    encode_body,
    error_json,
    mapped_transport_errors,
    parse_json,
    read_events,
    request_timeout,
    status_error,
    stream_timeout,
)
from emporion.providers.openai_messages import arguments, data_url, texts
from emporion.providers.redaction import upstream_text

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
UNSUPPORTED = ("seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format")


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
        body = to_anthropic(request)
        with mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                _url(upstream), data=encode_body(body), timeout=request_timeout(upstream), allow_redirects=False
            ) as response:
                raw = await response.read()
                if response.status >= 300:
                    raise _status_error(upstream, response.status, raw, response.headers)
        return from_anthropic(parse_json(upstream, raw))

    async def stream(self, request: Request, upstream: Upstream) -> AsyncIterator[Chunk]:
        body = {**to_anthropic(request), "stream": True}
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

    async def aclose(self) -> None:
        await self.transport.aclose()


def _url(upstream: Upstream) -> str:
    return upstream.base_url.rstrip("/") + "/messages"


# --- OpenAI request -> Anthropic request --------------------------------------------------------


def to_anthropic(request: Request) -> dict[str, Any]:
    body = request.body
    if request.endpoint != "chat":
        raise InvalidRequest("Anthropic models serve chat completions only; use /v1/chat/completions.", param="model")
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise InvalidRequest(f"This model does not support the '{name}' parameter.", param=name, code="unsupported_parameter")
    temperature = body.get("temperature")
    if temperature is not None and temperature > 1:
        raise InvalidRequest("This model accepts temperature from 0 to 1.", param="temperature", code="unsupported_value")
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    if temperature is not None:
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    if body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_tool(tool) for tool in body["tools"]]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System and developer messages become ``system``; tool results become user turns; turns of
    the same role are merged (Anthropic wants them alternating)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.extend({"type": "text", "text": text} for text in texts(message.get("content")))
            continue
        if role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": "".join(texts(message.get("content")))}]
            role = "user"
        elif role == "assistant":
            blocks = [{"type": "text", "text": text} for text in texts(message.get("content")) if text]
            blocks += [_tool_use(call) for call in message.get("tool_calls") or []]
        else:
            blocks = _user_blocks(message.get("content"))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or []:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append({"type": "image", "source": _image_source(part["image_url"].get("url", ""))})
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    inline = data_url(url)
    if inline is not None:
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    return {"type": "url", "url": url}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments(function.get("arguments"))}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequest("Only function tools are supported.", param="tools")
    function = tool["function"]
    out = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    translated: dict[str, Any] | None
    if choice is None:
        translated = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        translated = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        translated = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")
    if translated is not None and parallel is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated


# --- Anthropic response -> OpenAI completion ----------------------------------------------------


def usage_from_anthropic(wire: dict[str, Any] | None) -> Usage:
    """Anthropic's input_tokens excludes cache reads and cache writes, which come separately."""
    wire = wire or {}

    def count(key: str) -> int:
        value = wire.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    return Usage(
        input_tokens=count("input_tokens"),
        cached_input_tokens=count("cache_read_input_tokens"),
        cache_write_tokens=count("cache_creation_input_tokens"),
        output_tokens=count("output_tokens"),
    )


def from_anthropic(data: dict[str, Any]) -> Completion:
    text = "".join(block.get("text", "") for block in data.get("content") or [] if block.get("type") == "text")
    tool_calls = tuple(
        ToolCall(block.get("id"), block.get("name") or "", orjson.dumps(block.get("input", {})).decode())
        for block in data.get("content") or []
        if block.get("type") == "tool_use"
    )
    finish = FINISH_REASONS.get(data.get("stop_reason") or "end_turn", "stop")
    choice = Choice(text=text or (None if tool_calls else ""), tool_calls=tool_calls, finish_reason=finish)
    return Completion(choices=[choice], usage=usage_from_anthropic(data.get("usage")))


class StreamTranslator:
    """Anthropic's stream events in, OpenAI chunks out. Each tool_use block becomes one entry of
    ``tool_calls``, indexed in order of appearance; its input arrives as argument deltas."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.finished = False
        self._usage_wire: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # content block index -> OpenAI tool call index

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            self._usage_wire = dict((event.get("message") or {}).get("usage") or {})
            self.usage = usage_from_anthropic(self._usage_wire)
            return [Chunk(choices=[Delta(role="assistant", text="")])]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = len(self._tool_index)
                self._tool_index[event.get("index", 0)] = position
                return [_delta(tool_calls=(ToolCallDelta(position, block.get("id"), block.get("name") or ""),))]
            if block.get("type") == "text" and block.get("text"):
                return [_delta(text=block["text"])]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [_delta(text=delta.get("text", ""))]
            if delta.get("type") == "input_json_delta":
                position = self._tool_index.get(event.get("index", 0), 0)
                return [_delta(tool_calls=(ToolCallDelta(position, arguments=delta.get("partial_json", "")),))]
            return []
        if kind == "message_delta":
            # Counts here are cumulative and replace those of message_start, key by key.
            update = {k: v for k, v in (event.get("usage") or {}).items() if isinstance(v, int)}
            self._usage_wire = {**self._usage_wire, **update}
            self.usage = usage_from_anthropic(self._usage_wire)
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                return [Chunk(choices=[Delta(finish_reason=FINISH_REASONS.get(reason, "stop"))])]
            return []
        if kind == "message_stop":
            self.finished = True
            return [Chunk(choices=[], usage=self.usage)]
        return []  # ping, content_block_stop, and event types added later


def _delta(text: str | None = None, tool_calls: tuple[ToolCallDelta, ...] = ()) -> Chunk:
    return Chunk(choices=[Delta(text=text, tool_calls=tool_calls)])


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
