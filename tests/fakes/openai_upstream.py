"""A fake OpenAI-compatible upstream speaking the real wire format (Chat Completions and
Completions, JSON and SSE), scripted per test with ``enqueue``; it records what it received."""

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
            ]
        )

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
