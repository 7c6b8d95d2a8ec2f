"""Prices and charges: usage x price, the operator's margin, and reseller markups stacked on top."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from emporion.core.money import Nanos, to_nanos
from emporion.core.usage import Usage

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token (and per request), exact."""

    prompt: Decimal = ZERO
    completion: Decimal = ZERO
    cached_prompt: Decimal | None = None  # default: the prompt price
    cache_write: Decimal | None = None  # default: the prompt price
    request: Decimal = ZERO

    def cost(self, usage: Usage) -> Decimal:
        cached = self.prompt if self.cached_prompt is None else self.cached_prompt
        write = self.prompt if self.cache_write is None else self.cache_write
        return (
            usage.input_tokens * self.prompt
            + usage.cached_input_tokens * cached
            + usage.cache_write_tokens * write
            + usage.output_tokens * self.completion
            + self.request
        )


@dataclass(frozen=True, slots=True)
class Margin:
    """A markup: a percentage of what comes before it, and/or a fixed fee per request (USD)."""

    percent: Decimal = ZERO
    fixed: Decimal = ZERO

    def __post_init__(self) -> None:
        if self.percent < 0 or self.fixed < 0:
            raise ValueError("a margin is never negative")

    def apply(self, amount: Decimal) -> Decimal:
        return amount * (1 + self.percent / 100) + self.fixed


@dataclass(frozen=True, slots=True)
class Charge:
    provider: Nanos  # what the upstream is owed
    operator: Nanos  # the operator's margin
    resellers: tuple[Nanos, ...]  # each reseller's markup, innermost first
    total: Nanos  # what the customer pays: the sum of the above, exactly


def seen_by(price: Price, margin: Margin, markups: Sequence[Margin] = ()) -> Price:
    """The price as the customer under ``markups`` pays it: per token, the percentages of the
    operator's margin and of every reseller's markup; per request, their fixed fees too."""
    factor, request = Decimal(1), price.request
    for each in (margin, *markups):
        factor *= 1 + each.percent / 100
        request = each.apply(request)

    def scaled(value: Decimal | None) -> Decimal | None:
        return None if value is None else value * factor

    return Price(
        prompt=price.prompt * factor,
        completion=price.completion * factor,
        cached_prompt=scaled(price.cached_prompt),
        cache_write=scaled(price.cache_write),
        request=request,
    )


def charge(usage: Usage, price: Price, margin: Margin = Margin(), markups: Sequence[Margin] = ()) -> Charge:
    """Splits one request's charge between provider, operator and resellers under the rounding
    rule of money.py: every share is a difference of rounded running totals."""
    running = price.cost(usage)
    provider = to_nanos(running)
    running = margin.apply(running)
    operator_total = to_nanos(running)
    shares = []
    previous = operator_total
    for markup in markups:
        running = markup.apply(running)
        current = to_nanos(running)
        shares.append(Nanos(current - previous))
        previous = current
    return Charge(provider=provider, operator=Nanos(operator_total - provider), resellers=tuple(shares), total=Nanos(previous))
