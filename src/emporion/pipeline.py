"""The request path, one straight line: authenticate, find the model, route, generate.

(Limits, guard and metering join this path in their own issues; each is one step here.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from emporion.api.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Sampling
from emporion.auth.principal import Authenticator, Principal
from emporion.catalog.models import Catalog, Model
from emporion.engine.embeddings import Embedded, Embedder
from emporion.engine.llama_server import LlamaServer
from emporion.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable
from emporion.providers.base import Adapter, Chunk, Completion, Endpoint, Request
from emporion.routing.router import Route, Router
from emporion.settings import Settings
from emporion.store.session import Database


@dataclass
class Deps:
    settings: Settings
    db: Database
    auth: Authenticator
    catalog: Catalog
    router: Router
    adapters: dict[str, Adapter]
    engines: dict[str, LlamaServer] = field(default_factory=dict)
    embedder: Embedder | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    route: Route
    completion: Completion


class Stream:
    """A started stream: its first chunk is already in hand (so failures before any output are
    still plain HTTP errors), and ``aclose`` frees the engine slot and the upstream connection."""

    def __init__(self, route: Route, first: Chunk | None, rest: AsyncIterator[Chunk], resources: contextlib.AsyncExitStack) -> None:
        self.route = route
        self._first = first
        self._rest = rest
        self._resources = resources

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._resources.aclose()


def endpoint_of(wire: Sampling) -> Endpoint:
    return "chat" if isinstance(wire, ChatCompletionRequest) else "completion"


async def generate(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Generation:
    route, request = _prepare(deps, wire)
    async with _admitted(route):
        completion = await route.adapter.complete(request, route.upstream)
    return Generation(route, completion)


async def generate_stream(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Stream:
    route, request = _prepare(deps, wire)
    resources = contextlib.AsyncExitStack()
    try:
        await resources.enter_async_context(_admitted(route))
        chunks = route.adapter.stream(request, route.upstream)
        resources.push_async_callback(chunks.aclose)  # type: ignore[attr-defined]
        first = await anext(chunks, None)
    except BaseException:
        await resources.aclose()
        raise
    return Stream(route, first, chunks, resources)


async def embed(deps: Deps, principal: Principal, wire: EmbeddingRequest) -> tuple[Model, Embedded]:
    model = deps.catalog.require(wire.model, "embedding")
    embedder = deps.embedder
    if embedder is None or embedder.state != "ready":
        raise ServiceUnavailable(f"The embedding model `{model.id}` is not loaded; retry shortly.", retry_after_s=2)
    if wire.dimensions is not None and wire.dimensions != embedder.dimensions:
        raise InvalidRequest(
            f"The model `{model.id}` only produces {embedder.dimensions} dimensions.", param="dimensions"
        )
    inputs = wire.inputs()
    if len(inputs) > deps.settings.embeddings.max_inputs:
        raise InvalidRequest(
            f"Too many inputs: at most {deps.settings.embeddings.max_inputs} per request.", param="input"
        )
    return model, await embedder.embed(inputs)


def _prepare(deps: Deps, wire: ChatCompletionRequest | CompletionRequest) -> tuple[Route, Request]:
    model = deps.catalog.require(wire.model, "chat")
    limit = wire.output_limit()
    if limit is not None and limit >= model.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_length} tokens, but you requested "
            f"{limit} output tokens. Please reduce max_tokens.",
            param="max_completion_tokens" if getattr(wire, "max_completion_tokens", None) else "max_tokens",
        )
    route = deps.router.route(model)
    body = wire.model_dump(exclude_none=True)
    body["model"] = model.upstream_model
    if not route.upstream.developer_role and "messages" in body:
        body["messages"] = [
            {**message, "role": "system"} if message["role"] == "developer" else message for message in body["messages"]
        ]
    return route, Request(endpoint=endpoint_of(wire), body=body)


@contextlib.asynccontextmanager
async def _admitted(route: Route) -> AsyncIterator[None]:
    if route.admission is None:
        yield
    else:
        async with route.admission.admit():
            yield
