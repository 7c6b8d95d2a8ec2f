"""Candidate ordering: which deployments may serve a request, and in what order they are tried.

Inputs: the model's deployments (with its split: ordered or weighted, sticky per end user, or per
conversation where it asks for prompt caching), the request's OpenRouter-style ``provider``
preferences and ``:floor``/``:nitro`` suffix, the organization's policy, the parameters the request
uses, and each deployment's measured health.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from emporion.catalog.models import Deployment, Model
from emporion.core.prices import Price
from emporion.errors import InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable
from emporion.providers.base import Upstream
from emporion.routing.affinity import Conversation
from emporion.routing.health import HealthBook
from emporion.settings import OrgPolicy

Sort = Literal["price", "latency", "throughput"]
SUFFIX_SORTS: dict[str, Sort] = {"floor": "price", "nitro": "throughput"}  # OpenRouter's model suffixes
LOCAL = "local"  # in `only` / `ignore` / `order`: every deployment on the operator's own machines


@dataclass(frozen=True, slots=True)
class Preferences:
    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    sort: Sort | None = None
    max_prompt_price: Decimal | None = None
    max_completion_price: Decimal | None = None
    deny_data_collection: bool = False

    @classmethod
    def from_wire(cls, wire: Any, suffix: str | None) -> Preferences:
        """OpenRouter's ``provider`` object; prices in max_price are USD per million tokens."""
        sort = SUFFIX_SORTS.get(suffix or "")
        if wire is None:
            return cls(sort=sort)
        if not isinstance(wire, dict):
            raise InvalidRequest("'provider' must be an object.", param="provider")
        known = {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price", "data_collection", "require_parameters"}
        unknown = set(wire) - known
        if unknown:
            raise InvalidRequest(f"Unknown field in 'provider': {sorted(unknown)[0]}.", param="provider")
        sort = wire.get("sort", sort)
        if sort not in (None, "price", "latency", "throughput"):
            raise InvalidRequest("'provider.sort' is one of price, latency, throughput.", param="provider.sort")
        max_price = wire.get("max_price") or {}
        if wire.get("data_collection") not in (None, "allow", "deny"):
            raise InvalidRequest("'provider.data_collection' is allow or deny.", param="provider.data_collection")
        return cls(
            order=_names(wire.get("order"), "order") or (),
            only=_names(wire.get("only"), "only"),
            ignore=_names(wire.get("ignore"), "ignore") or (),
            allow_fallbacks=_flag(wire.get("allow_fallbacks", True), "allow_fallbacks"),
            sort=sort,
            max_prompt_price=_per_token(max_price, "prompt"),
            max_completion_price=_per_token(max_price, "completion"),
            deny_data_collection=wire.get("data_collection") == "deny",
        )


def _names(value: Any, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"'provider.{field}' must be a list of provider names.", param=f"provider.{field}")
    return tuple(value)


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'provider.{field}' must be a boolean.", param=f"provider.{field}")
    return value


MAX_PRICE_DIGITS = 30  # a price of 10^30 USD per million tokens is as good as no limit


def _per_token(max_price: Any, key: str) -> Decimal | None:
    if not isinstance(max_price, dict):
        raise InvalidRequest("'provider.max_price' must be an object.", param="provider.max_price")
    value = max_price.get(key)
    if value is None:
        return None
    param = f"provider.max_price.{key}"
    try:
        per_million = Decimal(str(value)) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
    except InvalidOperation:
        per_million = None
    if per_million is None or not per_million.is_finite() or per_million < 0 or per_million.adjusted() > MAX_PRICE_DIGITS:
        raise InvalidRequest(
            f"'{param}' must be a non-negative number of USD per million tokens.", param=param, code="invalid_value"
        )
    return per_million / Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Candidate:
    model: Model
    deployment: Deployment
    upstream: Upstream
    # the request's conversation, where the deployment that serves it is to be remembered (affinity.py)
    conversation: Conversation | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.upstream.name}/{self.deployment.model}"


PriceOf = Callable[[Candidate], Price]  # what the caller pays per token on a deployment (the price book's)


def names_of(upstream: Upstream) -> set[str]:
    return {upstream.name, LOCAL} if upstream.local else {upstream.name}


def order(
    model: Model,
    resolved: list[Candidate],
    prefs: Preferences,
    policy: OrgPolicy | None,
    health: HealthBook,
    used_parameters: set[str],
    user: str | None,
    price_of: PriceOf,
    conversation: str | None = None,
) -> list[Candidate]:
    """The deployments to try, best first. Raises when none may serve, saying why. ``conversation``:
    the seed of a conversation that asks for prompt caching (``Conversation.seed``), which a
    weighted split sticks to where no sticky ``user`` decides."""
    candidates = resolved
    if policy is not None:
        if policy.allowed_upstreams is not None:
            allowed = set(policy.allowed_upstreams)
            candidates = [c for c in candidates if names_of(c.upstream) & allowed]
        if policy.data_policy == "local-only":
            candidates = [c for c in candidates if c.upstream.local]
        if not candidates:
            raise PermissionDenied(
                f"Your organization's policy allows no deployment of `{model.id}`"
                + (
                    " (data_policy local-only: only models on this operator's own machines)."
                    if policy.data_policy == "local-only"
                    else "."
                ),
                code="policy_forbids_model",
            )
    candidates = [c for c in candidates if _allowed_by(prefs, c, price_of)]
    if not candidates:
        raise NotFound(
            f"No deployment of `{model.id}` matches the request's provider preferences.", param="provider", code="no_endpoints"
        )
    supported = [c for c in candidates if not used_parameters & c.upstream.unsupported_parameters]
    if not supported:
        missing = sorted(used_parameters & candidates[0].upstream.unsupported_parameters)
        raise InvalidRequest(
            f"No deployment of `{model.id}` supports the parameter '{missing[0]}'.",
            param=missing[0],
            code="unsupported_parameter",
        )
    ranked = _rank(model, supported, prefs, health, user if model.sticky and user else conversation, price_of)
    available = [c for c in ranked if health[c.key].breaker.available()]
    if not available:
        raise ServiceUnavailable(f"Every deployment of `{model.id}` is cooling down after failures.", retry_after_s=5)
    return available if prefs.allow_fallbacks else available[:1]


def _allowed_by(prefs: Preferences, candidate: Candidate, price_of: PriceOf) -> bool:
    names = names_of(candidate.upstream)
    if prefs.only is not None and not names & set(prefs.only):
        return False
    if names & set(prefs.ignore):
        return False
    if prefs.deny_data_collection and candidate.upstream.data_collection != "deny":
        return False
    if prefs.max_prompt_price is None and prefs.max_completion_price is None:
        return True
    price = price_of(candidate)
    if prefs.max_prompt_price is not None and price.prompt > prefs.max_prompt_price:
        return False
    if prefs.max_completion_price is not None and price.completion > prefs.max_completion_price:
        return False
    return True


def _rank(
    model: Model, candidates: list[Candidate], prefs: Preferences, health: HealthBook, sticky: str | None, price_of: PriceOf
) -> list[Candidate]:
    """``sticky``: what a weighted split picks by (a sticky user, a cached conversation); None: at random."""
    if prefs.order:
        position = {name: i for i, name in enumerate(prefs.order)}

        def placed(c: Candidate) -> int:
            return min((position[n] for n in names_of(c.upstream) if n in position), default=len(position))

        return sorted(candidates, key=placed)
    if prefs.sort == "price":
        return sorted(candidates, key=lambda c: (price := price_of(c)).prompt + price.completion)
    if prefs.sort == "latency":
        return sorted(candidates, key=lambda c: health[c.key].ttft_s or float("inf"))
    if prefs.sort == "throughput":
        return sorted(candidates, key=lambda c: -(health[c.key].tokens_per_s or 0.0))
    if model.split == "weighted" and len(candidates) > 1:
        first = _weighted_pick(model, candidates, sticky)
        return [first] + [c for c in candidates if c is not first]
    return candidates


def _weighted_pick(model: Model, candidates: list[Candidate], user: str | None) -> Candidate:
    total = sum(c.deployment.weight for c in candidates)
    if total <= 0:
        return candidates[0]
    if user:
        digest = hashlib.sha256(f"{model.id}\0{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    else:
        point = random.randrange(total)
    for candidate in candidates:
        point -= candidate.deployment.weight
        if point < 0:
            return candidate
    return candidates[-1]
