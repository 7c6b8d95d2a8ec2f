"""Folding a stream of OpenAI chunks back into the completion it spells out.

Used where Emporion streams from an upstream although its client asked for one answer (the
local engine, so that a client who leaves stops the generation and pays for what was made):
the text and tool calls of each choice are joined in order, the last finish reason and the
upstream's usage are kept, and ``output_chunks`` counts the pieces of output seen so far.
"""

from __future__ import annotations

from typing import Any

from emporion.core.usage import Usage
from emporion.providers.base import Chunk, Completion, Endpoint


class Fold:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.usage: Usage | None = None
        self.output_chunks = 0
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}
        self._refusals: dict[int, list[str]] = {}

    def feed(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            index = int(choice.get("index") or 0)
            self._finish.setdefault(index, None)
            self._texts.setdefault(index, [])
            delta = choice.get("delta") or {}
            text = choice.get("text") if self.endpoint == "completion" else delta.get("content")
            produced = False
            if text:
                self._texts[index].append(text)
                produced = True
            if delta.get("refusal"):
                self._refusals.setdefault(index, []).append(delta["refusal"])
                produced = True
            for call in delta.get("tool_calls") or ():
                self._add_call(index, call)
                produced = True
            if produced:
                self.output_chunks += 1
            if choice.get("finish_reason"):
                self._finish[index] = choice["finish_reason"]

    def _add_call(self, index: int, delta: dict[str, Any]) -> None:
        calls = self._calls.setdefault(index, {})
        call = calls.setdefault(int(delta.get("index") or 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def completion(self) -> Completion:
        return Completion(choices=[self._choice(index) for index in sorted(self._texts)], usage=self.usage or Usage())

    def _choice(self, index: int) -> dict[str, Any]:
        text = "".join(self._texts[index])
        finish = self._finish[index]
        if self.endpoint == "completion":
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if index in self._refusals:
            message["refusal"] = "".join(self._refusals[index])
        if index in self._calls:
            message["tool_calls"] = [self._calls[index][key] for key in sorted(self._calls[index])]
        return {"index": index, "message": message, "finish_reason": finish}
