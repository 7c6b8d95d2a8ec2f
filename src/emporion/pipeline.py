"""The request path, one straight line: (the route authenticated) limit, hold the worst case,
route and generate, settle exactly once.

(The guard joins this path in its own issue.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from emporion import limits
from emporion.api.openai.schemas import ROUTING_FIELDS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Sampling
from emporion.auth.principal import Authenticator, Principal
from emporion.catalog.models import Catalog, Model, ModelKind
from emporion.core.money import Nanos
from emporion.core.usage import Usage
from emporion.engine.embeddings import Embedded, Embedder
from emporion.engine.llama_server import LlamaServer
from emporion.engine.openai_tokens import texts_of
from emporion.errors import ContextLengthExceeded, InvalidRequest, PermissionDenied, ServiceUnavailable
from emporion.limits import Decision, Limit, Limiter, Rate, ratelimit_headers
from emporion.metering.estimate import MEDIA_PARTS, prompt_bound, prompt_guess
from emporion.metering.ledger import BudgetExceeded, InsufficientCredits, Ledger
from emporion.metering.meter import Served, Status, Tab, UsageSource, affordable_output, budgets_of, worst_case
from emporion.metering.pricebook import PriceBook
from emporion.providers.base import PARAMETERS, Adapter, Chunk, Completion, Endpoint, Request
from emporion.providers.folding import Fold
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

    def __init__(
        self, route: Route, chunks: AsyncIterator[Chunk], resources: contextlib.AsyncExitStack, request: Request | None = None
    ) -> None:
        self.route = route
        self._chunks = chunks
        self._resources = resources
        self.request = request  # as the upstream got it (to count its prompt where usage never came)
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
    output_cap: int | None = None  # max_tokens imposed on each choice where the request set none

    async def close(self, served: Route | Served | None, usage: Usage, status: Status, source: UsageSource, finish: str | None = None):
        if isinstance(served, Route):
            served = (served.model, served.candidate.deployment, served.provider, served.attempts)
        try:
            return await self.tab.settle(served, usage, status=status, source=source, finish_reason=finish)
        finally:
            await self.slots.aclose()
            # the tokens-per-minute buckets keep what was used, not what was feared (nor less)
            unused = self.tokens_estimate - usage.prompt_tokens - usage.output_tokens
            if unused > 0:
                await self.limiter.refund(self.limits, {"tokens": unused})
            elif unused < 0:
                await self.limiter.debit(self.limits, {"tokens": -unused})

    def capped(self, wire: W) -> W:
        """The request as it goes upstream: with the output cap where it named no max_tokens."""
        if self.output_cap is None:
            return wire
        return wire.model_copy(update={"max_tokens": self.output_cap})


W = TypeVar("W", bound=Sampling)  # a request to generate with; model_copy keeps its class


async def admit(deps: Deps, principal: Principal, wire: Sampling | EmbeddingRequest, request_id: str, streamed: bool) -> Admission:
    """Limits (429), the key's model scope (403), then a hold of the worst case (402).

    A request without ``max_tokens`` is charged to the tokens-per-minute buckets for its prompt
    only, and for its output once that is known; its hold covers the most it may generate (the
    model's context, or ``[engine] default_max_tokens`` on the local engine) or, when the credit
    cannot cover that, as many output tokens as the credit can pay for, and the generation is
    capped there: a request never costs more than its hold."""
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
    else:
        _check_inputs(models, body)
    metering = deps.settings.metering
    bound = prompt_bound(body, metering.image_tokens)
    guess = prompt_guess(body, metering.image_tokens)
    asked = None if isinstance(wire, EmbeddingRequest) else wire.output_limit()
    per_choice = 0 if isinstance(wire, EmbeddingRequest) else _output_bound(deps, wire, models[0])
    choices = 1 if isinstance(wire, EmbeddingRequest) else _choices(wire, body)
    tokens = guess + (asked or 0) * choices
    buckets = _limits(deps, principal, tokens)
    decision = await limits.admit(deps.limiter, buckets)
    slots = contextlib.AsyncExitStack()
    try:
        for scope, most in _concurrency(deps, principal):
            await slots.enter_async_context(deps.limiter.concurrency(scope, most))
        held_per_choice, hold = await _hold(deps, principal, request_id, models, bound, per_choice, choices, flexible=asked is None)
    except BaseException:
        await slots.aclose()
        await deps.limiter.refund(buckets, {"tokens": tokens})
        raise
    endpoint = "embedding" if isinstance(wire, EmbeddingRequest) else endpoint_of(wire)
    tab = Tab(deps.ledger, deps.pricebook, principal, request_id, endpoint, streamed, hold)
    cap = None
    if kind == "chat" and asked is None and (held_per_choice < per_choice or _local(models[0])):
        cap = held_per_choice  # what the credit covers, or the local engine's default
    return Admission(tab, decision, slots, deps.limiter, buckets, tokens, guess, cap)


async def _hold(
    deps: Deps, principal: Principal, request_id: str, models: list[Model], bound: int, per_choice: int, choices: int, *, flexible: bool
) -> tuple[int, Nanos]:
    """Holds the worst case of ``per_choice`` output tokens a choice; when that is more than the
    credit (or a budget) covers and the request set no max_tokens (``flexible``), holds what the
    credit covers instead. Returns the output tokens a choice may make, and the hold."""
    budgets = budgets_of(principal, time.time())
    ttl = deps.settings.metering.hold_ttl_s
    hold = worst_case(principal, deps.pricebook, models, bound, per_choice * choices)
    try:
        await _reserve(deps, principal, request_id, hold, ttl, budgets)
        return per_choice, hold
    except (InsufficientCredits, BudgetExceeded):
        if not flexible:
            raise
        available = await deps.ledger.available(principal.org_id)
        affordable = affordable_output(lambda n: worst_case(principal, deps.pricebook, models, bound, n * choices), per_choice, available)
        if affordable < 1:
            raise
    hold = worst_case(principal, deps.pricebook, models, bound, affordable * choices)
    await _reserve(deps, principal, request_id, hold, ttl, budgets)
    return affordable, hold


async def _reserve(deps: Deps, principal: Principal, request_id: str, hold: Nanos, ttl: float, budgets: list[tuple[str, int]]) -> None:
    try:
        await deps.ledger.reserve(principal.org_id, request_id, hold, ttl, budgets)
    except asyncio.CancelledError:
        deps.ledger.release_soon(request_id)
        raise


def _check_inputs(models: list[Model], body: dict) -> None:
    """Images for a local text-only model are refused here, before anything is held or sent: the
    catalog knows exactly what a local engine reads (an upstream's own models may read more than
    the catalog says, so theirs is the upstream's to refuse)."""
    for model in models:
        if "image" not in model.input_modalities and _local(model) and _has_media(body.get("messages") or ()):
            raise InvalidRequest(
                f"The model `{model.id}` reads text only: remove the image parts, or use a model with image input.",
                param="messages",
                code="unsupported_modality",
            )


def _has_media(messages: Iterable[dict]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in MEDIA_PARTS
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _local(model: Model) -> bool:
    return all(deployment.upstream.startswith("local:") for deployment in model.deployments)


def _output_bound(deps: Deps, wire: Sampling, model: Model) -> int:
    """The output tokens one choice may generate: its max_tokens, else the context (on the local
    engine, ``[engine] default_max_tokens``)."""
    default = min(deps.settings.engine.default_max_tokens, model.context_length) if _local(model) else model.context_length
    return min(wire.output_limit() or default, model.context_length)


def _choices(wire: Sampling, body: dict) -> int:
    """Choices the request makes: n for each prompt."""
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return (wire.n or 1) * prompts


def _limits(deps: Deps, principal: Principal, tokens: int) -> list[Limit]:
    """The rate buckets of the request: the organization's own limits, else its tier's; the key's."""
    tier, org, key = deps.settings.tier(principal.tier), principal.org_limits, principal.key_limits
    found = []
    if rpm := org.requests_per_minute or (tier and tier.requests_per_minute):
        found.append(Limit(f"org:{principal.org_id}", "requests", Rate(rpm), 1))
    if tpm := org.tokens_per_minute or (tier and tier.tokens_per_minute):
        found.append(Limit(f"org:{principal.org_id}", "tokens", Rate(tpm), tokens))
    if key.requests_per_minute:
        found.append(Limit(f"key:{principal.key_id}", "requests", Rate(key.requests_per_minute), 1))
    if key.tokens_per_minute:
        found.append(Limit(f"key:{principal.key_id}", "tokens", Rate(key.tokens_per_minute), tokens))
    return found


def _concurrency(deps: Deps, principal: Principal) -> list[tuple[str, int]]:
    tier = deps.settings.tier(principal.tier)
    found = []
    if most := principal.org_limits.max_concurrent or (tier and tier.max_concurrent):
        found.append((f"org:{principal.org_id}", most))
    if principal.key_limits.max_concurrent:
        found.append((f"key:{principal.key_id}", principal.key_limits.max_concurrent))
    return found


async def generate(
    deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, request_id: str
) -> Generation:
    admission = await admit(deps, principal, wire, request_id, streamed=False)
    progress = Progress()
    try:
        generation = await _generate(deps, principal, admission.capped(wire), progress)
    except asyncio.CancelledError:  # the client left (api/disconnect.py): what was made is billed
        usage = await _counted_usage(deps, progress.route, progress.request, admission.prompt_estimate, progress.output_chunks)
        await admission.close(progress.route, usage, "cancelled", "counted" if progress.route else "none")
        raise
    except BaseException:
        await admission.close(None, Usage(), "failed", "none")
        raise
    finish = generation.completion.choices[0].get("finish_reason") if generation.completion.choices else None
    settled = await admission.close(generation.route, generation.completion.usage, "completed", "upstream", finish)
    charged = settled.charged if settled else Nanos(0)
    return replace(generation, cost=charged, headers=ratelimit_headers(admission.decision))


@dataclass
class Progress:
    """How far a non-streamed request had got, for billing it if its client leaves mid-way:
    where it went, what was sent, the pieces of output made (when Emporion streams it itself)."""

    route: Route | None = None
    request: Request | None = None
    output_chunks: int = 0


async def _counted_usage(deps: Deps, route: Route | None, request: Request | None, estimate: int, output_chunks: int) -> Usage:
    """Usage of a request that stopped before its upstream reported any: the prompt as the local
    engine tokenizes it (else its estimate), one output token per piece of output seen."""
    if route is None:
        return Usage()
    engine = deps.engines.get(route.candidate.upstream.name)
    counted = await engine.count_prompt_tokens(request.body) if engine is not None and request is not None else None
    return Usage(input_tokens=counted if counted is not None else estimate, output_tokens=output_chunks)


async def generate_stream(
    deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, request_id: str
) -> Stream:
    admission = await admit(deps, principal, wire, request_id, streamed=True)
    try:
        stream = await _generate_stream(deps, principal, admission.capped(wire))
    except BaseException:
        await admission.close(None, Usage(), "failed", "none")
        raise
    meter = StreamMeter(deps, stream, admission)
    resources = contextlib.AsyncExitStack()
    resources.push_async_callback(meter.settle)  # last: after the upstream is closed
    resources.push_async_callback(stream.aclose)
    metered = Stream(stream.route, meter.chunks(), resources, stream.request)
    metered.headers = ratelimit_headers(admission.decision)
    metered.cost_of = meter.cost_of
    return metered


class StreamMeter:
    """Watches a stream go by: the usage it reports, else the output it carried (one token per
    content chunk; the prompt as the local engine tokenizes it, else its estimate), and how it
    ended: ``completed``, ``partial`` (the upstream failed after output: recorded with the last
    finish reason seen, else ``error``), ``failed`` (before any output) or ``cancelled`` (the
    client left). Settles once: when the upstream's stream ends, or else when the stream is
    closed (client gone, upstream failed)."""

    def __init__(self, deps: Deps, stream: Stream, admission: Admission) -> None:
        self.deps = deps
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
            self.status = "partial" if self.counted else "failed"
            self.finish = self.finish or "error"
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
            usage = await _counted_usage(self.deps, self.stream.route, self.stream.request, self.admission.prompt_estimate, self.counted)
            source = "counted"
        await self.admission.close(self.stream.route, usage, self.status, source, self.finish)  # type: ignore[arg-type]


# --- routing and generation ------------------------------------------------------------------------


async def _generate(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, progress: Progress) -> Generation:
    parts = _split_prompts(wire)
    if len(parts) == 1:
        return await _generate_one(deps, principal, wire, progress)
    results = await asyncio.gather(*(_generate_one(deps, principal, part, progress) for part in parts), return_exceptions=True)
    generations: list[Generation] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        generations.append(result)
    choices = [{**generation.completion.choices[0], "index": index} for index, generation in enumerate(generations)]
    usage = sum((generation.completion.usage for generation in generations), Usage())
    return Generation(generations[0].route, Completion(choices=choices, usage=usage))


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
    if isinstance(wire, CompletionRequest) and len(prompts := wire.prompts()) > 1:
        return [wire.model_copy(update={"prompt": prompt}) for prompt in prompts]
    return [wire]


async def _generate_one(
    deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest, progress: Progress
) -> Generation:
    plan = _plan(deps, principal, wire)
    if plan.folds():
        return await _folded(deps, plan, progress)
    attempted, completion = await deps.router.executor.complete(plan.candidates, plan.request_for)
    return Generation(Route(attempted.candidate.model, attempted.candidate, attempted.attempts), completion)


async def _folded(deps: Deps, plan: Plan, progress: Progress) -> Generation:
    """One answer made from a stream (the local engine: so that a client who leaves stops the
    generation at once, and ``progress`` knows what was made until then)."""
    fold = Fold(plan.endpoint)
    async with contextlib.AsyncExitStack() as resources:
        attempted, chunks = await deps.router.executor.stream(plan.candidates, plan.request_for, resources)
        route = Route(attempted.candidate.model, attempted.candidate, attempted.attempts)
        progress.route, progress.request = route, plan.request_for(attempted.candidate)
        async for chunk in chunks:
            before = fold.output_chunks
            fold.feed(chunk)
            progress.output_chunks += fold.output_chunks - before
    return Generation(route, fold.completion())


async def _stream_one(deps: Deps, principal: Principal, wire: ChatCompletionRequest | CompletionRequest) -> Stream:
    plan = _plan(deps, principal, wire)
    resources = contextlib.AsyncExitStack()
    try:
        attempted, chunks = await deps.router.executor.stream(plan.candidates, plan.request_for, resources)
    except BaseException:
        await resources.aclose()
        raise
    return Stream(Route(attempted.candidate.model, attempted.candidate, attempted.attempts), chunks, resources, plan.request_for(attempted.candidate))


LOCAL_ENGINE = "local:"  # the upstream names of the local engine's models


@dataclass(frozen=True, slots=True)
class Plan:
    candidates: list[Candidate]
    endpoint: Endpoint
    body: dict

    def folds(self) -> bool:
        """Whether one answer is made from a stream: on the local engine, unless the request
        asks for what only a whole answer carries (logprobs, an echoed prompt)."""
        on_engine = all(candidate.upstream.name.startswith(LOCAL_ENGINE) for candidate in self.candidates)
        return on_engine and not self.body.keys() & {"logprobs", "top_logprobs", "echo"}

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
    # by name, which only top-level organizations hold uniquely (a reseller's customer may share one)
    policy = None if principal.resellers else deps.settings.policies.get(principal.org_name)
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
    if not isinstance(wire.input, str) and not isinstance(wire.input[0], str):  # token ids: read as the text they spell, first
        wire = wire.model_copy(update={"input": texts_of(wire.inputs())})
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
    return model, await embedder.embed(inputs)  # type: ignore[arg-type]  # texts: embed() decoded any token ids
