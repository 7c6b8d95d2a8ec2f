"""Anthropic's Messages format <-> the OpenAI form Emporion speaks inside, both ways, for both
callers: the ``/v1/messages`` ingress (api/anthropic: an Anthropic request in, an OpenAI chat
request to the path; the answer back as Anthropic's message or events) and the Anthropic adapter
(providers/anthropic.py: an OpenAI request out as Anthropic's; its message or events back as
typed answers).

A tool call's arguments are JSON text in OpenAI's form and a JSON object in Anthropic's. One rule,
both ways: arguments a *client* sent that are not JSON are its mistake, a 400 naming ``messages``;
arguments a *model* produced that are not JSON are kept, as ``{"_raw": text}``, since the answer is
the client's and nothing of it may be lost.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from emporion.core.answers import Choice, Chunk, Completion, Delta, ToolCall, ToolCallDelta
from emporion.core.usage import Usage
from emporion.errors import EmporionError, InvalidRequest
from emporion.formats.anthropic_schemas import MessagesRequest
from emporion.formats.openai_messages import arguments, data_url, texts
from emporion.formats.sse import sse

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


# --- the adapter: OpenAI request -> Anthropic request, Anthropic's answers -> typed answers ------


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as Anthropic's Messages request (the adapter's way out)."""
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
            blocks = [
                {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": "".join(texts(message.get("content")))}
            ]
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
    """Anthropic's message as a typed answer (the adapter's way back)."""
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


# --- the ingress: Anthropic request -> OpenAI request, answers -> Anthropic's ---------------------


STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def error_envelope(error: EmporionError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(error.status, "api_error"), "message": error.message}}


def to_openai(request: MessagesRequest) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request (the ingress's way in)."""
    messages: list[dict[str, Any]] = []
    if request.system:
        text = request.system if isinstance(request.system, str) else "".join(b.get("text", "") for b in request.system)
        messages.append({"role": "system", "content": text})
    for message in request.messages:
        messages.extend(_user(message.content) if message.role == "user" else [_assistant(message.content)])
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if getattr(request, theirs) is not None:
            body[ours] = getattr(request, theirs)
    if request.stop_sequences:
        body["stop"] = request.stop_sequences[:4]
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "parameters": t.input_schema,
                    **({"description": t.description} if t.description else {}),
                },
            }
            for t in request.tools
        ]
    if request.tool_choice is not None:
        choice = request.tool_choice
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequest("tool_choice of type 'tool' needs a name.", param="tool_choice.name")
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if request.metadata and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    return body


def _user(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results become tool messages (before the rest of the turn), the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            out.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _result_text(block.get("content"))}
            )
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        else:
            raise InvalidRequest(f"Unsupported content block type '{kind}' in a user message.", param="messages")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _result_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text")


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return str(source.get("url", ""))
    raise InvalidRequest("An image source is base64 or url.", param="messages")


def _encoded_input(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, say
        raise InvalidRequest(
            "A tool_use block's input cannot be encoded as JSON (an integer beyond 64 bits?).", param="messages"
        ) from None


def _assistant(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    calls = [
        {
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": _encoded_input(block.get("input", {}))},
        }
        for block in content
        if block.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def usage_to_anthropic(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def to_message(message_id: str, model: str, completion: Completion) -> dict[str, Any]:
    """A typed answer as Anthropic's message (the ingress's way back)."""
    choice = completion.choices[0]
    content: list[dict[str, Any]] = []
    if choice.text:
        content.append({"type": "text", "text": choice.text})
    for call in choice.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _model_input(call.arguments)})
    stop = "tool_use" if choice.tool_calls else STOP_REASONS.get(choice.finish_reason or "stop", "end_turn")
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage_to_anthropic(completion.usage),
    }


def _model_input(raw: Any) -> Any:
    """A model's tool-call arguments as Anthropic's ``input`` object (see the module's rule)."""
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": raw}


async def to_events(message_id: str, model: str, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """OpenAI chunks in, Anthropic's event sequence out. A stream in which the model called a tool
    always ends with stop_reason "tool_use", whatever the upstream's finish reason said."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    yield sse("message_start", {"type": "message_start", "message": start})
    block = -1  # index of the open content block
    open_kind: str | None = None
    tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> content block index
    finish, usage = "stop", Usage()
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.text:
                    if open_kind != "text":
                        if open_kind is not None:
                            yield sse("content_block_stop", {"type": "content_block_stop", "index": block})
                        block, open_kind = block + 1, "text"
                        yield sse(
                            "content_block_start",
                            {"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}},
                        )
                    yield sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": choice.text}},
                    )
                for call in choice.tool_calls:
                    position = call.index
                    if position not in tool_blocks:
                        if open_kind is not None:
                            yield sse("content_block_stop", {"type": "content_block_stop", "index": block})
                        block, open_kind = block + 1, "tool_use"
                        tool_blocks[position] = block
                        tool: dict[str, Any] = {
                            "type": "tool_use",
                            "id": call.id or f"toolu_{secrets.token_hex(8)}",
                            "name": call.name,
                            "input": {},
                        }
                        yield sse("content_block_start", {"type": "content_block_start", "index": block, "content_block": tool})
                    if call.arguments:
                        yield sse(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": tool_blocks[position],
                                "delta": {"type": "input_json_delta", "partial_json": call.arguments},
                            },
                        )
                finish = choice.finish_reason or finish
    except EmporionError as exc:
        yield sse("error", error_envelope(exc))
        return
    if open_kind is not None:
        yield sse("content_block_stop", {"type": "content_block_stop", "index": block})
    stop = "tool_use" if tool_blocks else STOP_REASONS.get(finish, "end_turn")
    yield sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage_to_anthropic(usage)},
    )
    yield sse("message_stop", {"type": "message_stop"})
