"""Function calling on a local model whose chat template knows no tools (the built-in Gemma runs
with llama.cpp's built-in ``gemma`` template, which renders none), by grammar-constrained decoding.

The request's functions are described to the model in a system message, and its answer is held by
llama.cpp's JSON-schema grammar (``response_format`` ``json_schema``, which llama-server turns into
a GBNF grammar) to one of two shapes, the format llama.cpp itself once used for such templates:

    {"tool_calls": [{"name": "get_weather", "arguments": {...}}, ...]}   (one or more calls)
    {"response": "text"}                                                   (an answer)

``tool_choice`` picks the shapes the grammar allows: ``auto`` both, ``required`` the calls only, a
named function calls of that function only, ``none`` no tools at all. Parallel calls are at most
as many as the functions offered (a small model otherwise repeats its call until the output limit),
exactly one with ``parallel_tool_calls: false``. Each call's ``arguments`` is held to the function's ``parameters`` schema,
so a forced call always validates against it. The model's JSON is then read back into OpenAI's
``tool_calls`` (``answer``). Earlier turns of a tool loop are written for the template: an assistant
turn's calls as the same JSON, a tool result as a user turn naming its call.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import orjson

from emporion.core.answers import Choice, Completion, ToolCall
from emporion.errors import InvalidRequest

TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
NO_ARGUMENTS = {"type": "object", "properties": {}}


def uses_tools(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) or any(body.get(name) is not None for name in TOOL_FIELDS)


def constrain(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request as the template can take it: tools in a system message and the answer's
    grammar in ``response_format``; with ``tool_choice: none``, the same without tools."""
    tools = [tool["function"] for tool in body.get("tools") or () if tool.get("type") == "function"]
    choice = body.get("tool_choice") or ("auto" if tools else "none")
    out = {k: v for k, v in body.items() if k not in TOOL_FIELDS}
    out["messages"] = _history(body["messages"])
    if choice == "none" or not tools:
        return out
    if body.get("response_format") and body["response_format"].get("type") != "text":
        raise InvalidRequest(
            "This local model cannot combine tools with response_format: send one or the other.",
            param="response_format",
            code="unsupported_parameter",
        )
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [tool for tool in tools if tool["name"] == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names '{name}', which is not among the tools.", param="tool_choice")
    elif choice not in ("auto", "required"):
        raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")
    calls = _calls_schema(tools, body.get("parallel_tool_calls") is not False)
    schema = calls if choice != "auto" else {"anyOf": [calls, _RESPONSE]}
    out["messages"] = [{"role": "system", "content": _instructions(tools, choice != "auto")}, *out["messages"]]
    out["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    return out


_RESPONSE = {
    "type": "object",
    "properties": {"response": {"type": "string"}},
    "required": ["response"],
    "additionalProperties": False,
}


def _calls_schema(tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    each = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool["name"]]},
                "arguments": tool.get("parameters") or NO_ARGUMENTS,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    call = each[0] if len(each) == 1 else {"anyOf": each}
    calls = {"type": "array", "items": call, "minItems": 1, "maxItems": len(tools) if parallel else 1}
    return {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"], "additionalProperties": False}


def _instructions(tools: list[dict[str, Any]], forced: bool) -> str:
    described = "\n".join(
        orjson.dumps({k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}).decode()
        for tool in tools
    )
    how = 'To call functions, answer {"tool_calls": [{"name": ..., "arguments": {...}}]}'
    if not forced:
        how += '; to answer without calling one, answer {"response": "your answer"}'
    return f"You can call these functions:\n{described}\n{how}."


def _history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier calls and their results, written as the template can render them."""
    out = []
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = [
                {
                    "name": (call.get("function") or {}).get("name"),
                    "arguments": _parsed((call.get("function") or {}).get("arguments")),
                }
                for call in message["tool_calls"]
            ]
            out.append({"role": "assistant", "content": orjson.dumps({"tool_calls": calls}).decode()})
        elif message.get("role") == "tool":
            content = message.get("content")
            text = (
                content if isinstance(content, str) else "".join(p.get("text", "") for p in content or () if isinstance(p, dict))
            )
            out.append({"role": "user", "content": f"Result of call {message.get('tool_call_id')}: {text}"})
        else:
            out.append(message)
    return out


def _parsed(arguments: Any) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("A tool call's arguments are not valid JSON.", param="messages") from None


def answer(completion: Completion) -> Completion:
    """The model's constrained JSON read back as OpenAI's answer: tool calls (finish_reason
    ``tool_calls``) or the response's text. Output cut short (``length``) that is not whole JSON is
    left as the text it is."""
    return replace(completion, choices=[_choice(choice) for choice in completion.choices])


def _choice(choice: Choice) -> Choice:
    try:
        said = orjson.loads(choice.text or "")
    except orjson.JSONDecodeError:
        return choice
    if isinstance(said, dict) and isinstance(said.get("tool_calls"), list):
        calls = tuple(
            ToolCall("call_" + secrets.token_hex(12), str(call.get("name", "")), orjson.dumps(call.get("arguments", {})).decode())
            for call in said["tool_calls"]
            if isinstance(call, dict)
        )
        return replace(choice, text=None, tool_calls=calls, finish_reason="tool_calls")
    if isinstance(said, dict) and isinstance(said.get("response"), str):
        return replace(choice, text=said["response"])
    return choice
