"""A fake OpenAI-compatible upstream speaking the real wire format (Chat Completions,
Completions and OpenAI's own Responses API, JSON and SSE), scripted per test with ``enqueue``; it records what it received."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import Abort, Script, ScriptQueue, paced

__all__ = ["FakeOpenAI", "Script"]


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def legacy_logprobs(script: Script, pieces: list[str], start: int = 0) -> dict[str, list[Any]] | None:
    """OpenAI's legacy completions logprobs of ``pieces`` (each one token), when the script has a logprob."""
    if script.logprob is None:
        return None
    offsets = [start + sum(len(piece) for piece in pieces[:i]) for i in range(len(pieces))]
    return {
        "tokens": pieces,
        "token_logprobs": [script.logprob] * len(pieces),
        "top_logprobs": [{piece: script.logprob} for piece in pieces],
        "text_offset": offsets,
    }


def fault_response(script: Script, error: dict[str, Any]) -> Response | None:
    """The response for a script's fault before any output, or None when it has none."""
    if script.raw_body is not None:
        return Response(script.raw_body, status_code=script.status, media_type="application/json", headers=script.headers)
    if script.status >= 300:
        body = orjson.dumps(script.error or error)
        return Response(body, status_code=script.status, media_type="application/json", headers=script.headers)
    if script.reset_after_chunks == 0:

        async def broken():
            yield b'{"partial": '
            raise Abort("connection reset by the fake")

        return StreamingResponse(broken(), media_type="application/json", headers={"content-length": "4096"})
    return None


class FakeOpenAI(ScriptQueue):
    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._handle, methods=["POST"]),
                Route("/v1/completions", self._handle, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
            ]
        )

    async def _responses(self, request: Request) -> Response:
        """OpenAI's own Responses API (for upstreams with ``responses_api = true``): a reasoning
        item, the message, the function calls; streamed as OpenAI's typed events."""
        body = orjson.loads(await request.body())
        script = await self.next(request, body)
        error = {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}}
        if (fault := fault_response(script, error)) is not None:
            return fault
        items: list[dict[str, Any]] = [{"type": "reasoning", "id": "rs_fake", "summary": []}]
        if script.text or not script.tool_calls:
            part = {"type": "output_text", "text": script.text, "annotations": []}
            items.append({"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed", "content": [part]})
        items += [
            {
                "type": "function_call",
                "id": f"fc_fake_{i}",
                "call_id": f"call_fake_{i}",
                "name": name,
                "arguments": orjson.dumps(args).decode(),
                "status": "completed",
            }
            for i, (name, args) in enumerate(script.tool_calls)
        ]
        incomplete = script.finish_reason == "length"
        response = {
            "id": "resp_upstream",
            "object": "response",
            "created_at": int(time.time()),
            "model": body.get("model"),
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": items,
            "usage": {
                "input_tokens": script.prompt_tokens,
                "input_tokens_details": {"cached_tokens": script.cached_tokens},
                "output_tokens": script.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": script.prompt_tokens + script.completion_tokens,
            },
        }
        if not body.get("stream"):
            return Response(orjson.dumps(response), media_type="application/json")

        def named(kind: str, **payload: Any) -> bytes:
            return f"event: {kind}\n".encode() + sse({"type": kind, **payload})

        events = [named("response.created", response={**response, "status": "in_progress", "output": [], "usage": None})]
        content: list[int] = []
        for index, item in enumerate(items):
            if item["type"] == "message":
                events.append(named("response.output_item.added", output_index=index, item={**item, "content": []}))
                for piece in script.pieces():
                    content.append(len(events))
                    events.append(named("response.output_text.delta", item_id=item["id"], output_index=index, delta=piece))
            elif item["type"] == "function_call":
                content.append(len(events))
                events.append(named("response.output_item.added", output_index=index, item={**item, "arguments": ""}))
                events.append(
                    named(
                        "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=item["arguments"]
                    )
                )
            else:
                events.append(named("response.output_item.added", output_index=index, item=item))
            events.append(named("response.output_item.done", output_index=index, item=item))
        events.append(named("response.incomplete" if incomplete else "response.completed", response=response))
        return StreamingResponse(paced(script, events, content, self), media_type="text/event-stream")

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        script = await self.next(request, body)
        error = {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}}
        if (fault := fault_response(script, error)) is not None:
            return fault
        chat = request.url.path.endswith("/chat/completions")
        usage = {
            "prompt_tokens": script.prompt_tokens,
            "completion_tokens": script.completion_tokens,
            "total_tokens": script.prompt_tokens + script.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
        }
        head = {"id": "upstream-id", "created": int(time.time()), "model": body.get("model")}
        calls = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
            for i, (name, args) in enumerate(script.tool_calls)
        ]
        if not body.get("stream"):
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": script.text or None}
                if calls:
                    message["tool_calls"] = calls
                choice = {"index": 0, "message": message, "finish_reason": script.finish_reason}
            else:
                logprobs = legacy_logprobs(script, script.pieces())
                choice = {"index": 0, "text": script.text, "logprobs": logprobs, "finish_reason": script.finish_reason}
            obj = "chat.completion" if chat else "text_completion"
            return Response(
                orjson.dumps({**head, "object": obj, "choices": [choice], "usage": usage}), media_type="application/json"
            )

        obj = "chat.completion.chunk" if chat else "text_completion"
        events, content = [], []
        if chat:
            events.append(
                sse(
                    {
                        **head,
                        "object": obj,
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                    }
                )
            )
        offset = 0
        for piece in script.pieces():
            content.append(len(events))
            choice = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "logprobs": legacy_logprobs(script, [piece], offset), "finish_reason": None}
            )
            offset += len(piece)
            events.append(sse({**head, "object": obj, "choices": [choice]}))
        for i, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            start = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
            }
            content.append(len(events))
            events.append(
                sse({**head, "object": obj, "choices": [{"index": 0, "delta": {"tool_calls": [start]}, "finish_reason": None}]})
            )
            rest = {"index": i, "function": {"arguments": arguments[half:]}}
            events.append(
                sse({**head, "object": obj, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": None}]})
            )
        last = (
            {"index": 0, "delta": {}, "finish_reason": script.finish_reason}
            if chat
            else {"index": 0, "text": "", "finish_reason": script.finish_reason}
        )
        events.append(sse({**head, "object": obj, "choices": [last]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(sse({**head, "object": obj, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return StreamingResponse(paced(script, events, content, self), media_type="text/event-stream")
