"""Anthropic's Messages format <-> the OpenAI form Emporion speaks inside, both ways, for both
callers: the ``/v1/messages`` ingress (api/anthropic: an Anthropic request in, an OpenAI chat
request to the path; the answer back as Anthropic's message or events) and the Anthropic adapter
(providers/anthropic.py: an OpenAI request out as Anthropic's; its message or events back as
typed answers).

A tool call's arguments are JSON text in OpenAI's form and a JSON object in Anthropic's. One rule,
both ways: arguments a *client* sent that are not JSON are its mistake, a 400 naming ``messages``;
arguments a *model* produced that are not JSON are kept, as ``{"_raw": text}``, since the answer is
the client's and nothing of it may be lost.

What only Anthropic reads travels beside the OpenAI form, never in it (so that no other upstream
is sent it): ``cache_control`` breakpoints on system blocks, content blocks, tool results and
tools, ``thinking``, and an assistant turn's blocks as the client sent them (thinking blocks with
their signatures, which Anthropic requires back unchanged). ``to_openai`` writes them as fields of
the request that are never dumped (core/requests.py); ``with_hints`` puts them back for the
Anthropic adapter. An Anthropic upstream's own blocks come back the same way: a whole answer keeps
them (``AnthropicChoice``), a stream carries its thinking as ``ThinkingDelta``s. Thinking is never
made up: only an Anthropic upstream's blocks are ever shown as thinking.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from emporion.core.answers import Choice, Chunk, Completion, Delta, Endpoint, ToolCall, ToolCallDelta
from emporion.core.requests import ChatCompletionRequest
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
UNSUPPORTED = (
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "echo",  # legacy completions: Anthropic serves chat only
    "suffix",
)
# response_format json_schema / json_object: Anthropic is made to answer through one forced tool whose
# input schema is the format's; its input comes back as the answer's text (LiteLLM does the same).
ANSWER_TOOL = "emporion_structured_answer"
# OpenAI's reasoning_effort (and OpenRouter's reasoning.effort) as a share of max_tokens for
# Anthropic's thinking budget, as OpenRouter maps them; the budget is 1024 to 32000 tokens.
EFFORT_SHARES = {"minimal": 0.1, "low": 0.2, "medium": 0.5, "high": 0.8, "xhigh": 0.95}
MIN_THINKING_BUDGET, MAX_THINKING_BUDGET = 1024, 32000


# --- what travels beside the OpenAI form ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnthropicChoice(Choice):
    """A choice of an Anthropic upstream's whole answer, with its content blocks as the upstream
    sent them (thinking and redacted_thinking blocks and their signatures included): what an
    Anthropic client gets, unchanged. An OpenAI client gets the thinking's text as ``reasoning``."""

    blocks: tuple[dict[str, Any], ...] = ()

    def to_openai(self, endpoint: Endpoint) -> dict[str, Any]:
        wire = Choice.to_openai(self, endpoint)
        thinking = "".join(str(b.get("thinking", "")) for b in self.blocks if b.get("type") == "thinking")
        if endpoint == "chat" and thinking:
            wire["message"]["reasoning"] = thinking
        return wire


@dataclass(frozen=True, slots=True)
class ThinkingDelta(Delta):
    """A piece of an Anthropic upstream's streamed thinking: a block ``begins`` (a redacted one
    whole, its ``redacted`` data), more of its ``thinking`` text, or its ``signature``. Output: it
    commits the stream (the client sees the thinking as it comes)."""

    thinking: str | None = None
    signature: str | None = None
    redacted: str | None = None
    begins: bool = False

    @property
    def carries_output(self) -> bool:
        return True

    def to_openai(self, endpoint: Endpoint) -> dict[str, Any]:
        wire = Delta.to_openai(self, endpoint)
        if endpoint == "chat" and self.thinking:
            wire["delta"]["reasoning"] = self.thinking
        return wire


@dataclass(frozen=True, slots=True)
class Opening(Chunk):
    """A stream's first chunk where the upstream says at once what the prompt came to (Anthropic's
    message_start, Gemini's first usageMetadata), for the client's ``message_start``. Not in
    ``usage``: usage commits a stream (no fallback after it) and settles it."""

    prompt_usage: Usage = field(default_factory=Usage)


def with_hints(ask: ChatCompletionRequest, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (the request's OpenAI form, as every upstream gets it) with what only Anthropic
    reads put back where the client put it: the input of ``to_anthropic``."""
    if ask.thinking is not None:
        body["thinking"] = ask.thinking
    if ask.cache_control is not None:
        body["cache_control"] = ask.cache_control
    for wire, message in zip(body["messages"], ask.messages, strict=True):
        if message.cache_control is not None:
            wire["cache_control"] = message.cache_control
        if message.anthropic_content is not None:
            wire["anthropic_content"] = message.anthropic_content
        if isinstance(message.content, list):
            for part_wire, part in zip(wire["content"], message.content, strict=True):
                if part.cache_control is not None:
                    part_wire["cache_control"] = part.cache_control
    for wire, tool in zip(body.get("tools") or [], ask.tools or [], strict=True):
        if tool.cache_control is not None:
            wire["cache_control"] = tool.cache_control
    return body


# --- the adapter: OpenAI request -> Anthropic request, Anthropic's answers -> typed answers ------


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request (with its hints: ``with_hints``) as Anthropic's Messages request (the
    adapter's way out)."""
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
    thinking = _thinking(body, out["max_tokens"])
    if thinking is not None and (body.get("thinking") is not None or not _unthought_tool_turn(messages)):
        out["thinking"] = thinking
    if body.get("cache_control"):
        out["cache_control"] = body["cache_control"]
    answer = _answer_tool(body)
    if answer is not None:
        out["tools"], out["tool_choice"] = [answer], {"type": "tool", "name": ANSWER_TOOL}
        out.pop("thinking", None)  # Anthropic takes no thinking with a forced tool
    return out


def _answer_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool that carries a ``response_format`` answer (None: the request asks for text)."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") not in ("json_schema", "json_object"):
        return None
    if body.get("tools"):
        raise InvalidRequest(
            "On this model `response_format` cannot be combined with `tools`.", param="response_format", code="unsupported_value"
        )
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
    return {
        "name": ANSWER_TOOL,
        "description": "Give your answer as this tool's input.",
        "input_schema": schema if isinstance(schema, dict) and schema else {"type": "object"},
    }


def _thinking(body: dict[str, Any], max_tokens: int) -> dict[str, Any] | None:
    """Anthropic's ``thinking`` as the client sent it; else OpenAI's ``reasoning_effort`` or
    OpenRouter's ``reasoning`` (``effort``, ``max_tokens``, ``enabled``) as a thinking budget."""
    if body.get("thinking") is not None:
        return body["thinking"]
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort")
    if reasoning is None and effort is None:
        return None
    if reasoning is not None and not isinstance(reasoning, dict):
        raise InvalidRequest("'reasoning' must be an object.", param="reasoning")
    reasoning = reasoning or {}
    effort = effort if effort is not None else reasoning.get("effort")
    if effort == "none" or reasoning.get("enabled") is False:
        return None
    budget = reasoning.get("max_tokens")
    if budget is None:
        share = EFFORT_SHARES.get(effort if isinstance(effort, str) else "medium" if effort is None else "")
        if share is None:
            param = "reasoning_effort" if body.get("reasoning_effort") is not None else "reasoning.effort"
            raise InvalidRequest(f"'{param}' is one of none, {', '.join(EFFORT_SHARES)}.", param=param)
        budget = min(max(int(max_tokens * share), MIN_THINKING_BUDGET), MAX_THINKING_BUDGET)
    if not isinstance(budget, int) or isinstance(budget, bool) or not MIN_THINKING_BUDGET <= budget < max_tokens:
        raise InvalidRequest(
            f"Thinking on this model needs a budget of at least {MIN_THINKING_BUDGET} tokens, below max_tokens "
            f"({max_tokens}): raise max_tokens.",
            param="max_tokens",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _unthought_tool_turn(turns: list[dict[str, Any]]) -> bool:
    """The last assistant turn called a tool without the thinking it came with (an OpenAI client
    has no thinking blocks to give back): Anthropic refuses thinking then, so a budget from
    ``reasoning_effort`` is left out for that request (the tool loop goes on without thinking)."""
    assistant = [turn for turn in turns if turn["role"] == "assistant"]
    if not assistant or not any(block.get("type") == "tool_use" for block in assistant[-1]["content"]):
        return False
    return assistant[-1]["content"][0].get("type") not in ("thinking", "redacted_thinking")


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System and developer messages become ``system``; tool results become user turns; turns of
    the same role are merged (Anthropic wants them alternating). An assistant turn an Anthropic
    client sent goes back as it sent it; a message's ``cache_control`` marks its last block."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_marked(_text_blocks(message.get("content"), keep_empty=True), message.get("cache_control")))
            continue
        if role == "tool":
            blocks = [_tool_result(message)]
            role = "user"
        elif role == "assistant":
            if message.get("anthropic_content") is not None:
                blocks = [dict(block) for block in message["anthropic_content"]]
            else:
                blocks = _text_blocks(message.get("content"), keep_empty=False)
                blocks += [_tool_use(call) for call in message.get("tool_calls") or []]
        else:
            blocks = _user_blocks(message.get("content"))
        blocks = _marked(blocks, message.get("cache_control"))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _marked(blocks: list[dict[str, Any]], cache_control: Any) -> list[dict[str, Any]]:
    """``blocks`` with a message's ``cache_control`` on the last of them (a block's own wins)."""
    if cache_control and blocks and "cache_control" not in blocks[-1]:
        blocks[-1] = {**blocks[-1], "cache_control": cache_control}
    return blocks


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``block`` with the ``cache_control`` of the part it was made from, where it has one."""
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any, *, keep_empty: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content or keep_empty else []
    return [
        _cached({"type": "text", "text": part["text"]}, part)
        for part in content or []
        if part.get("type") == "text" and (part["text"] or keep_empty)
    ]


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    """A tool message as a tool_result block; its text whole, or as text blocks where the client
    put a breakpoint on one of them."""
    content = message.get("content")
    result: Any = "".join(texts(content))
    if isinstance(content, list) and any(part.get("cache_control") for part in content):
        result = _text_blocks(content, keep_empty=False)
    return {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": result}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or []:
        if part.get("type") == "text":
            blocks.append(_cached({"type": "text", "text": part["text"]}, part))
        elif part.get("type") == "image_url":
            blocks.append(_cached({"type": "image", "source": _image_source(part["image_url"].get("url", ""))}, part))
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
    return _cached(out, tool)


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
    """Anthropic's message as a typed answer (the adapter's way back), its blocks kept as they came."""
    blocks = tuple(block for block in data.get("content") or [] if isinstance(block, dict))
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    answers = [block for block in blocks if block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL]
    text += "".join(orjson.dumps(block.get("input", {})).decode() for block in answers)
    tool_calls = tuple(
        ToolCall(block.get("id"), block.get("name") or "", orjson.dumps(block.get("input", {})).decode())
        for block in blocks
        if block.get("type") == "tool_use" and block.get("name") != ANSWER_TOOL
    )
    finish = FINISH_REASONS.get(data.get("stop_reason") or "end_turn", "stop")
    if answers and finish == "tool_calls":
        finish = "stop"  # the structured answer, not a call for the client to make
    choice = AnthropicChoice(
        text=text or (None if tool_calls else ""), tool_calls=tool_calls, finish_reason=finish, blocks=blocks
    )
    return Completion(choices=[choice], usage=usage_from_anthropic(data.get("usage")))


class StreamTranslator:
    """Anthropic's stream events in, OpenAI chunks out. Each tool_use block becomes one entry of
    ``tool_calls``, indexed in order of appearance; its input arrives as argument deltas. Thinking
    and redacted_thinking blocks become ``ThinkingDelta``s; message_start's usage opens the stream."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.finished = False
        self._usage_wire: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._answer_blocks: set[int] = set()  # content blocks of the structured answer's tool: text

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            self._usage_wire = dict((event.get("message") or {}).get("usage") or {})
            self.usage = usage_from_anthropic(self._usage_wire)
            return [Opening(choices=[Delta(role="assistant", text="")], prompt_usage=self.usage)]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
                self._answer_blocks.add(event.get("index", 0))
                return []
            if block.get("type") == "tool_use":
                position = len(self._tool_index)
                self._tool_index[event.get("index", 0)] = position
                return [_delta(tool_calls=(ToolCallDelta(position, block.get("id"), block.get("name") or ""),))]
            if block.get("type") == "text" and block.get("text"):
                return [_delta(text=block["text"])]
            if block.get("type") == "thinking":
                begun = ThinkingDelta(begins=True, thinking=_text(block.get("thinking")), signature=_text(block.get("signature")))
                return [Chunk(choices=[begun])]
            if block.get("type") == "redacted_thinking":
                return [Chunk(choices=[ThinkingDelta(begins=True, redacted=str(block.get("data", "")))])]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [_delta(text=delta.get("text", ""))]
            if delta.get("type") == "input_json_delta" and event.get("index", 0) in self._answer_blocks:
                return [_delta(text=delta.get("partial_json", ""))] if delta.get("partial_json") else []
            if delta.get("type") == "input_json_delta":
                position = self._tool_index.get(event.get("index", 0), 0)
                return [_delta(tool_calls=(ToolCallDelta(position, arguments=delta.get("partial_json", "")),))]
            if delta.get("type") == "thinking_delta" and _text(delta.get("thinking")):
                return [Chunk(choices=[ThinkingDelta(thinking=delta["thinking"])])]
            if delta.get("type") == "signature_delta" and _text(delta.get("signature")):
                return [Chunk(choices=[ThinkingDelta(signature=delta["signature"])])]
            return []
        if kind == "message_delta":
            # Counts here are cumulative and replace those of message_start, key by key.
            update = {k: v for k, v in (event.get("usage") or {}).items() if isinstance(v, int)}
            self._usage_wire = {**self._usage_wire, **update}
            self.usage = usage_from_anthropic(self._usage_wire)
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason == "tool_use" and self._answer_blocks and not self._tool_index:
                reason = "end_turn"  # the structured answer, not a call for the client to make
            if reason:
                return [Chunk(choices=[Delta(finish_reason=FINISH_REASONS.get(reason, "stop"))])]
            return []
        if kind == "message_stop":
            self.finished = True
            return [Chunk(choices=[], usage=self.usage)]
        return []  # ping, content_block_stop, and event types added later


def _delta(text: str | None = None, tool_calls: tuple[ToolCallDelta, ...] = ()) -> Chunk:
    return Chunk(choices=[Delta(text=text, tool_calls=tool_calls)])


def _text(value: Any) -> str | None:
    """A non-empty string of the wire, else None."""
    return value if isinstance(value, str) and value else None


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
        messages.append({"role": "system", "content": _system(request.system)})
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
                **({"cache_control": t.cache_control} if t.cache_control else {}),
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
    if request.thinking is not None:
        body["thinking"] = request.thinking
    if request.cache_control is not None:
        body["cache_control"] = request.cache_control
    return body


def _system(system: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The system prompt as one text; as text parts where the client put a breakpoint on a block."""
    if isinstance(system, str):
        return system
    if any(block.get("cache_control") for block in system):
        return [_cached({"type": "text", "text": str(block.get("text", ""))}, block) for block in system]
    return "".join(str(block.get("text", "")) for block in system)


def _user(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results become tool messages (before the rest of the turn), the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            result = {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _result(block.get("content"))}
            out.append(_cached(result, block))
        elif kind == "text":
            parts.append(_cached({"type": "text", "text": str(block.get("text", ""))}, block))
        elif kind == "image":
            parts.append(_cached({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}}, block))
        else:
            raise InvalidRequest(f"Unsupported content block type '{kind}' in a user message.", param="messages")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _result(content: Any) -> str | list[dict[str, Any]]:
    """A tool result's text; as text parts where the client put a breakpoint on one of its blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    blocks = [block for block in content if isinstance(block, dict) and block.get("type") == "text"]
    if any(block.get("cache_control") for block in blocks):
        return [_cached({"type": "text", "text": str(block.get("text", ""))}, block) for block in blocks]
    return "".join(str(block.get("text", "")) for block in blocks)


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
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "anthropic_content": content}
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
    """A typed answer as Anthropic's message (the ingress's way back); an Anthropic upstream's
    blocks as it sent them, thinking blocks and signatures included."""
    choice = completion.choices[0]
    content: list[dict[str, Any]] = []
    if isinstance(choice, AnthropicChoice):
        content = [dict(block) for block in choice.blocks]
    else:
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
    """OpenAI chunks in, Anthropic's event sequence out. ``message_start`` carries the prompt's
    usage where the upstream said it at once (``Opening``), and ``message_delta`` the whole usage
    (input and cache counts too: the SDK's final message takes them from there). A stream in which
    the model called a tool always ends with stop_reason "tool_use", whatever the upstream's finish
    reason said."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_to_anthropic(Usage()),
    }
    blocks = _Blocks()
    finish, usage = "stop", Usage()
    started = False
    try:
        async for chunk in chunks:
            if not started:  # the first chunk is already in hand (the path opened the stream on it)
                if isinstance(chunk, Opening):
                    start["usage"] = usage_to_anthropic(chunk.prompt_usage)
                yield sse("message_start", {"type": "message_start", "message": start})
                started = True
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                for event in blocks.feed(choice):
                    yield event
                finish = choice.finish_reason or finish
    except EmporionError as exc:
        if not started:
            yield sse("message_start", {"type": "message_start", "message": start})
        yield sse("error", error_envelope(exc))
        return
    if not started:
        yield sse("message_start", {"type": "message_start", "message": start})
    for event in blocks.close():
        yield event
    stop = "tool_use" if blocks.tools else STOP_REASONS.get(finish, "end_turn")
    yield sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage_to_anthropic(usage)},
    )
    yield sse("message_stop", {"type": "message_stop"})


class _Blocks:
    """Anthropic's content blocks of a stream, opened and closed as the deltas come: thinking,
    redacted_thinking, text and tool_use, one open at a time."""

    def __init__(self) -> None:
        self.index = -1  # of the open (or last) block
        self.open: str | None = None  # its type
        self.tools: dict[int, int] = {}  # OpenAI tool call index -> content block index

    def feed(self, choice: Delta) -> list[bytes]:
        events: list[bytes] = []
        if isinstance(choice, ThinkingDelta):
            events += self._thinking(choice)
        if choice.text:
            if self.open != "text":
                events += self._begin({"type": "text", "text": ""})
            events.append(self._delta(self.index, {"type": "text_delta", "text": choice.text}))
        for call in choice.tool_calls:
            if call.index not in self.tools:
                tool: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.id or f"toolu_{secrets.token_hex(8)}",
                    "name": call.name,
                    "input": {},
                }
                events += self._begin(tool)
                self.tools[call.index] = self.index
            if call.arguments:
                events.append(self._delta(self.tools[call.index], {"type": "input_json_delta", "partial_json": call.arguments}))
        return events

    def _thinking(self, piece: ThinkingDelta) -> list[bytes]:
        if piece.redacted is not None:
            return self._begin({"type": "redacted_thinking", "data": piece.redacted}) + self.close()
        events = (
            self._begin({"type": "thinking", "thinking": "", "signature": ""}) if piece.begins or self.open != "thinking" else []
        )
        if piece.thinking:
            events.append(self._delta(self.index, {"type": "thinking_delta", "thinking": piece.thinking}))
        if piece.signature:
            events.append(self._delta(self.index, {"type": "signature_delta", "signature": piece.signature}))
        return events

    def _begin(self, block: dict[str, Any]) -> list[bytes]:
        events = self.close()
        self.index, self.open = self.index + 1, block["type"]
        return [*events, sse("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})]

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
