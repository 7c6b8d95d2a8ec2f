"""The provider contract: what an adapter takes, what it gives back, and where it sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from emporion.core.usage import Usage

Endpoint = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class Upstream:
    """One host that serves models (data, not code)."""

    name: str
    adapter: str
    base_url: str
    api_key: str | None = None
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    local: bool = False  # on the operator's own machine
    data_collection: str = "allow"  # "deny": the host keeps no prompts
    developer_role: bool = True  # quirk: False where the upstream knows only system/user/assistant
    unsupported_parameters: frozenset[str] = frozenset()  # what it cannot honour (adapter's and host's)


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request in OpenAI's wire format (the lingua franca), ``model`` set to the
    name the upstream knows."""

    endpoint: Endpoint
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Completion:
    choices: list[dict[str, Any]]  # OpenAI choices: message (chat) or text (completion), finish_reason
    usage: Usage
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chunk:
    choices: list[dict[str, Any]]  # OpenAI chunk choices: delta (chat) or text (completion)
    usage: Usage | None = None

    @property
    def carries_output(self) -> bool:
        return any(carries_output(choice) for choice in self.choices)


def carries_output(choice: dict[str, Any]) -> bool:
    """The one definition of output in a stream: a chunk's choice with text (completions), content,
    a tool call or a refusal. What is billed one token a piece where no usage comes."""
    delta = choice.get("delta") or {}
    return bool(choice.get("text") or delta.get("content") or delta.get("tool_calls") or delta.get("refusal"))


# The OpenAI request parameters that an adapter or host may be unable to honour.
PARAMETERS = (
    "temperature", "top_p", "top_k", "stop", "seed", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "parallel_tool_calls",
)  # fmt: skip


class Adapter(Protocol):
    name: ClassVar[str]
    unsupported_parameters: ClassVar[frozenset[str]]

    async def complete(self, request: Request, upstream: Upstream) -> Completion: ...

    def stream(self, request: Request, upstream: Upstream) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
