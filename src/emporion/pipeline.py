"""The request path, one straight line: (the route authenticated) limit, hold the worst case,
route and generate, settle exactly once.

(The guard joins this path in its own issue.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from emporion import limits
from emporion.api.openai.schemas import ROUTING_FIELDS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Sampling
from emporion.auth.principal import Authenticator, Principal
from emporion.catalog.models import Catalog, Model, ModelKind
from emporion.engine.embeddings import Embedded, Embedder
from emporion.engine.llama_server import LlamaServer
from emporion.errors import ContextLengthExceeded, InvalidRequest, PermissionDenied, ServiceUnavailable
from emporion.limits import Decision, Limit, Limiter, Rate, ratelimit_headers
from emporion.metering.estimate import prompt_bound, prompt_guess
from emporion.metering.ledger import Ledger
from emporion.metering.meter import Served, Status, Tab, UsageSource, budgets_of, worst_case
from emporion.metering.money import Nanos
from emporion.metering.pricebook import PriceBook
from emporion.providers.base import PARAMETERS, Adapter, Chunk, Completion, Endpoint, Request
from emporion.providers.usage import Usage
from emporion.routing.candidates import Candidate, Preferences
from emporion.routing.router import Route, Router
from emporion.settings import Settings, TierSettings
from emporion.store.session import Database


@dataclass
class Deps:
    settings: Settings
    db: Database
    auth: Authenticator
    catalog: Catalog
    router: Router
    adapters: dict[str, Adapter]
    ledger: Ledger
    pricebook: PriceBook
    limiter: Limiter
    engines: dict[str, LlamaServer] = field(default_factory=dict)
    embedder: Embedder | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    route: Route
    completion: Completion
    cost: Nanos = Nanos(0)  # what the customer paid
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*


class Stream:
    """A started stream: its first output is already in hand (so failures before any output are
    still plain HTTP errors, or fall back), and ``aclose`` frees the engine slot and the
    upstream connection, then settles what was generated."""

    def __init__(self, route: Route, chunks: AsyncIterator[Chunk], resources: contextlib.AsyncExitStack) -> None:
        self.route = route
        self._chunks = chunks
        self._resources = resources
        self.headers: dict[str, str] = {}
        self.cost_of: Callable[[Usage], Nanos] = lambda usage: Nanos(0)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks

    async def aclose(self) -> None:
        await self._resources.aclose()


def endpoint_of(wire: Sampling) -> Endpoint:
    return "chat" if isinstance(wire, ChatCompletionRequest) else "completion"


# --- admission and metering ------------------------------------------------------------------------


@dataclass
class Admission:
    """What an admitted request holds while it runs: its tab and its concurrency slots."""

    tab: Tab
    decision: Decision
    slots: contextlib.AsyncExitStack
    limiter: Limiter
    limits: list[Limit]
    tokens_estimate: int  # what the tokens-per-minute buckets were charged
    prompt_estimate: int  # its prompt part (what a stream without usage is billed for its prompt)

    async def close(self, served: Route | Served | None, usage: Usage, status: Status, source: UsageSource, finish: str | None = None):
        if isinstance(served, Route):
            served = (served.model, served.candidate.deployment, served.provider, served.attempts)
        try:
            return await self.tab.settle(served, usage, status=status, source=source, finish_reason=finish)
        finally:
            await self.slots.aclose()
            unused = self.tokens_estimate - usage.prompt_tokens - usage.output_tokens
            if unused > 0:  # the tokens-per-minute buckets keep what was used, not what was feared
                await self.limiter.refund(self.limits, {"tokens": unused})


async def admit(deps: Deps, principal: Principal, wire: Sampling | EmbeddingRequest, request_id: str, streamed: bool) -> Admission:
    """Limits (429), the key's model scope (403), then a hold of the worst case (402)."""
    kind: ModelKind = "embedding" if isinstance(wire, EmbeddingRequest) else "chat"
    name = wire.model if kind == "embedding" else _split_suffix(deps.catalog, wire.model)[0]
    models = [deps.catalog.require(name, kind)]
    models += [deps.catalog.require(m, kind) for m in getattr(wire, "models", None) or [] if m != name]
    if principal.allowed_models is not None:
        for model in models:
            if model.id not in principal.allowed_models:
                raise PermissionDenied(f"This API key may not use the model `{model.id}`.", param="model", code="model_not_allowed")
    body = wire.model_dump(exclude_none=True)
    if kind == "embedding":
        body = {"prompt": body.get("input")}
    metering = deps.settings.metering
    bound = prompt_bound(body, metering.image_tokens)
    outputs = 0 if kind == "embedding" else _output_bound(wire, models[0], body)  # type: ignore[arg-type]
    guess = prompt_guess(body, metering.image_tokens)
    tokens = guess + outputs
    buckets = _limits(deps, principal, tokens)
    decision = await limits.admit(deps.limiter, buckets)
    slots = contextlib.AsyncExitStack()
    try:
        for scope, most in _concurrency(deps, principal):
            await slots.enter_async_context(deps.limiter.concurrency(scope, most))
        hold = worst_case(principal, deps.pricebook, models, bound, outputs)
        try:
            await deps.ledger.reserve(principal.org_id, request_id, hold, metering.hold_ttl_s, budgets_of(principal, time.time()))
        except asyncio.CancelledError:
            deps.ledger.release_soon(request_id)
            raise
    except BaseException:
        await slots.aclose()
        raise
    tab = Tab(deps.ledger, deps.pricebook, principal, request_id, endpoint_of(wire) if kind == "chat" else "embedding", streamed, hold)
    return Admission(tab, decision, slots, deps.limiter, buckets, tokens, guess)


def _output_bound(wire: Sampling, model: Model, body: dict) -> int:
    """Every output token the request may generate: max_tokens (or the context) for each choice
    of each prompt."""
    per_choice = min(wire.output_limit() or model.context_length, model.context_length)
    prompts = len(body["prompt"]) if isinstance(body.get("prompt"), list) and body["prompt"] and not isinstance(body["prompt"][0], int) else 1
    return per_choice * (wire.n or 1) * prompts


def _tier(deps: Deps, principal: Principal) -> TierSettings:
    return deps.settings.tiers.get(principal.tier) or next(iter(deps.settings.tiers.values()))


def _limits(deps: Deps, principal: Principal, tokens: int) -> list[Limit]:
    tier = _tier(deps, principal)
    org, key = principal.org_limits, principal.key_limits
    found = [
        Limit(f"org:{principal.org_id}", "requests", Rate(org.requests_per_minute or tier.requests_per_minute), 1),
        Limit(f"org:{principal.org_id}", "tokens", Rate(org.tokens_per_minute or tier.tokens_per_minute), tokens),
    ]
    if key.requests_per_minute:
        found.append(Limit(f"key:{principal.key_id}", "requests", Rate(key.requests_per_minute), 1))
    if key.tokens_per_minute:
        found.append(Limit(f"key:{principal.key_id}", "tokens", Rate(key.tokens_per_minute), tokens))
    return found


def _concurrency(deps: Deps, principal: Principal) -> list[tuple[str, int]]:
    tier = _tier(deps, principal)
    found = [(f"org:{principal.org_id}", principal.org_limits.max_concurrent or tier.max_concurrent)]
    if principal.key_limits.max_concurrent:
        found.append((f"key:{principal.key_id}", principal.key_limits.max_concurrent))
    return found


async def generate(
    deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, request_id: str
) -> Generation:
    admission = await admit(deps, principal, wire, request_id, streamed=False)
    try:
        generation = await _generate(deps, principal, wire)
    except BaseException:
        await admission.close(None, Usage(), "failed", "none")
        raise
    finish = generation.completion.choices[0].get("finish_reason") if generation.completion.choices else None
    settled = await admission.close(generation.route, generation.completion.usage, "completed", "upstream", finish)
    charged = settled.charged if settled else Nanos(0)
    return replace(generation, cost=charged, headers=ratelimit_headers(admission.decision))


async def generate_stream(
    deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, request_id: str
) -> Stream:
    admission = await admit(deps, principal, wire, request_id, streamed=True)
    try:
        stream = await _generate_stream(deps, principal, wire)
    except BaseException:
        await admission.close(None, Usage(), "failed", "none")
        raise
    meter = StreamMeter(stream, admission)
    resources = contextlib.AsyncExitStack()
    resources.push_async_callback(meter.settle)  # last: after the upstream is closed
    resources.push_async_callback(stream.aclose)
    metered = Stream(stream.route, meter.chunks(), resources)
    metered.headers = ratelimit_headers(admission.decision)
    metered.cost_of = meter.cost_of
    return metered


class StreamMeter:
    """Watches a stream go by: the usage it reports, else the output it carried (one token per
    content chunk, the prompt at its estimate), and how it ended; settles once: when the
    upstream's stream ends, or else when the stream is closed (client gone, upstream failed)."""

    def __init__(self, stream: Stream, admission: Admission) -> None:
        self.stream = stream
        self.admission = admission
        self.usage: Usage | None = None
        self.counted = 0
        self.finish: str | None = None
        self.status: Status = "cancelled"
        self.settled = False

    async def chunks(self) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self.stream:
                if chunk.usage is not None:
                    self.usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.get("delta") or {}
                    if choice.get("text") or delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                        self.counted += 1
                    self.finish = choice.get("finish_reason") or self.finish
                yield chunk
        except Exception:
            self.status = "failed"
            raise
        self.status = "completed"
        await self.settle()  # before the client gets its last chunk and [DONE]: what it saw is charged

    def cost_of(self, usage: Usage) -> Nanos:
        route = self.stream.route
        return self.admission.tab.cost(route.model, route.candidate.deployment, usage)

    async def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.usage is not None:
            usage, source = self.usage, "upstream"
        else:
            usage, source = Usage(input_tokens=self.admission.prompt_estimate, output_tokens=self.counted), "counted"
        await self.admission.close(self.stream.route, usage, self.status, source, self.finish)  # type: ignore[arg-type]


# --- routing and generation ------------------------------------------------------------------------


async def _generate(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Generation:
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


async def _generate_stream(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Stream:
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


@dataclass(frozen=True, slots=True)
class Billed:
    cost: Nanos
    headers: dict[str, str]


async def embed(deps: Deps, principal: Principal, wire: EmbeddingRequest, request_id: str) -> tuple[Model, Embedded, Billed]:
    admission = await admit(deps, principal, wire, request_id, streamed=False)
    try:
        model, embedded = await _embed(deps, wire)
    except BaseException:
        await admission.close(None, Usage(), "failed", "none")
        raise
    settled = await admission.close((model, model.deployments[0], model.provider, 1), Usage(input_tokens=embedded.tokens), "completed", "upstream")
    return model, embedded, Billed(settled.charged if settled else Nanos(0), ratelimit_headers(admission.decision))


async def _embed(deps: Deps, wire: EmbeddingRequest) -> tuple[Model, Embedded]:
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
