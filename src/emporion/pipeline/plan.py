"""Planning: everything that can refuse a request without calling an upstream, decided before the
ledger is touched — so a 4xx from here holds nothing, settles nothing and records nothing.

Unknown model (404), the key's model scope (403), a license the organization has not accepted
(403), an image for a text-only local model (400), ``max_tokens`` beyond the context (400), bad
``provider`` preferences (400), the organization's policy (403), no deployment left (404), a
parameter no deployment honours (400), every deployment cooling down or restarting (503), and
for embeddings the embedder's state and limits. What it
keeps — the deployments that may serve, in order — is what the hold prices."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from emporion.auth.principal import Principal
from emporion.catalog.builtin import EMBEDDINGS_UPSTREAM
from emporion.catalog.cards import terms_url
from emporion.catalog.models import Catalog, Model
from emporion.core.requests import INT64_MAX, Ask, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Generate
from emporion.errors import ContextLengthExceeded, InvalidRequest, PermissionDenied, ServiceUnavailable
from emporion.metering.estimate import MEDIA_PARTS
from emporion.pipeline.deps import Deps
from emporion.providers.base import PARAMETERS, Endpoint, Request, Upstream
from emporion.routing.affinity import Conversation
from emporion.routing.candidates import Candidate, Preferences

Kind = Literal["chat", "completion", "embedding"]
EMBEDDER = Upstream(name=EMBEDDINGS_UPSTREAM, adapter="embedder", base_url="", local=True)
LOCAL_ENGINE = "local:"  # the upstream names of the local engine's models


@dataclass(frozen=True, slots=True)
class Plan:
    kind: Kind
    models: tuple[Model, ...]  # the model asked for, then its fallbacks (``models``)
    candidates: tuple[Candidate, ...]  # the deployments that may serve it, in the order they are tried
    ask: Ask  # the typed request
    output_per_choice: int  # the most output tokens a choice may make: max_tokens, else the context (engine: its default)

    @property
    def endpoint(self) -> Endpoint:
        assert self.kind != "embedding", "embeddings are not sent to an adapter"
        return self.kind

    @property
    def local(self) -> bool:
        """Every deployment it may reach runs on the local engine."""
        return all(candidate.upstream.name.startswith(LOCAL_ENGINE) for candidate in self.candidates)

    def folds(self) -> bool:
        """Whether one answer is made from a stream: on the local engine (so that a client who
        leaves stops the generation at once), unless the request asks for what only a whole
        answer carries (logprobs, an echoed prompt)."""
        return self.local and not any(_names(self.ask, name) for name in ("logprobs", "top_logprobs", "echo"))

    def capped(self, output_cap: int | None) -> Plan:
        """The plan with ``max_tokens`` set where the request named none and the hold imposed a cap."""
        if output_cap is None:
            return self
        return replace(self, ask=self.ask.model_copy(update={"max_tokens": output_cap}))

    def parts(self) -> list[Generate]:
        """One upstream request per choice: per prompt of a list of prompts, and ``n`` of each
        (``n`` is not sent on). Each gets its own engine slot and exact usage, which upstreams do
        not all report for batched prompts or several choices, and every model can give ``n``.
        In OpenAI's order: the choices of the first prompt, then of the next."""
        ask = self.ask
        assert not isinstance(ask, EmbeddingRequest), "embeddings are not sent to an adapter"
        n = ask.n or 1
        prompts = ask.prompts() if isinstance(ask, CompletionRequest) else []
        if len(prompts) <= 1 and n == 1:
            return [ask]
        prompt_updates: list[dict[str, Any]] = [{"prompt": prompt} for prompt in prompts] if len(prompts) > 1 else [{}]
        return [
            ask.model_copy(update={**update, "n": None, "seed": _seed(ask.seed, i)})
            for update in prompt_updates
            for i in range(n)
        ]

    def request_for(self, candidate: Candidate, part: Generate) -> Request:
        """The request as this deployment receives it: its model name, its quirks."""
        update: dict[str, Any] = {"model": candidate.deployment.model}
        if not candidate.upstream.developer_role and isinstance(part, ChatCompletionRequest):
            update["messages"] = [m.model_copy(update={"role": "system"}) if m.role == "developer" else m for m in part.messages]
        return Request(part.model_copy(update=update))


def _seed(seed: int | None, choice: int) -> int | None:
    """The seed of the ``choice``-th of n choices: each its own, or all n would be the same answer."""
    if seed is None:
        return None
    return seed + choice if seed + choice <= INT64_MAX else seed - choice


def _names(ask: Ask, name: str) -> bool:
    """The request sets ``name``, as a field of its schema or as one passed through."""
    return getattr(ask, name, None) is not None or (ask.model_extra or {}).get(name) is not None


def plan(deps: Deps, principal: Principal, ask: Ask, body: dict[str, Any]) -> Plan:
    """``body``: the request dumped as a dict (``Sizing.body``), for the checks that read its fields."""
    if isinstance(ask, EmbeddingRequest):
        return _embedding(deps, principal, ask)
    name, suffix = split_suffix(deps.catalog, ask.model)
    model = deps.catalog.require(name, "chat")
    fallbacks = [deps.catalog.require(m, "chat") for m in ask.models or [] if m != name]
    models = [model, *fallbacks]
    _in_scope(principal, models)
    _licensed(principal, models)
    _check_inputs(models, body)
    _check_context(model, ask)
    prefs = Preferences.from_wire(ask.provider, suffix)
    # by name, which only top-level organizations hold uniquely (a reseller's customer may share one)
    policy = None if principal.resellers else deps.settings.policies.get(principal.org_name)
    used = {key for key in PARAMETERS if key in body}
    markups = [markup for _, markup in principal.resellers]
    conversation = Conversation(principal.org_id, ask, body) if isinstance(ask, ChatCompletionRequest) else None
    candidates = deps.router.candidates(
        models, prefs, policy, used, ask.user, lambda c: deps.pricebook.paid(c.model, c.deployment, markups), conversation
    )
    kind: Kind = "chat" if isinstance(ask, ChatCompletionRequest) else "completion"
    found = Plan(kind, tuple(models), tuple(candidates), ask, 0)
    return replace(found, output_per_choice=_output_bound(deps, ask, model, found.local))


def _embedding(deps: Deps, principal: Principal, ask: EmbeddingRequest) -> Plan:
    model = deps.catalog.require(ask.model, "embedding")
    _in_scope(principal, [model])
    _licensed(principal, [model])
    embedder = deps.embedder
    if embedder is None or embedder.state != "ready":
        raise ServiceUnavailable(f"The embedding model `{model.id}` is not loaded; retry shortly.", retry_after_s=2)
    if ask.dimensions is not None and ask.dimensions != embedder.dimensions:
        raise InvalidRequest(f"The model `{model.id}` only produces {embedder.dimensions} dimensions.", param="dimensions")
    if len(ask.inputs()) > deps.settings.embeddings.max_inputs:
        raise InvalidRequest(f"Too many inputs: at most {deps.settings.embeddings.max_inputs} per request.", param="input")
    return Plan("embedding", (model,), (Candidate(model, model.deployments[0], EMBEDDER),), ask, 0)


def _in_scope(principal: Principal, models: Iterable[Model]) -> None:
    if principal.allowed_models is None:
        return
    for model in models:
        if model.id not in principal.allowed_models:
            raise PermissionDenied(f"This API key may not use the model `{model.id}`.", param="model", code="model_not_allowed")


def _licensed(principal: Principal, models: Iterable[Model]) -> None:
    """A model whose license must be accepted serves an organization that accepted that license
    (carried on the principal, cached with its key): before, 403 with the terms and how to accept."""
    for model in models:
        if model.license_acceptance and (model.id, model.license) not in principal.accepted_licenses:
            terms = terms_url(model)
            raise PermissionDenied(
                f"The model `{model.id}` is licensed under `{model.license}`"
                + (f" ({terms})" if terms else "")
                + ", whose terms your organization must accept before using it: an admin key of your organization "
                f'accepts them with POST /admin/v1/organizations/{principal.org_id}/licenses {{"model": "{model.id}"}}.',
                param="model",
                code="license_not_accepted",
            )


def _check_inputs(models: list[Model], body: dict[str, Any]) -> None:
    """Images for a local text-only model are refused here: the catalog knows exactly what a
    local engine reads (an upstream's own models may read more than the catalog says, so theirs
    is the upstream's to refuse)."""
    for model in models:
        local = all(deployment.upstream.startswith(LOCAL_ENGINE) for deployment in model.deployments)
        if "image" not in model.input_modalities and local and _has_media(body.get("messages") or ()):
            raise InvalidRequest(
                f"The model `{model.id}` reads text only: remove the image parts, or use a model with image input.",
                param="messages",
                code="unsupported_modality",
            )


def _has_media(messages: Iterable[dict[str, Any]]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in MEDIA_PARTS
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _check_context(model: Model, ask: Generate) -> None:
    limit = ask.output_limit()
    if limit is not None and limit >= model.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_length} tokens, but you requested "
            f"{limit} output tokens. Please reduce max_tokens.",
            param="max_completion_tokens" if getattr(ask, "max_completion_tokens", None) else "max_tokens",
        )


def _output_bound(deps: Deps, ask: Generate, model: Model, local: bool) -> int:
    """The output tokens one choice may generate: its max_tokens, else the context (on the local
    engine, ``[engine] default_max_tokens``)."""
    default = min(deps.settings.engine.default_max_tokens, model.context_length) if local else model.context_length
    return min(ask.output_limit() or default, model.context_length)


def split_suffix(catalog: Catalog, name: str) -> tuple[str, str | None]:
    """``model:floor`` (cheapest first) and ``model:nitro`` (fastest first), as on OpenRouter."""
    base, _, suffix = name.rpartition(":")
    if suffix in ("floor", "nitro") and base and catalog.has(base):
        return base, suffix
    return name, None
