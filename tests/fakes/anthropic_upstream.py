"""A fake Anthropic Messages upstream (``POST /v1/messages``, JSON and SSE events), scripted
per test with the same Script as the other fakes: text, tool use, thinking and redacted_thinking
blocks (streamed as thinking_delta and signature_delta), usage with cache reads and writes. Like
Anthropic, it refuses a request with thinking whose last assistant turn used a tool without
giving its thinking back."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.openai_upstream import fault_response
from tests.fakes.script import ScriptQueue, paced

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


class FakeAnthropic(ScriptQueue):
    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._handle, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count, methods=["POST"]),
            ]
        )

    async def _count(self, request: Request) -> Response:
        """Anthropic's count_tokens: ``{"input_tokens": N}`` (the script's prompt_tokens)."""
        script = await self.next(request, orjson.loads(await request.body()))
        error = {"type": "error", "error": {"type": "api_error", "message": "fake failure"}}
        if (fault := fault_response(script, error)) is not None:
            return fault
        return Response(orjson.dumps({"input_tokens": script.prompt_tokens}), media_type="application/json")

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        script = await self.next(request, body)
        error = {"type": "error", "error": {"type": "api_error", "message": "fake failure"}}
        if (fault := fault_response(script, error)) is not None:
            return fault
        if (refusal := _thinking_missing(body)) is not None:
            return refusal
        usage = {
            "input_tokens": script.prompt_tokens - script.cached_tokens - script.cache_write_tokens,
            "cache_read_input_tokens": script.cached_tokens,
            "cache_creation_input_tokens": script.cache_write_tokens,
            "output_tokens": script.completion_tokens,
        }
        stop = STOP_REASONS.get(script.finish_reason, "end_turn")
        blocks: list[dict[str, Any]] = [dict(block) for block in script.thinking]
        blocks += [{"type": "text", "text": script.text}] if script.text else []
        blocks += [
            {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": args}
            for i, (name, args) in enumerate(script.tool_calls)
        ]
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"], "stop_sequence": None}
        if not body.get("stream"):
            return Response(
                orjson.dumps({**message, "content": blocks, "stop_reason": stop, "usage": usage}), media_type="application/json"
            )

        start_usage = {**usage, "output_tokens": 1}
        events = [
            event(
                "message_start",
                {"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": start_usage}},
            )
        ]
        events.append(event("ping", {"type": "ping"}))
        content = []
        for index, block in enumerate(blocks):
            if block["type"] in ("thinking", "redacted_thinking"):
                events += _thinking_events(index, block)
            elif block["type"] == "text":
                events.append(
                    event(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                    )
                )
                for piece in script.pieces():
                    content.append(len(events))
                    events.append(
                        event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}},
                        )
                    )
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                content.append(len(events))
                events.append(
                    event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
                )
                arguments = orjson.dumps(block["input"]).decode()
                half = len(arguments) // 2
                for part in (arguments[:half], arguments[half:]):
                    events.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part},
                            },
                        )
                    )
            events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        events.append(event("message_stop", {"type": "message_stop"}))
        return StreamingResponse(paced(script, events, content, self), media_type="text/event-stream")


def _thinking_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """A thinking block as Anthropic streams it (its text in two deltas, then its signature); a
    redacted one whole in its content_block_start."""
    if block["type"] == "redacted_thinking":
        return [event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})]
    start = {"type": "thinking", "thinking": "", "signature": ""}
    events = [event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})]
    text = block["thinking"]
    half = len(text) // 2
    for part in (text[:half], text[half:]):
        delta = {"type": "thinking_delta", "thinking": part}
        events.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
    delta = {"type": "signature_delta", "signature": block["signature"]}
    events.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
    return events


def _thinking_missing(body: dict[str, Any]) -> Response | None:
    """Anthropic's 400 for a request with thinking on whose last assistant turn called a tool but
    does not start with the thinking it came with."""
    if (body.get("thinking") or {}).get("type") != "enabled":
        return None
    turns = [m for m in body.get("messages") or [] if m.get("role") == "assistant" and isinstance(m.get("content"), list)]
    if not turns or not any(block.get("type") == "tool_use" for block in turns[-1]["content"]):
        return None
    if turns[-1]["content"][0].get("type") in ("thinking", "redacted_thinking"):
        return None
    message = "messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`."
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    return Response(body, status_code=400, media_type="application/json")
