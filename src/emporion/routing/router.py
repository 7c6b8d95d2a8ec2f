"""Routing: a model to the deployment that serves it (adapter, upstream, and the engine's queue)."""

from __future__ import annotations

from dataclasses import dataclass

from emporion.catalog.models import Model
from emporion.engine.admission import Admission
from emporion.engine.llama_server import LlamaServer
from emporion.errors import ServiceUnavailable
from emporion.providers.base import Adapter, Upstream


@dataclass(frozen=True, slots=True)
class Route:
    model: Model
    adapter: Adapter
    upstream: Upstream
    admission: Admission | None  # the local engine's bounded queue; None for remote upstreams


class Router:
    def __init__(self, upstreams: dict[str, Upstream], adapters: dict[str, Adapter], engines: dict[str, LlamaServer]) -> None:
        self.upstreams = upstreams
        self.adapters = adapters
        self.engines = engines

    def route(self, model: Model) -> Route:
        engine = self.engines.get(model.upstream)
        if engine is not None:
            if engine.state != "ready":
                raise ServiceUnavailable(
                    f"The local engine for `{model.id}` is {engine.state}; retry shortly.", retry_after_s=2
                )
            return Route(model, self.adapters[engine.upstream.adapter], engine.upstream, engine.admission)
        upstream = self.upstreams.get(model.upstream)
        if upstream is None:
            raise ServiceUnavailable(f"No upstream serves `{model.id}` right now.", retry_after_s=5)
        return Route(model, self.adapters[upstream.adapter], upstream, None)
