"""What a fake upstream does for one request, whatever wire format it speaks."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request


@dataclass
class Script:
    text: str = "Hello from the fake upstream."
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, arguments)
    finish_reason: str = "stop"  # OpenAI's words; each fake says it in its own
    prompt_tokens: int = 7
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # thinking before the answer: Anthropic's thinking / redacted_thinking blocks, which the fake
    # Anthropic sends as they are (streamed: thinking_delta and signature_delta), the fake Gemini the
    # text of as a thought part
    thinking: list[dict[str, Any]] = field(default_factory=list)
    logprob: float | None = None  # completions: each piece a token of this logprob, in OpenAI's legacy shape
    # faults
    status: int = 200
    error: dict[str, Any] | None = None  # the error body to send with status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent as is (malformed JSON, say)
    delay_s: float = 0.0  # before anything is sent (a timeout before the first byte)
    chunk_delay_s: float = 0.0
    cut_after_chunks: int | None = None  # the stream stops after this many content pieces, cleanly
    reset_after_chunks: int | None = None  # the connection is dropped after this many pieces

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces()) + len(self.tool_calls)

    def pieces(self) -> list[str]:
        words = self.text.split(" ") if self.text else []
        return [word if i == 0 else " " + word for i, word in enumerate(words)]


class Abort(Exception):
    """Raised inside a streaming body: uvicorn drops the connection without finishing it."""


class ScriptQueue:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.received: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.cancelled = 0  # streams whose client went away before the end
        self.chaos: list[Script] = []  # with no script queued: one of these, at chaos_rate
        self.chaos_rate = 0.0

    def enqueue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def next(self, request: Request, body: dict[str, Any]) -> Script:
        self.received.append(body)
        self.headers_seen.append(dict(request.headers))
        self.paths.append(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if self.scripts:
            script = self.scripts.pop(0)
        elif self.chaos and random.random() < self.chaos_rate:
            script = random.choice(self.chaos)
        else:
            script = Script()
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        return script

    def count(self) -> int:
        return len(self.received)


async def paced(script: Script, events: list[bytes], content_events: list[int], queue: ScriptQueue | None = None):
    """Yields the events of a stream, applying the script's pace, cut and reset. ``content_events``
    are the positions of the content pieces in ``events`` (what cut/reset count)."""
    try:
        async for event in _paced(script, events, content_events):
            yield event
    except (asyncio.CancelledError, GeneratorExit):
        if queue is not None:
            queue.cancelled += 1
        raise


async def _paced(script: Script, events: list[bytes], content_events: list[int]):
    sent = 0
    for position, event in enumerate(events):
        if position in content_events:
            if script.cut_after_chunks is not None and sent >= script.cut_after_chunks:
                return
            if script.reset_after_chunks is not None and sent >= script.reset_after_chunks:
                raise Abort("connection reset by the fake")
            if script.chunk_delay_s:
                await asyncio.sleep(script.chunk_delay_s)
            sent += 1
        yield event
