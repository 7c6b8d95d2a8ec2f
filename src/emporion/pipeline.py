"""The request path, one straight line: authenticate, find the model, route, generate.

(Limits, guard and metering join this path in their own issues; each is one step here.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from emporion.api.openai.schemas import ROUTING_FIELDS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Sampling
from emporion.auth.principal import Authenticator, Principal
from emporion.catalog.models import Catalog, Model
from emporion.engine.embeddings import Embedded, Embedder
from emporion.engine.llama_server import LlamaServer
from emporion.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable
from emporion.providers.base import PARAMETERS, Adapter, Chunk, Completion, Endpoint, Request
from emporion.providers.usage import Usage
from emporion.routing.candidates import Candidate, Preferences
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
    """A started stream: its first output is already in hand (so failures before any output are
    still plain HTTP errors, or fall back), and ``aclose`` frees the engine slot and the
    upstream connection."""

    def __init__(self, route: Route, chunks: AsyncIterator[Chunk], resources: contextlib.AsyncExitStack) -> None:
        self.route = route
        self._chunks = chunks
        self._resources = resources

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks

    async def aclose(self) -> None:
        await self._resources.aclose()


def endpoint_of(wire: Sampling) -> Endpoint:
    return "chat" if isinstance(wire, ChatCompletionRequest) else "completion"


async def generate(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Generation:
    parts = _split_prompts(wire)
    if len(parts) == 1:
        return await _generate_one(deps, principal, wire)
    results = await asyncio.gather(*(_generate_one(deps, principal, part) for part in parts), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    choices = [{**result.completion.choices[0], "index": index} for index, result in enumerate(results)]
    usage = sum((result.completion.usage for result in results), Usage())
    return Generation(results[0].route, Completion(choices=choices, usage=usage))


async def generate_stream(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Stream:
    parts = _split_prompts(wire)
    if len(parts) == 1:
        return await _stream_one(deps, principal, wire)
    resources = contextlib.AsyncExitStack()
    streams: list[Stream] = []
    try:
        for part in parts:
            stream = await _stream_one(deps, principal, part)
            resources.push_async_callback(stream.aclose)
            streams.append(stream)
    except BaseException:
        await resources.aclose()
        raise
    return Stream(streams[0].route, _merged(streams), resources)


def _split_prompts(wire: ChatCompletionRequest | CompletionRequest) -> list[ChatCompletionRequest | CompletionRequest]:
    """A list of prompts is one upstream request per prompt: each gets its own engine slot and
    exact usage, which upstreams do not all report for batched prompts."""
    if isinstance(wire, CompletionRequest) and isinstance(wire.prompt, list) and len(wire.prompt) > 1:
        return [wire.model_copy(update={"prompt": prompt}) for prompt in wire.prompt]
    return [wire]


async def _generate_one(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Generation:
    plan = _plan(deps, principal, wire)
    attempted, completion = await deps.router.executor.complete(plan.candidates, plan.request_for)
    return Generation(Route(attempted.candidate.model, attempted.candidate, attempted.attempts), completion)


async def _stream_one(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Stream:
    plan = _plan(deps, principal, wire)
    resources = contextlib.AsyncExitStack()
    try:
        attempted, chunks = await deps.router.executor.stream(plan.candidates, plan.request_for, resources)
    except BaseException:
        await resources.aclose()
        raise
    return Stream(Route(attempted.candidate.model, attempted.candidate, attempted.attempts), chunks, resources)


@dataclass(frozen=True, slots=True)
class Plan:
    candidates: list[Candidate]
    endpoint: Endpoint
    body: dict

    def request_for(self, candidate: Candidate) -> Request:
        """The request as this deployment receives it: its model name, its quirks."""
        body = {**self.body, "model": candidate.deployment.model}
        if not candidate.upstream.developer_role and "messages" in body:
            body["messages"] = [
                {**message, "role": "system"} if message["role"] == "developer" else message for message in body["messages"]
            ]
        return Request(endpoint=self.endpoint, body=body)


def _plan(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Plan:
    name, suffix = _split_suffix(deps.catalog, wire.model)
    model = deps.catalog.require(name, "chat")
    limit = wire.output_limit()
    if limit is not None and limit >= model.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_length} tokens, but you requested "
            f"{limit} output tokens. Please reduce max_tokens.",
            param="max_completion_tokens" if getattr(wire, "max_completion_tokens", None) else "max_tokens",
        )
    fallbacks = [deps.catalog.require(m, "chat") for m in wire.models or [] if m != name]
    body = wire.model_dump(exclude_none=True, exclude=set(ROUTING_FIELDS))
    used = {key for key in PARAMETERS if key in body}
    prefs = Preferences.from_wire(wire.provider, suffix)
    policy = deps.settings.policies.get(principal.org_name)
    candidates = deps.router.candidates([model, *fallbacks], prefs, policy, used, wire.user)
    return Plan(candidates=candidates, endpoint=endpoint_of(wire), body=body)


def _split_suffix(catalog: Catalog, name: str) -> tuple[str, str | None]:
    """``model:floor`` (cheapest first) and ``model:nitro`` (fastest first), as on OpenRouter."""
    base, _, suffix = name.rpartition(":")
    if suffix in ("floor", "nitro") and base and catalog.has(base):
        return base, suffix
    return name, None


async def _merged(streams: list[Stream]) -> AsyncIterator[Chunk]:
    """Chunks of several streams as they come, each choice indexed by its prompt; one usage at the end."""
    queue: asyncio.Queue[tuple[int, Chunk | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: Stream) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk, None))
        except Exception as exc:
            await queue.put((index, None, exc))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    usage, open_streams = Usage(), len(tasks)
    try:
        while open_streams:
            index, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                open_streams -= 1
                continue
            if chunk.usage is not None:
                usage = usage + chunk.usage
            if chunk.choices:
                yield Chunk(choices=[{**choice, "index": index} for choice in chunk.choices])
        yield Chunk(choices=[], usage=usage)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
