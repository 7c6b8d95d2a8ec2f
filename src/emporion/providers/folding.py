"""Folding a stream of chunks back into the completion it spells out.

Used where Emporion streams from an upstream although its client asked for one answer (the
local engine, so that a client who leaves stops the generation and pays for what was made):
the text and tool calls of each choice are joined in order, the last finish reason and the
upstream's usage are kept, and ``output_chunks`` counts the pieces of output seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emporion.core.answers import Choice, Chunk, Completion, Endpoint, ToolCall, ToolCallDelta
from emporion.core.usage import Usage


@dataclass
class _Call:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None


class Fold:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.usage: Usage | None = None
        self.output_chunks = 0
        self._choices: dict[int, _Choice] = {}

    def feed(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for delta in chunk.choices:
            choice = self._choices.setdefault(delta.index, _Choice())
            if delta.text:
                choice.text.append(delta.text)
            if delta.refusal:
                choice.refusal.append(delta.refusal)
            for call in delta.tool_calls:
                self._add_call(choice, call)
            if delta.carries_output:
                self.output_chunks += 1
            choice.finish_reason = delta.finish_reason or choice.finish_reason

    @staticmethod
    def _add_call(choice: _Choice, delta: ToolCallDelta) -> None:
        call = choice.calls.setdefault(delta.index, _Call())
        call.id = delta.id or call.id
        call.name += delta.name or ""
        call.arguments.append(delta.arguments)

    def completion(self) -> Completion:
        return Completion(choices=[self._choice(index) for index in sorted(self._choices)], usage=self.usage or Usage())

    def _choice(self, index: int) -> Choice:
        folded = self._choices[index]
        text = "".join(folded.text)
        if self.endpoint == "completion":
            return Choice(index=index, text=text, finish_reason=folded.finish_reason)
        calls = tuple(ToolCall(call.id, call.name, "".join(call.arguments)) for _, call in sorted(folded.calls.items()))
        refusal = "".join(folded.refusal) if folded.refusal else None
        return Choice(index=index, text=text or None, tool_calls=calls, refusal=refusal, finish_reason=folded.finish_reason)
