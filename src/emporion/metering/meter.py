"""Metering one request: the worst case it may cost, its hold, and its settlement (once).

A ``Tab`` is opened before the request goes upstream (it reserves the worst case: 402 when the
balance or a key budget cannot cover it) and closed exactly once: ``settle`` charges the usage
at the price of the deployment that served it (the unused hold goes back) and writes the
request's record in the same transaction; a request that produced nothing settles at zero.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

from emporion.auth.principal import Principal
from emporion.catalog.models import Deployment, Model
from emporion.core.money import Nanos
from emporion.core.prices import Charge, Price, charge
from emporion.core.usage import Usage
from emporion.metering.ledger import Ledger, Settled
from emporion.metering.pricebook import PriceBook, Priced

Status = Literal["completed", "partial", "cancelled", "failed"]  # partial: cut after some output
UsageSource = Literal["upstream", "counted", "none"]
NO_CHARGE = Charge(provider=Nanos(0), operator=Nanos(0), resellers=(), total=Nanos(0))
FULL_PRICE = Decimal(1)


def discounted(price: Price, factor: Decimal) -> Price:
    """The price a request pays at ``factor`` of it (a batch line's: 1 - the batch discount), every
    per-token and per-request part alike, before the margin and the markups are applied to it."""
    if factor == FULL_PRICE:
        return price

    def scaled(value: Decimal | None) -> Decimal | None:
        return None if value is None else value * factor

    return dataclasses.replace(
        price,
        prompt=price.prompt * factor,
        completion=price.completion * factor,
        cached_prompt=scaled(price.cached_prompt),
        cache_write=scaled(price.cache_write),
        request=price.request * factor,
    )


@dataclass(frozen=True, slots=True)
class Served:
    """Who served a request: the model asked for, the deployment that answered, its provider, and
    the upstream calls it took."""

    model: Model
    deployment: Deployment
    provider: str
    attempts: int = 1


def budgets_of(principal: Principal, now: float) -> list[tuple[str, int]]:
    """The key's budgets as ledger budget rows: its total, and the current period's."""
    budgets = []
    if principal.budget_nanos is not None:
        budgets.append((f"key:{principal.key_id}", principal.budget_nanos))
    if principal.budget_period and principal.period_budget_nanos is not None:
        day = datetime.fromtimestamp(now, UTC)
        period = {
            "day": day.strftime("day:%Y-%m-%d"),
            "week": "week:{}-W{:02d}".format(*day.isocalendar()[:2]),
            "month": day.strftime("month:%Y-%m"),
        }[principal.budget_period]
        budgets.append((f"key:{principal.key_id}:{period}", principal.period_budget_nanos))
    return budgets


@dataclass
class Tab:
    ledger: Ledger
    pricebook: PriceBook
    principal: Principal
    request_id: str
    endpoint: str
    streamed: bool
    hold: Nanos
    price_factor: Decimal = FULL_PRICE  # what the request pays of the price (a batch line: less)
    end_user: str | None = None  # recorded with it (metering/attribution.py)
    tags: tuple[str, ...] = ()
    opened_at: float = field(default_factory=time.monotonic)
    closed: Settled | None = None

    def priced(self, model: Model, deployment: Deployment) -> Priced:
        return self.pricebook.priced(model, deployment)

    def charge(self, model: Model, deployment: Deployment, usage: Usage) -> Charge:
        return self._bill(self.priced(model, deployment), usage)

    def _bill(self, priced: Priced, usage: Usage) -> Charge:
        price = discounted(priced.price, self.price_factor)
        return charge(usage, price, priced.margin, [markup for _, markup in self.principal.resellers])

    def cost(self, model: Model, deployment: Deployment, usage: Usage) -> Nanos:
        """What the customer pays for ``usage``: the charge, never more than the hold."""
        return Nanos(min(self.charge(model, deployment, usage).total, self.hold))

    async def settle(
        self,
        served: Served | None,
        usage: Usage,
        *,
        status: Status,
        source: UsageSource,
        finish_reason: str | None = None,
        free: bool = False,
    ) -> Settled | None:
        """``served``: None when nothing served (it settles at zero). ``free``: the usage is
        recorded, not charged."""
        if served is None:
            model_id, upstream, upstream_model, provider, attempts, bill = "", "", "", "", 0, NO_CHARGE
            priced = None
        else:
            model_id, upstream, upstream_model = served.model.id, served.deployment.upstream, served.deployment.model
            provider, attempts = served.provider, served.attempts
            priced = self.priced(served.model, served.deployment)
            bill = NO_CHARGE if free else self._bill(priced, usage)
        record: dict[str, Any] = {
            "org_id": self.principal.org_id,
            "key_id": self.principal.key_id,
            "model": model_id,
            "upstream": upstream,
            "upstream_model": upstream_model,
            "provider": provider,
            "endpoint": self.endpoint,
            "streamed": self.streamed,
            "status": status,
            "finish_reason": finish_reason,
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens,
            "usage_source": source,
            "price_id": priced.price_id if priced else None,
            "margin_id": priced.margin_id if priced else None,
            "attempts": attempts,
            "latency_ms": int((time.monotonic() - self.opened_at) * 1000),
            "created_at": int(time.time()),
            "end_user": self.end_user,
            "tags": orjson.dumps(self.tags).decode() if self.tags else None,
        }
        resellers = [org for org, _ in self.principal.resellers]
        self.closed = await self.ledger.settle(self.request_id, bill, upstream or "none", resellers, record)
        return self.closed


def worst_case(
    principal: Principal,
    pricebook: PriceBook,
    deployments: Iterable[tuple[Model, Deployment]],
    prompt_tokens: int,
    output_tokens: int,
    price_factor: Decimal = FULL_PRICE,
) -> Nanos:
    """The most the request can cost: every prompt token at the dearest input price, every
    output token it may generate, on the dearest of the deployments that may serve it."""
    markups = [markup for _, markup in principal.resellers]
    worst = 0
    usage = Usage(input_tokens=prompt_tokens, output_tokens=output_tokens)
    for model, deployment in deployments:
        dearest = pricebook.dearest(model, deployment)
        worst = max(worst, charge(usage, discounted(dearest.price, price_factor), dearest.margin, markups).total)
    return Nanos(worst)


def affordable_output(cost_of: Callable[[int], int], most: int, available: int) -> int:
    """The most output tokens, up to ``most``, whose cost (``cost_of(n)``, rising with n) fits in
    ``available``: 0 when not even one does. What a request without max_tokens is capped at."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if cost_of(middle) <= available:
            low = middle
        else:
            high = middle - 1
    return low
