"""A Responses request passed through to an upstream that serves OpenAI's ``/v1/responses``
itself (``[[upstreams]] responses_api = true``: OpenAI, vLLM), and its answers read back as typed
answers: the request path meters and limits them as any other, and the client gets the
upstream's own output items (its reasoning items included) in a whole response.

What goes upstream is the client's request, with the conversation so far written out as input
items (``previous_response_id`` names a response stored here, not there), ``store: false`` (the
response is stored here), the deployment's model name, and the output limit the hold allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emporion.core.answers import Choice, Delta, ToolCall, ToolCallDelta
from emporion.core.requests import ChatCompletionRequest
from emporion.core.usage import Usage
from emporion.formats.responses_schemas import ResponsesRequest

INCOMPLETE_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class PassedChoice(Choice):
    """The answer of an upstream's own Responses API, with its output items as it sent them."""

    items: tuple[dict[str, Any], ...] = ()


def passthrough(request: ResponsesRequest, conversation: list[dict[str, Any]]) -> dict[str, Any]:
    """The request as an upstream's own /v1/responses takes it: the whole conversation as input
    items, without the ids and statuses this gateway gave them (they name nothing upstream) and
    without reasoning items (an upstream that stores nothing cannot read them back)."""
    body = request.model_dump(exclude_none=True, exclude={"previous_response_id", "stream", "store", "model", "input"})
    body["input"] = [
        {key: value for key, value in item.items() if key not in ("id", "status")}
        for item in conversation
        if item.get("type") != "reasoning"
    ]
    return body


def upstream_body(ask: ChatCompletionRequest, model: str, streamed: bool) -> dict[str, Any] | None:
    """The body to send to the upstream's /v1/responses; None when the request did not come as one."""
    passed = ask.responses_body
    if passed is None:
        return None
    body = {**passed, "model": model, "stream": streamed, "store": False}
    limit = ask.output_limit()
    if limit is not None:
        body["max_output_tokens"] = limit
    return body


def usage_from_responses(wire: Any) -> Usage | None:
    if not isinstance(wire, dict):
        return None
    details = _object(wire.get("input_tokens_details"))
    prompt = _count(wire.get("input_tokens"))
    cached = min(prompt, _count(details.get("cached_tokens")))
    return Usage(input_tokens=prompt - cached, cached_input_tokens=cached, output_tokens=_count(wire.get("output_tokens")))


def from_responses(data: dict[str, Any]) -> tuple[PassedChoice, Usage | None]:
    """An upstream's Response object as a typed answer."""
    items = tuple(item for item in data.get("output") or () if isinstance(item, dict))
    text = "".join(
        part.get("text", "")
        for item in items
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    )
    refusal = "".join(
        part.get("refusal", "")
        for item in items
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "refusal"
    )
    calls = tuple(
        ToolCall(item.get("call_id"), str(item.get("name") or ""), str(item.get("arguments") or ""))
        for item in items
        if item.get("type") == "function_call"
    )
    choice = PassedChoice(
        text=text or (None if calls else ""),
        tool_calls=calls,
        refusal=refusal or None,
        finish_reason=_finish(data, bool(calls)),
        items=items,
    )
    return choice, usage_from_responses(data.get("usage"))


def _finish(data: dict[str, Any], called: bool) -> str:
    if data.get("status") == "incomplete":
        reason = _object(data.get("incomplete_details")).get("reason")
        return INCOMPLETE_FINISH.get(str(reason), "length")
    return "tool_calls" if called else "stop"


class EventTranslator:
    """An upstream's Responses stream events in, chunk deltas out: text deltas, function calls
    (named when their item is added, arguments as they come), the finish and the usage at the end."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finished = False
        self._calls: dict[str, int] = {}  # item id -> tool call index

    def feed(self, event: dict[str, Any]) -> tuple[list[Delta], Usage | None]:
        kind = event.get("type")
        if kind == "response.output_text.delta" and event.get("delta"):
            return [Delta(text=str(event["delta"]))], None
        if kind == "response.refusal.delta" and event.get("delta"):
            return [Delta(refusal=str(event["delta"]))], None
        item = _object(event.get("item"))
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            index = self._calls.setdefault(str(item.get("id")), len(self._calls))
            start = ToolCallDelta(index, item.get("call_id"), str(item.get("name") or ""), str(item.get("arguments") or ""))
            return [Delta(tool_calls=(start,))], None
        if kind == "response.function_call_arguments.delta" and event.get("delta"):
            index = self._calls.get(str(event.get("item_id")), 0)
            return [Delta(tool_calls=(ToolCallDelta(index, arguments=str(event["delta"])),))], None
        if kind in ("response.completed", "response.incomplete"):
            response = _object(event.get("response"))
            self.finished = True
            self.usage = usage_from_responses(response.get("usage"))
            return [Delta(finish_reason=_finish(response, bool(self._calls)))], self.usage
        return [], None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
