"""The generic cell rate algorithm for one bucket: pure arithmetic on a theoretical arrival time.

A bucket is one float, its TAT (theoretical arrival time): the instant at which it would be
empty again if nothing more came. With ``T = period_s / amount`` seconds per unit, a request
costing ``cost`` units at ``now`` is admitted when

    max(tat, now) + cost * T - now <= period_s     (+ TOLERANCE_S)

and then the TAT moves to ``max(tat, now) + cost * T``; a rejected request leaves the TAT as it
was. This is a token bucket of capacity ``amount`` refilled at ``amount / period_s`` units per
second, so a full period's worth may come at once (as OpenAI's per-minute limits allow), and
over any window of ``w`` seconds at most ``amount + w * amount / period_s`` units are admitted:
``amount`` in the first instant of a minute, then never more than the rate.

``TOLERANCE_S`` (one microsecond) absorbs float rounding, so that retrying exactly
``retry_after_s`` later is admitted even on epoch-sized clocks (Redis ``TIME``). The Lua script
in ``limits/redis.py`` repeats these formulas operation for operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

TOLERANCE_S = 1e-6


@dataclass(frozen=True, slots=True)
class Rate:
    """``amount`` units per ``period_s`` seconds, with a burst of ``amount``."""

    amount: int
    period_s: float = 60.0

    def __post_init__(self) -> None:
        if self.amount < 1 or not self.period_s > 0:
            raise ValueError(f"a rate needs amount >= 1 and period_s > 0, not {self}")

    @property
    def interval_s(self) -> float:
        """Seconds one unit takes to refill (the emission interval ``T``)."""
        return self.period_s / self.amount

    def share(self, parts: int) -> Rate:
        """This rate split between ``parts`` replicas (at least one unit each)."""
        return Rate(max(1, self.amount // max(1, parts)), self.period_s)


class Verdict(NamedTuple):
    allowed: bool
    tat: float | None  # the bucket's TAT after this call: unchanged (None too) when rejected
    remaining: int  # unit requests that would still be admitted at ``now``
    retry_after_s: float  # 0 when allowed; math.inf when cost > amount (never admissible)
    reset_s: float  # seconds until the bucket is full again


def gcra(tat: float | None, now: float, rate: Rate, cost: int) -> Verdict:
    """Decide one request of ``cost`` units against a bucket (``tat`` None: a bucket never used)."""
    current = now if tat is None else tat
    new_tat = max(current, now) + cost * rate.interval_s
    if new_tat - now <= rate.period_s + TOLERANCE_S:
        return Verdict(True, new_tat, _remaining(new_tat, now, rate), 0.0, max(0.0, new_tat - now))
    # never, or the instant at which new_tat - now' == period_s
    retry_after_s = math.inf if cost > rate.amount else new_tat - rate.period_s - now
    return Verdict(False, tat, _remaining(current, now, rate), retry_after_s, max(0.0, current - now))


def refund(tat: float, now: float, rate: Rate, units: int) -> float:
    """Give ``units`` back to a bucket: its TAT moves back, never before ``now``."""
    if tat <= now:
        return tat
    return max(tat - units * rate.interval_s, now)


def debit(tat: float | None, now: float, rate: Rate, units: int) -> float:
    """Charge ``units`` used after the fact (output a request did not announce): the TAT moves on
    unconditionally, past a full period if need be, so later requests wait for the debt."""
    return max(now if tat is None else tat, now) + units * rate.interval_s


def _remaining(tat: float, now: float, rate: Rate) -> int:
    """The largest ``k`` for which a request of ``k`` units would pass ``gcra`` at ``now``."""
    base, interval, limit_s = max(tat, now), rate.interval_s, rate.period_s + TOLERANCE_S
    units = max(0, min(rate.amount, math.floor((limit_s - (base - now)) / interval)))
    while units > 0 and base + units * interval - now > limit_s:  # float rounding, either way
        units -= 1
    while units < rate.amount and base + (units + 1) * interval - now <= limit_s:
        units += 1
    return units
