"""A fake Google Gemini upstream (``models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, ``:countTokens``), scripted per test with the same Script as the other fakes.
As Gemini does, every streamed response carries usageMetadata (the prompt's count from the first
on, the output's in the last), and the script's thinking comes as a thought part."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.openai_upstream import fault_response, sse
from tests.fakes.script import ScriptQueue, paced

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}


class FakeGemini(ScriptQueue):
    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(routes=[Route("/v1beta/models/{call:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        script = await self.next(request, body)
        error = {"error": {"code": script.status, "message": "fake failure", "status": "INTERNAL"}}
        if (fault := fault_response(script, error)) is not None:
            return fault
        if request.path_params["call"].endswith(":countTokens"):
            return Response(orjson.dumps({"totalTokens": script.prompt_tokens}), media_type="application/json")
        usage = {
            "promptTokenCount": script.prompt_tokens,
            "cachedContentTokenCount": script.cached_tokens,
            "candidatesTokenCount": script.completion_tokens,
            "totalTokenCount": script.prompt_tokens + script.completion_tokens,
        }
        finish = FINISH.get(script.finish_reason, "STOP")
        calls = [{"functionCall": {"name": name, "args": args}} for name, args in script.tool_calls]
        thoughts = [{"text": block["thinking"], "thought": True} for block in script.thinking if block.get("thinking")]
        if not request.path_params["call"].endswith(":streamGenerateContent"):
            parts: list[dict[str, Any]] = thoughts + ([{"text": script.text}] if script.text else []) + calls
            candidate = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
            return Response(
                orjson.dumps({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake"}),
                media_type="application/json",
            )
        events, content = [], []
        prompt_usage = {k: usage[k] for k in ("promptTokenCount", "cachedContentTokenCount")}
        prompt_usage["totalTokenCount"] = script.prompt_tokens
        if thoughts:
            candidate = {"content": {"role": "model", "parts": thoughts}, "index": 0}
            events.append(sse({"candidates": [candidate], "usageMetadata": prompt_usage}))
        pieces = script.pieces()
        for i, piece in enumerate(pieces):
            content.append(len(events))
            last = i == len(pieces) - 1 and not calls
            candidate = {
                "content": {"role": "model", "parts": [{"text": piece}]},
                "index": 0,
                **({"finishReason": finish} if last else {}),
            }
            events.append(sse({"candidates": [candidate], "usageMetadata": usage if last else prompt_usage}))
        if calls or not pieces:
            content.append(len(events))
            candidate = {"content": {"role": "model", "parts": calls}, "finishReason": finish, "index": 0}
            events.append(sse({"candidates": [candidate], "usageMetadata": usage}))
        return StreamingResponse(paced(script, events, content, self), media_type="text/event-stream")
