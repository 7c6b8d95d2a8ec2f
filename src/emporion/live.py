"""The catalog kept live: every ``[server] catalog_refresh_s`` (2 s) each replica reads the price
book and the operator's added GGUF models from the shared database. A price set, or a model added
or removed with ``emporion models add|remove``, takes effect on every replica within seconds,
without a restart: an added model's engine is started in the background (its requests get 503
"retry shortly" until it is ready), a removed one's is stopped and its model leaves the catalog."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from emporion.catalog.builtin import build_catalog
from emporion.catalog.models import Catalog, Model
from emporion.engine.build import find_llama_server
from emporion.engine.llama_server import LlamaServer
from emporion.pipeline import Deps
from emporion.providers.base import PARAMETERS
from emporion.routing.router import Router
from emporion.settings import Settings
from emporion.store import repos

log = logging.getLogger("emporion.live")


class EngineMissing(RuntimeError):
    """A local model needs llama-server and there is none; the message says what to do."""


def with_supported_parameters(model: Model, router: Router) -> Model:
    """What every deployment of the model can honour (OpenRouter's ``supported_parameters``)."""
    unsupported: set[str] = set()
    for deployment in model.deployments:
        upstream = router.upstreams.get(deployment.upstream)
        if upstream is not None:
            unsupported |= upstream.unsupported_parameters
    if model.kind != "chat":
        return model
    return replace(model, supported_parameters=tuple(p for p in PARAMETERS if p not in unsupported))


def new_engine(settings: Settings, model: Model) -> LlamaServer:
    """The (not yet started) engine of a local model."""
    binary = find_llama_server(settings.engine.llama_server)
    if binary is None:
        raise EngineMissing(
            "llama-server was not found: build it once with `emporion engine build` (or set [engine] llama_server in the config file)"
        )
    if not model.gguf or not Path(model.gguf).is_file():
        raise EngineMissing(f"model {model.id}: GGUF file {model.gguf} does not exist")
    return LlamaServer(
        model.id, Path(model.gguf), settings.engine, binary, settings.logs_dir / f"engine-{model.id}.log", model.chat_template
    )


class LiveCatalog:
    def __init__(self, deps: Deps, gemma_file: str) -> None:
        self.deps = deps
        self.gemma_file = gemma_file
        self._seen: tuple[tuple[object, ...], ...] | None = None
        self._starting: set[asyncio.Task[None]] = set()

    async def refresh(self) -> None:
        deps = self.deps
        await deps.pricebook.load()
        async with deps.db.session() as session:
            rows = await repos.list_local_models(session)
        seen = tuple((row.id, row.path, row.name, row.context_length, row.license, row.release) for row in rows)
        if seen == self._seen:
            return
        first = self._seen is None
        self._seen = seen
        if first:
            return  # what start_deps built from these same rows
        try:
            fresh = build_catalog(deps.settings, self.gemma_file, rows)
        except ValueError as exc:
            log.warning("the catalog was not refreshed: %s", exc)
            return
        wanted = {model.upstream: model for model in fresh if model.gguf}
        for name in [name for name in deps.engines if name not in wanted]:
            engine = deps.engines[name]
            deps.router.remove_engine(name)
            log.info("stopping the engine of %s (removed)", engine.model_id)
            await engine.stop()
        for name, model in wanted.items():
            if name not in deps.engines:
                self._start(name, model)
        deps.catalog.replace([with_supported_parameters(model, deps.router) for model in fresh])

    def _start(self, name: str, model: Model) -> None:
        try:
            engine = new_engine(self.deps.settings, model)
        except EngineMissing as exc:
            log.warning("model %s added but not served: %s", model.id, exc)
            return
        self.deps.router.add_engine(name, engine)
        task = asyncio.create_task(self._run(engine), name=f"start-{model.id}")
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _run(self, engine: LlamaServer) -> None:
        log.info("starting the engine of %s (added)", engine.model_id)
        try:
            await engine.start()
        except Exception as exc:  # its state says failed; requests for it get 503
            log.warning("the engine of %s failed to start: %s", engine.model_id, exc)
            return
        log.info("%s ready", engine.model_id)

    async def aclose(self) -> None:
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)


async def keep_live(live: LiveCatalog, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await live.refresh()
        except Exception as exc:
            log.warning("catalog refresh failed: %s", exc)


def catalog_with_parameters(catalog: Catalog, router: Router) -> Catalog:
    return Catalog([with_supported_parameters(model, router) for model in catalog])
