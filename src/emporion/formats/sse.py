"""Server-sent events with a name, as Anthropic's Messages stream and OpenAI's Responses stream
frame them (``event:`` then ``data:``); chat completions frame theirs without (api/openai/sse.py)."""

from __future__ import annotations

from typing import Any

import orjson


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
