"""``model: "@preset/NAME"``: the organization's preset of that name, applied to the request before
anything else on the path sees it. The preset's model (or models, tried in order) replaces the
name; its parameters and provider preferences fill in what the request did not set (the request's
own fields win); its system prompt goes before the request's messages. A preset is read from the
database once per ``[server] auth_cache_s`` and organization, as keys are: a change takes at most
that long to reach every replica."""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import ValidationError

from emporion.auth.principal import Principal
from emporion.core.requests import Ask, ChatCompletionRequest
from emporion.errors import InvalidRequest, NotFound, invalid_request
from emporion.store import presets
from emporion.store.session import Database

PREFIX = "@preset/"
CACHE_MAX_ENTRIES = 10_000


class Presets:
    def __init__(self, db: Database, cache_s: float) -> None:
        self.db = db
        self.cache_s = cache_s
        self._cache: dict[tuple[str, str], tuple[dict[str, Any] | None, float]] = {}

    async def apply(self, principal: Principal, ask: Ask) -> Ask:
        """The request with its preset applied; as it is when it names no preset."""
        if not ask.model.startswith(PREFIX):
            return ask
        name = ask.model.removeprefix(PREFIX)
        config = await self._config(principal.org_id, name)
        if config is None:
            raise NotFound(f"No preset named `{name}` in your organization.", param="model", code="preset_not_found")
        given = ask.model_dump(exclude_unset=True)
        merged: dict[str, Any] = {**config.get("parameters", {}), **given}
        merged["model"] = config.get("model") or config["models"][0]
        if config.get("models") and "models" not in given:
            merged["models"] = config["models"]
        if config.get("provider") is not None and "provider" not in given:
            merged["provider"] = config["provider"]
        if config.get("system") and isinstance(ask, ChatCompletionRequest):
            merged["messages"] = [{"role": "system", "content": config["system"]}, *given["messages"]]
        try:
            return type(ask).model_validate_json(orjson.dumps(merged))
        except ValidationError as exc:
            error = invalid_request(exc)
            raise InvalidRequest(f"With preset `{name}`: {error.message}", param=error.param) from None

    async def _config(self, org_id: str, name: str) -> dict[str, Any] | None:
        key = (org_id, name)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self.db.session() as session:
            found = await presets.get(session, org_id, name)
        config = presets.config_of(found) if found is not None else None
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = (config, time.monotonic() + self.cache_s)
        return config

    def forget(self) -> None:
        """Drops what this process cached (after a change made by it)."""
        self._cache.clear()
