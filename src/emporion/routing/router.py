"""Routing: a request's model(s) to an ordered list of candidate deployments, tried in turn."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from typing import Protocol

from emporion.catalog.models import Model
from emporion.errors import EmporionError, ServiceUnavailable
from emporion.limits.gate import Admission
from emporion.providers.base import Adapter, Upstream
from emporion.routing import candidates as ranking
from emporion.routing.affinity import AffinityBook, Conversation
from emporion.routing.candidates import Candidate, Preferences, PriceOf
from emporion.routing.fallback import Executor
from emporion.routing.health import HealthBook
from emporion.settings import OrgPolicy, RoutingSettings


class LocalEngine(Protocol):
    """What routing needs of a local engine (engine/llama_server.py): where it listens, whether it
    can serve now, and the gate to its slots."""

    @property
    def upstream(self) -> Upstream: ...
    @property
    def state(self) -> str: ...
    @property
    def admission(self) -> Admission: ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request was served: the model asked for, the deployment that answered, and how
    many upstream calls it took."""

    model: Model
    candidate: Candidate
    attempts: int = 1

    @property
    def provider(self) -> str:
        return "emporion-local" if self.candidate.upstream.local else self.candidate.upstream.name


class Router:
    def __init__(
        self,
        settings: RoutingSettings,
        upstreams: dict[str, Upstream],
        adapters: dict[str, Adapter],
        engines: MutableMapping[str, LocalEngine],
    ) -> None:
        self.engines = engines
        self.upstreams = {**upstreams, **{name: engine.upstream for name, engine in engines.items()}}
        self.health = HealthBook(settings.breaker_threshold, settings.breaker_cooldown_s)
        self.affinity = AffinityBook(settings.cache_affinity_s)
        admissions = {engine.upstream.name: engine.admission for engine in engines.values()}
        self.executor = Executor(settings, adapters, admissions, self.health, affinity=self.affinity)

    def add_engine(self, name: str, engine: LocalEngine) -> None:
        """A local engine started at run time (a model added while serving)."""
        self.engines[name] = engine
        self.upstreams[engine.upstream.name] = engine.upstream
        self.executor.admissions[engine.upstream.name] = engine.admission

    def remove_engine(self, name: str) -> None:
        engine = self.engines.pop(name, None)
        if engine is not None:
            self.upstreams.pop(engine.upstream.name, None)
            self.executor.admissions.pop(engine.upstream.name, None)

    def candidates(
        self,
        models: list[Model],
        prefs: Preferences,
        policy: OrgPolicy | None,
        used_parameters: set[str],
        user: str | None,
        price_of: PriceOf,
        conversation: Conversation | None = None,
    ) -> list[Candidate]:
        """Every model's deployments in turn (``models`` is the fallback list), each ranked; a
        conversation that asks for prompt caching first to the deployment holding its cache."""
        split = any(model.split == "weighted" and len(model.deployments) > 1 for model in models)
        cached = conversation is not None and self.affinity.enabled and split and conversation.cacheable
        seed = conversation.seed() if cached and conversation is not None else None
        found: list[Candidate] = []
        restarting: list[str] = []
        refusals: list[EmporionError] = []
        for model in models:
            resolved = []
            for deployment in model.deployments:
                engine = self.engines.get(deployment.upstream)
                if engine is not None and engine.state != "ready":
                    restarting.append(f"{model.id} ({engine.state})")
                    continue
                upstream = self.upstreams.get(deployment.upstream)
                if upstream is not None:
                    resolved.append(Candidate(model, deployment, upstream))
            if resolved:
                try:
                    found += ranking.order(model, resolved, prefs, policy, self.health, used_parameters, user, price_of, seed)
                except EmporionError as exc:  # this model cannot serve; a fallback model may
                    refusals.append(exc)
        if not found and refusals:
            raise refusals[0]
        if not found:
            what = ", ".join(restarting) or models[0].id
            raise ServiceUnavailable(f"No deployment can serve {what} right now; retry shortly.", retry_after_s=2)
        if conversation is not None and self.affinity.enabled and len(found) > 1:
            found = self._cache_first(found, conversation)
        return found

    def _cache_first(self, found: list[Candidate], conversation: Conversation) -> list[Candidate]:
        """The deployment that holds the conversation's cache first, where it is among those that
        may serve (policy, preferences, parameters and breaker allowing); each candidate told the
        conversation, so that the one that serves it is remembered."""
        pinned = self.affinity.pinned(conversation)
        ordered = sorted(found, key=lambda c: c.key != pinned)  # stable: the rest keep their order
        return [replace(c, conversation=conversation) for c in ordered]

    def status(self) -> dict[str, object]:
        return {key: health.snapshot() for key, health in sorted(self.health.items())}
