"""OpenAI's Responses API <-> the chat form Emporion speaks inside, for the ``/v1/responses``
ingress (api/openai/responses.py): a Responses request (and the conversation it continues) in, a
chat request to the path; the answer back as a Response object, or as the Responses stream's
typed events (``response.created`` … ``response.completed``, each with its ``sequence_number``).

Input items map onto chat messages one way, and the items a response put out map back the same
way when a later request continues it (``previous_response_id``): a ``message`` item is a message
of its role, consecutive ``function_call`` items one assistant message with ``tool_calls``, a
``function_call_output`` a ``tool`` message. Reasoning items carry nothing a chat model reads and
are left out; item types that need a tool Emporion does not run (files, computers, shells) are a
400 naming the item.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from emporion.core.answers import Choice, Chunk, Completion
from emporion.core.money import Nanos, to_usd
from emporion.core.usage import Usage
from emporion.errors import EmporionError, InvalidRequest
from emporion.formats.responses_schemas import ResponsesRequest
from emporion.formats.responses_upstream import PassedChoice
from emporion.formats.sse import sse

LOGPROBS = "message.output_text.logprobs"
SKIPPED_ITEMS = frozenset({"reasoning"})  # put out by reasoning models; a chat model reads none of it
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """OpenAI's shape of ids: ``resp_``, ``msg_``, ``fc_``, ``call_`` and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


# --- the way in: Responses request (+ the conversation before it) -> chat request ---------------


def input_items(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items with ids (what is stored, and listed by ``input_items``); a
    string is one user message."""
    raw = [{"role": "user", "content": request.input}] if isinstance(request.input, str) else request.input
    return [_item(item, f"input[{index}]") for index, item in enumerate(raw)]


def _item(item: dict[str, Any], param: str) -> dict[str, Any]:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest(
                f"Invalid '{param}.role': expected one of 'user', 'system', 'developer' or 'assistant'.", param=f"{param}.role"
            )
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
        if not isinstance(content, list):
            raise InvalidRequest(
                f"Invalid '{param}.content': expected a string or a list of content parts.", param=f"{param}.content"
            )
        parts = [_part(part, role, f"{param}.content[{index}]") for index, part in enumerate(content)]
        out = {"id": item.get("id") or new_id("msg"), "type": "message", "role": role, "content": parts, "status": "completed"}
        return out
    if kind == "function_call":
        for field in ("call_id", "name", "arguments"):
            if not isinstance(item.get(field), str):
                raise InvalidRequest(f"Missing required parameter: '{param}.{field}'.", param=f"{param}.{field}")
        return {
            "id": item.get("id") or new_id("fc"),
            "type": "function_call",
            "call_id": item["call_id"],
            "name": item["name"],
            "arguments": item["arguments"],
            "status": "completed",
        }
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"Missing required parameter: '{param}.call_id'.", param=f"{param}.call_id")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(str(part.get("text", "")) for part in output if isinstance(part, dict))
        if not isinstance(output, str):
            raise InvalidRequest(f"Invalid '{param}.output': expected a string.", param=f"{param}.output")
        return {
            "id": item.get("id") or new_id("fco"),
            "type": "function_call_output",
            "call_id": item["call_id"],
            "output": output,
            "status": "completed",
        }
    if kind in SKIPPED_ITEMS:
        return dict(item)
    raise InvalidRequest(f"Input items of type '{kind}' are not supported here.", param=f"{param}.type", code="unsupported_value")


def _part(part: Any, role: str, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest(f"Invalid '{param}': expected an object.", param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
        if role == "assistant":
            return {"type": "output_text", "text": part["text"], "annotations": []}
        return {"type": "input_text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image" and role != "assistant":
        if not isinstance(part.get("image_url"), str):
            raise InvalidRequest(
                f"Invalid '{param}': give the image as 'image_url' (a URL or a data URL); file ids are not supported here.",
                param=param,
                code="unsupported_value",
            )
        return {"type": "input_image", "image_url": part["image_url"], "detail": part.get("detail") or "auto"}
    raise InvalidRequest(
        f"Content parts of type '{kind}' are not supported here.", param=f"{param}.type", code="unsupported_value"
    )


def messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items (input, or a stored response's input and output) as chat messages."""
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            if item["role"] == "assistant":
                text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
                out.append({"role": "assistant", "content": text})
                continue
            parts: list[dict[str, Any]] = [
                {"type": "text", "text": p["text"]}
                if p["type"] == "input_text"
                else {"type": "image_url", "image_url": {"url": p["image_url"], "detail": p["detail"]}}
                for p in item["content"]
            ]
            if all(p["type"] == "text" for p in parts):
                out.append({"role": item["role"], "content": "".join(p["text"] for p in parts)})
            else:
                out.append({"role": item["role"], "content": parts})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return out


def to_chat(request: ResponsesRequest, history: list[dict[str, Any]], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request that answers ``request``: its instructions (never those of the responses
    it continues, as OpenAI does), the conversation so far, its input."""
    body: dict[str, Any] = {"model": request.model, "messages": [], "stream": request.stream}
    if request.instructions:
        body["messages"].append({"role": "system", "content": request.instructions})
    conversation = messages(history + items)
    if not conversation:
        raise InvalidRequest("The input has no message for the model to answer.", param="input")
    body["messages"] += conversation
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for ours, theirs in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if getattr(request, theirs) is not None:
            body[ours] = getattr(request, theirs)
    if request.user is not None:
        body["user"] = request.user
    if request.tools:
        body["tools"] = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    response_format = _response_format(request)
    if response_format is not None:
        body["response_format"] = response_format
    if request.top_logprobs or LOGPROBS in (request.include or ()):
        body["logprobs"] = True
        if request.top_logprobs:
            body["top_logprobs"] = request.top_logprobs
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    if request.text is not None and request.text.verbosity is not None:
        body["verbosity"] = request.text.verbosity
    if request.service_tier is not None:
        body["service_tier"] = request.service_tier
    for routing in ("models", "provider", "route"):
        if getattr(request, routing) is not None:
            body[routing] = getattr(request, routing)
    return body


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind != "function":
        raise InvalidRequest(
            f"Tools of type '{kind}' are not supported here: only function tools, which your application runs.",
            param=f"{param}.type",
            code="unsupported_value",
        )
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidRequest(f"Missing required parameter: '{param}.name'.", param=f"{param}.name")
    function: dict[str, Any] = {
        "name": tool["name"],
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        "Invalid 'tool_choice': expected 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}.",
        param="tool_choice",
        code="unsupported_value",
    )


def _response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    fmt = request.text.format if request.text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("text.format of type 'json_schema' needs a 'name' and a 'schema'.", param="text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        "Invalid 'text.format.type': expected 'text', 'json_object' or 'json_schema'.",
        param="text.format.type",
        code="unsupported_value",
    )


# --- the way out: the answer as a Response --------------------------------------------------------


def skeleton(request: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
    """The Response before any output: what the request asked for, echoed as OpenAI does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {
            "effort": request.reasoning.effort if request.reasoning else None,
            "summary": request.reasoning.summary if request.reasoning else None,
        },
        "safety_identifier": request.safety_identifier,
        "prompt_cache_key": request.prompt_cache_key,
        "service_tier": request.service_tier or "default",
        "store": request.stored,
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": {
            "format": (request.text.format if request.text and request.text.format else {"type": "text"}),
            "verbosity": (request.text.verbosity if request.text and request.text.verbosity else "medium"),
        },
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": [_echo_tool(tool) for tool in request.tools or ()],
        "top_logprobs": request.top_logprobs or 0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict", True),
    }


def usage_to_responses(usage: Usage, cost: Nanos) -> dict[str, Any]:
    """The Responses API's usage object, with the request's cost in USD (as on chat)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.output_tokens,
        "cost": float(to_usd(cost)),
    }


def finished(
    response: dict[str, Any], output: list[dict[str, Any]], finish_reason: str | None, usage: Usage, cost: Nanos
) -> dict[str, Any]:
    """The Response once its answer is whole: completed, or incomplete where the output limit or
    a content filter cut it (as OpenAI reports ``finish_reason`` length)."""
    reason = INCOMPLETE.get(finish_reason or "")
    done = {
        **response,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage_to_responses(usage, cost),
    }
    if not reason:
        done["completed_at"] = int(time.time())
    return done


def output_items(choice: Choice) -> list[dict[str, Any]]:
    """A whole answer's output: its message (text or refusal), then its function calls; an
    upstream's own Responses output as it sent it (its reasoning items included)."""
    if isinstance(choice, PassedChoice) and choice.items:
        return [dict(item) for item in choice.items]
    status = "incomplete" if choice.finish_reason in INCOMPLETE else "completed"
    items: list[dict[str, Any]] = []
    if choice.text or choice.refusal or not choice.tool_calls:
        content: dict[str, Any] = (
            {"type": "refusal", "refusal": choice.refusal}
            if choice.refusal and not choice.text
            else {"type": "output_text", "text": choice.text or "", "annotations": [], "logprobs": _logprobs(choice.logprobs)}
        )
        items.append({"id": new_id("msg"), "type": "message", "status": status, "role": "assistant", "content": [content]})
    for call in choice.tool_calls:
        items.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": call.id or new_id("call"),
                "name": call.name,
                "arguments": call.arguments,
            }
        )
    return items


def to_response(skeleton_: dict[str, Any], completion: Completion, cost: Nanos) -> dict[str, Any]:
    choice = completion.choices[0] if completion.choices else Choice(text="")
    return finished(skeleton_, output_items(choice), choice.finish_reason, completion.usage, cost)


def _logprobs(wire: Any) -> list[dict[str, Any]]:
    """Chat's ``logprobs.content`` as the Responses API's list (the same entries, fewer keys)."""
    content = wire.get("content") if isinstance(wire, dict) else None
    if not isinstance(content, list):
        return []
    return [
        {
            "token": entry.get("token", ""),
            "logprob": entry.get("logprob", 0.0),
            "bytes": entry.get("bytes") or [],
            "top_logprobs": [
                {"token": top.get("token", ""), "logprob": top.get("logprob", 0.0), "bytes": top.get("bytes") or []}
                for top in entry.get("top_logprobs") or []
                if isinstance(top, dict)
            ],
        }
        for entry in content
        if isinstance(entry, dict)
    ]


# --- the stream: chat chunks in, Responses events out ---------------------------------------------


class _Events:
    """Numbers the events of one stream, in order, from 0."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(kind, payload)


async def to_events(
    response: dict[str, Any],
    chunks: AsyncIterator[Chunk],
    charged: Callable[[], Nanos],
    store: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The Responses stream of one answer: created and in_progress; per output item added, its
    deltas, done; then completed (or incomplete) with the whole Response, usage and cost included,
    after ``store`` has kept it. A failure after the stream began ends it with response.failed."""
    emit = _Events()
    yield emit("response.created", response=response)
    yield emit("response.in_progress", response=response)
    output: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None  # the open message item, while text comes
    calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its open function_call item
    usage, finish = Usage(), None
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            for delta in chunk.choices[:1]:
                finish = delta.finish_reason or finish
                if delta.text:
                    if message is None:
                        for event in _close_calls(emit, output, calls):
                            yield event
                        message = {
                            "id": new_id("msg"),
                            "type": "message",
                            "status": "in_progress",
                            "role": "assistant",
                            "content": [],
                        }
                        output.append(message)
                        yield emit("response.output_item.added", output_index=len(output) - 1, item=message)
                        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                        yield emit(
                            "response.content_part.added",
                            item_id=message["id"],
                            output_index=len(output) - 1,
                            content_index=0,
                            part=part,
                        )
                        message["content"].append({**part})
                    text = message["content"][0]
                    text["text"] += delta.text
                    logprobs = _logprobs(delta.logprobs)
                    text["logprobs"] += logprobs
                    yield emit(
                        "response.output_text.delta",
                        item_id=message["id"],
                        output_index=output.index(message),
                        content_index=0,
                        delta=delta.text,
                        logprobs=logprobs,
                    )
                for piece in delta.tool_calls:
                    if piece.index not in calls:
                        if message is not None:
                            for event in _close_message(emit, output, message, "completed"):
                                yield event
                            message = None
                        item = {
                            "id": new_id("fc"),
                            "type": "function_call",
                            "status": "in_progress",
                            "call_id": piece.id or new_id("call"),
                            "name": piece.name or "",
                            "arguments": "",
                        }
                        calls[piece.index] = item
                        output.append(item)
                        yield emit("response.output_item.added", output_index=len(output) - 1, item={**item})
                    item = calls[piece.index]
                    if piece.arguments:
                        item["arguments"] += piece.arguments
                        yield emit(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=output.index(item),
                            delta=piece.arguments,
                        )
    except EmporionError as exc:
        failed = {
            **response,
            "status": "failed",
            "output": output,
            "error": {"code": exc.instance_code or "server_error", "message": exc.message},
        }
        yield emit("response.failed", response=failed)
        return
    status = "incomplete" if finish in INCOMPLETE else "completed"
    if message is not None:
        for event in _close_message(emit, output, message, status):
            yield event
    for event in _close_calls(emit, output, calls):
        yield event
    if not output:  # an empty answer is still one (empty) message, as a whole answer's is
        for event in _empty_message(emit, output):
            yield event
    done = finished(response, output, finish, usage, charged())
    await store(done)
    yield emit("response.incomplete" if done["status"] == "incomplete" else "response.completed", response=done)


def _close_message(emit: _Events, output: list[dict[str, Any]], message: dict[str, Any], status: str) -> list[bytes]:
    index, part = output.index(message), message["content"][0]
    message["status"] = status
    return [
        emit(
            "response.output_text.done",
            item_id=message["id"],
            output_index=index,
            content_index=0,
            text=part["text"],
            logprobs=part["logprobs"],
        ),
        emit("response.content_part.done", item_id=message["id"], output_index=index, content_index=0, part=part),
        emit("response.output_item.done", output_index=index, item=message),
    ]


def _close_calls(emit: _Events, output: list[dict[str, Any]], calls: dict[int, dict[str, Any]]) -> list[bytes]:
    events = []
    for item in calls.values():
        if item["status"] == "in_progress":
            item["status"] = "completed"
            index = output.index(item)
            events.append(
                emit(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(emit("response.output_item.done", output_index=index, item=item))
    return events


def _empty_message(emit: _Events, output: list[dict[str, Any]]) -> list[bytes]:
    message: dict[str, Any] = {
        "id": new_id("msg"),
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    output.append(message)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events = [
        emit("response.output_item.added", output_index=0, item={**message, "content": []}),
        emit("response.content_part.added", item_id=message["id"], output_index=0, content_index=0, part=part),
    ]
    message["content"].append({**part})
    return events + _close_message(emit, output, message, "completed")
