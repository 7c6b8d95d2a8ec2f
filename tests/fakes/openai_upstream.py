"""A fake OpenAI-compatible upstream speaking the real wire format (Chat Completions and
Completions, JSON and SSE), scripted per test with ``enqueue``; it records what it received."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Script:
    text: str = "Hello from the fake upstream."
    status: int = 200
    error: dict[str, Any] | None = None  # OpenAI error envelope body for status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent as is (for malformed JSON)
    prompt_tokens: int = 7
    cached_tokens: int = 0
    finish_reason: str = "stop"
    chunk_delay_s: float = 0.0
    cut_after_chunks: int | None = None  # close the stream after this many chunks, without [DONE]


class FakeOpenAI:
    def __init__(self) -> None:
        self.scripts: collections.deque[Script] = collections.deque()
        self.received: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._handle, methods=["POST"]),
                Route("/v1/completions", self._handle, methods=["POST"]),
            ]
        )

    def enqueue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.received.append(body)
        self.headers_seen.append(dict(request.headers))
        script = self.scripts.popleft() if self.scripts else Script()
        if script.raw_body is not None:
            return Response(script.raw_body, status_code=script.status, media_type="application/json", headers=script.headers)
        if script.status >= 400:
            error = script.error or {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}}
            return Response(orjson.dumps(error), status_code=script.status, media_type="application/json", headers=script.headers)
        chat = request.url.path.endswith("/chat/completions")
        words = script.text.split(" ")
        usage = {
            "prompt_tokens": script.prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": script.prompt_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
        }
        head = {"id": "upstream-id", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": script.text}, "finish_reason": script.finish_reason}
            else:
                choice = {"index": 0, "text": script.text, "finish_reason": script.finish_reason}
            obj = "chat.completion" if chat else "text_completion"
            return Response(orjson.dumps({**head, "object": obj, "choices": [choice], "usage": usage}), media_type="application/json")

        async def events():
            obj = "chat.completion.chunk" if chat else "text_completion"
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            sent = 0
            if chat:
                yield _sse({**head, "object": obj, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for piece in pieces:
                if script.cut_after_chunks is not None and sent >= script.cut_after_chunks:
                    return
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else {"index": 0, "text": piece, "finish_reason": None}
                yield _sse({**head, "object": obj, "choices": [choice]})
                sent += 1
            last = {"index": 0, "delta": {}, "finish_reason": script.finish_reason} if chat else {"index": 0, "text": "", "finish_reason": script.finish_reason}
            yield _sse({**head, "object": obj, "choices": [last]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({**head, "object": obj, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
