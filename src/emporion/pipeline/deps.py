"""What the request path runs on: one of each, made at start (app.py) and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from emporion.auth.principal import Authenticator
from emporion.catalog.models import Catalog
from emporion.engine.embeddings import Embedder
from emporion.engine.llama_server import LlamaServer
from emporion.limits import Limiter
from emporion.metering.ledger import Ledger
from emporion.metering.pricebook import PriceBook
from emporion.pipeline.presets import Presets
from emporion.pipeline.stages import Stages
from emporion.providers.base import Adapter
from emporion.routing.router import Router
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
    stages: Stages = field(default_factory=Stages)
    presets: Presets | None = None  # None: "@preset/NAME" is an unknown model
    log_db: Database | None = None  # where the request log is (None: db itself)

    @property
    def request_log_db(self) -> Database:
        return self.log_db or self.db
