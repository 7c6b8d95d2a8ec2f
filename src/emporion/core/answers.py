"""What comes back from a model, typed: whole answers (``Completion`` of ``Choice``s) and streams
(``Chunk``s of ``Delta``s), with their tool calls and usage.

Adapters build these from their upstream's wire; the routes render them into the client's. One
type serves chat and legacy completions: ``text`` is a message's content or a completion's text.
OpenAI's shapes are the lingua franca, so each type reads and writes OpenAI's JSON itself
(``from_openai`` / ``to_openai``); other formats translate in their own module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from emporion.core.usage import Usage

Endpoint = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole function call of an answer; ``arguments`` is JSON text, as OpenAI carries it."""

    id: str | None
    name: str
    arguments: str

    @classmethod
    def from_openai(cls, wire: dict[str, Any]) -> ToolCall:
        function = _object(wire.get("function"))
        return cls(_text(wire.get("id")), _text(function.get("name")) or "", _text(function.get("arguments")) or "")

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed function call: the first piece of call ``index`` names it (id, name),
    the rest carry more of its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    @classmethod
    def from_openai(cls, wire: dict[str, Any]) -> ToolCallDelta:
        function = _object(wire.get("function"))
        return cls(
            _index(wire.get("index")), _text(wire.get("id")), _text(function.get("name")), _text(function.get("arguments")) or ""
        )

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function = {"name": self.name, **function}
        wire: dict[str, Any] = {"index": self.index, "function": function}
        if self.id is not None:
            wire = {"index": self.index, "id": self.id, "type": "function", "function": function}
        return wire


@dataclass(frozen=True, slots=True)
class Choice:
    index: int = 0
    text: str | None = None  # the message's content (chat) or the text (completion)
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    finish_reason: str | None = None
    logprobs: Any = None  # as the upstream gave them (OpenAI's shape)

    @classmethod
    def from_openai(cls, wire: dict[str, Any]) -> Choice:
        message = _object(wire.get("message"))
        text = message.get("content") if "message" in wire else wire.get("text")
        calls = tuple(ToolCall.from_openai(call) for call in message.get("tool_calls") or () if isinstance(call, dict))
        return cls(
            _index(wire.get("index")),
            _text(text),
            calls,
            _text(message.get("refusal")),
            _text(wire.get("finish_reason")),
            wire.get("logprobs"),
        )

    def to_openai(self, endpoint: Endpoint) -> dict[str, Any]:
        if endpoint == "completion":
            return {"index": self.index, "text": self.text or "", "logprobs": self.logprobs, "finish_reason": self.finish_reason}
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": self.refusal}
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return {"index": self.index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


@dataclass(frozen=True, slots=True)
class Delta:
    """One choice of a chunk."""

    index: int = 0
    text: str | None = None  # more content (chat) or text (completion)
    role: str | None = None  # the first chunk of a chat stream says "assistant"
    tool_calls: tuple[ToolCallDelta, ...] = ()
    refusal: str | None = None
    finish_reason: str | None = None
    logprobs: Any = None

    @property
    def carries_output(self) -> bool:
        """The one definition of output in a stream: text, a tool call or a refusal — what is
        billed one token a piece where no usage comes."""
        return bool(self.text or self.tool_calls or self.refusal)

    @classmethod
    def from_openai(cls, wire: dict[str, Any]) -> Delta:
        delta = _object(wire.get("delta"))
        text = delta.get("content") if "delta" in wire else wire.get("text")
        calls = tuple(ToolCallDelta.from_openai(call) for call in delta.get("tool_calls") or () if isinstance(call, dict))
        return cls(
            _index(wire.get("index")),
            _text(text),
            _text(delta.get("role")),
            calls,
            _text(delta.get("refusal")),
            _text(wire.get("finish_reason")),
            wire.get("logprobs"),
        )

    def to_openai(self, endpoint: Endpoint) -> dict[str, Any]:
        if endpoint == "completion":
            return {"index": self.index, "text": self.text or "", "logprobs": self.logprobs, "finish_reason": self.finish_reason}
        delta: dict[str, Any] = {}
        if self.role is not None:
            delta["role"] = self.role
        if self.text is not None:
            delta["content"] = self.text
        if self.tool_calls:
            delta["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.refusal is not None:
            delta["refusal"] = self.refusal
        return {"index": self.index, "delta": delta, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


@dataclass(frozen=True, slots=True)
class Completion:
    choices: list[Choice]
    usage: Usage
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


@dataclass(frozen=True, slots=True)
class Chunk:
    choices: list[Delta]
    usage: Usage | None = None

    @property
    def carries_output(self) -> bool:
        return any(choice.carries_output for choice in self.choices)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
