"""The path's rate limits: requests and tokens per minute and concurrent requests of the key and
its organization (the organization's own limits, else its tier's), decided all or nothing (429).

The tokens-per-minute buckets are charged the request's estimate up front and keep what it
really used once that is known: a request refused later (a 4xx of its plan, a 402 of its hold)
or that failed gives all of it back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from emporion.auth.principal import Principal
from emporion.limits import Decision, Limit, Rate, Slot
from emporion.pipeline.deps import Deps
from emporion.pipeline.sizing import Sizing


@dataclass
class Limited:
    decision: Decision  # what the x-ratelimit-* headers report
    used_tokens: int = 0  # set at settlement: what the request really used


@contextlib.asynccontextmanager
async def limited(deps: Deps, principal: Principal, sizing: Sizing) -> AsyncIterator[Limited]:
    async with deps.limiter.hold(_buckets(deps, principal, sizing.tokens), _concurrency(deps, principal)) as held:
        admitted = Limited(held.decision)
        try:
            yield admitted
        finally:  # the tokens-per-minute buckets keep what was used, not what was feared (nor less)
            held.used["tokens"] = admitted.used_tokens


def _buckets(deps: Deps, principal: Principal, tokens: int) -> list[Limit]:
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


def _concurrency(deps: Deps, principal: Principal) -> list[Slot]:
    tier = deps.settings.tier(principal.tier)
    found = []
    if most := principal.org_limits.max_concurrent or (tier and tier.max_concurrent):
        found.append((f"org:{principal.org_id}", most))
    if principal.key_limits.max_concurrent:
        found.append((f"key:{principal.key_id}", principal.key_limits.max_concurrent))
    return found
