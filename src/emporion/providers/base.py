"""The provider contract: what an adapter takes, what it gives back, and where it sends it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from emporion.core.answers import Chunk, Completion, Endpoint
from emporion.core.requests import ROUTING_FIELDS, ChatCompletionRequest, Generate

__all__ = ["PARAMETERS", "Adapter", "Chunk", "Completion", "Endpoint", "Request", "Upstream"]


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
    responses_api: bool = False  # serves OpenAI's /v1/responses itself: Responses requests are passed through
    llama_server: bool = False  # quirk: llama.cpp's server (legacy completions' logprobs and echo translated)


@dataclass(frozen=True, slots=True)
class Request:
    """A request as one deployment receives it: the typed request, its ``model`` the name the
    upstream knows. ``body`` is it in OpenAI's wire format, the lingua franca an adapter
    translates from (the routing fields, Emporion's own, left out)."""

    ask: Generate

    @property
    def endpoint(self) -> Endpoint:
        return "chat" if isinstance(self.ask, ChatCompletionRequest) else "completion"

    @property
    def body(self) -> dict[str, Any]:
        return self.ask.model_dump(exclude_none=True, exclude=set(ROUTING_FIELDS))


# The OpenAI request parameters that an adapter or host may be unable to honour.
PARAMETERS = (
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "echo",  # legacy completions
    "suffix",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


class Adapter(Protocol):
    name: ClassVar[str]
    unsupported_parameters: ClassVar[frozenset[str]]

    async def complete(self, request: Request, upstream: Upstream) -> Completion: ...

    def stream(self, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]: ...

    async def count_tokens(self, request: Request, upstream: Upstream) -> int | None:
        """The prompt tokens the request would be charged for, as the upstream counts them (its
        tokenizer or its own counting endpoint); None where the upstream has no way to count."""
        ...

    async def aclose(self) -> None: ...
