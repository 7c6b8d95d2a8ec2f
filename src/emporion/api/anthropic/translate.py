"""Anthropic's Messages format at the door: requests into the OpenAI form the pipeline speaks,
completions and stream chunks back into Anthropic's message and events."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from emporion.api.anthropic.schemas import MessagesRequest
from emporion.core.usage import Usage
from emporion.errors import EmporionError, InvalidRequest
from emporion.providers.base import Chunk, Completion

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


# --- request ------------------------------------------------------------------------------------


def to_openai(request: MessagesRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        text = request.system if isinstance(request.system, str) else "".join(b.get("text", "") for b in request.system)
        messages.append({"role": "system", "content": text})
    for message in request.messages:
        messages.extend(_user(message.content) if message.role == "user" else [_assistant(message.content)])
    body: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if getattr(request, theirs) is not None:
            body[ours] = getattr(request, theirs)
    if request.stop_sequences:
        body["stop"] = request.stop_sequences[:4]
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "parameters": t.input_schema, **({"description": t.description} if t.description else {})}}
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
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _result_text(block.get("content"))})
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
        raise InvalidRequest("A tool_use block's input cannot be encoded as JSON (an integer beyond 64 bits?).", param="messages") from None


def _assistant(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    calls = [
        {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": _encoded_input(block.get("input", {}))}}
        for block in content
        if block.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


# --- response -----------------------------------------------------------------------------------


def usage_to_anthropic(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def to_message(message_id: str, model: str, completion: Completion) -> dict[str, Any]:
    choice = completion.choices[0]
    content: list[dict[str, Any]] = []
    if choice.text:
        content.append({"type": "text", "text": choice.text})
    for call in choice.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call.arguments)})
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


def _arguments(raw: Any) -> Any:
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": raw}


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def to_events(message_id: str, model: str, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """OpenAI chunks in, Anthropic's event sequence out. A stream in which the model called a tool
    always ends with stop_reason "tool_use", whatever the upstream's finish reason said."""
    start: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
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
                        yield sse("content_block_start", {"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}})
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": choice.text}})
                for call in choice.tool_calls:
                    position = call.index
                    if position not in tool_blocks:
                        if open_kind is not None:
                            yield sse("content_block_stop", {"type": "content_block_stop", "index": block})
                        block, open_kind = block + 1, "tool_use"
                        tool_blocks[position] = block
                        tool: dict[str, Any] = {"type": "tool_use", "id": call.id or f"toolu_{secrets.token_hex(8)}", "name": call.name, "input": {}}
                        yield sse("content_block_start", {"type": "content_block_start", "index": block, "content_block": tool})
                    if call.arguments:
                        yield sse("content_block_delta", {"type": "content_block_delta", "index": tool_blocks[position],
                                                          "delta": {"type": "input_json_delta", "partial_json": call.arguments}})  # fmt: skip
                finish = choice.finish_reason or finish
    except EmporionError as exc:
        yield sse("error", error_envelope(exc))
        return
    if open_kind is not None:
        yield sse("content_block_stop", {"type": "content_block_stop", "index": block})
    stop = "tool_use" if tool_blocks else STOP_REASONS.get(finish, "end_turn")
    yield sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage_to_anthropic(usage)})
    yield sse("message_stop", {"type": "message_stop"})
