"""Rate limits: requests and tokens per minute and concurrent requests, per key, org and tier.

A request names the buckets it falls in, one ``Limit`` each, and a ``Limiter`` decides them
together, all or nothing::

    limits = [
        Limit("key:key_abc", "requests", Rate(60), cost=1),
        Limit("org:org_123", "tokens", Rate(90_000), cost=prompt_tokens + max_tokens),
        Limit("tier:free:org_123", "requests", Rate(20), cost=1),
    ]
    decision = await admit(limiter, limits)  # raises LimitExceeded (429) when any bucket is full
    async with limiter.concurrency("key:key_abc", 4):  # raises LimitExceeded on the 5th
        ...
    await limiter.refund(limits, {"tokens": estimated - used})  # optional
    response.headers.update(ratelimit_headers(decision))

or, as the request path does, all of it in one block (``hold``: on Redis, one round trip in and
one out, where the steps above take one each)::

    async with limiter.hold(limits, [("key:key_abc", 4)]) as held:  # LimitExceeded: nothing charged
        ...
        held.used["tokens"] = used  # what the buckets keep of their "tokens" cost

Limiters (``emporion.limits.memory.MemoryLimiter``, ``emporion.limits.redis.RedisLimiter``)
return a ``Decision`` from ``check``; ``admit`` turns a rejection into ``LimitExceeded``, a
``RateLimited`` whose ``headers()`` carry Retry-After and OpenAI's ``x-ratelimit-*``. The math is
GCRA (``limits/gcra.py``); ``decide`` applies it to a request's buckets at one instant, and both
limiters call it, so they agree exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from emporion.limits.gcra import Rate, Verdict, gcra
from emporion.limits.headers import LimitExceeded, ratelimit_headers, rejection

Kind = Literal["requests", "tokens"]

__all__ = [
    "Blocked",
    "Decision",
    "Held",
    "Kind",
    "Limit",
    "LimitExceeded",
    "Limiter",
    "Quota",
    "Rate",
    "Slot",
    "admit",
    "decide",
    "hold_in_steps",
    "ratelimit_headers",
]


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket a request falls in, and what the request costs there."""

    scope: str  # the bucket's identity: "key:key_abc", "org:org_123", "tier:free:org_123"
    kind: Kind
    rate: Rate
    cost: int = 1  # 1 for requests; estimated prompt tokens + max output tokens for tokens

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.scope}"


@dataclass(frozen=True, slots=True)
class Quota:
    """Where one bucket stands: what ``x-ratelimit-*`` headers report."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Blocked:
    """The bucket that rejected a request (the one with the longest wait)."""

    limit: Limit
    quota: Quota


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0  # 0 when allowed; math.inf when a cost exceeds its bucket
    quotas: Mapping[Kind, Quota] = field(default_factory=dict)  # per kind, the tightest bucket
    blocked: Blocked | None = None  # set when rejected


Slot = tuple[str, int]  # a concurrency scope and its most concurrent requests


@dataclass
class Held:
    """A request admitted by ``Limiter.hold``: its decision, and what it used (set before the
    block ends: the buckets keep that of each kind instead of the cost they were charged)."""

    decision: Decision
    limits: Sequence[Limit]
    used: dict[Kind, int] = field(default_factory=dict)

    def corrections(self) -> dict[Kind, int]:
        """Per kind, units to debit (positive) or refund (negative): used minus charged."""
        found: dict[Kind, int] = {}
        for kind, used in self.used.items():
            charged = next((limit.cost for limit in self.limits if limit.kind == kind), None)
            if charged is not None and used != charged:
                found[kind] = used - charged
        return found


class Limiter(Protocol):
    async def check(self, limits: Sequence[Limit]) -> Decision:
        """All or nothing: admitted only if every bucket admits it, and then every bucket is
        charged; a rejected request consumes nothing from any bucket."""
        ...

    async def refund(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        """Give back units charged but not used (``{"tokens": estimate - actual}``) to every bucket
        of that kind in ``limits``; a bucket's TAT moves back, never before now."""
        ...

    async def debit(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        """Charge units used beyond what was charged at admission (``{"tokens": actual -
        estimate}``) to every bucket of that kind in ``limits``, even past a full bucket: the
        requests after it wait for the debt."""
        ...

    def concurrency(self, scope: str, max_concurrent: int) -> AbstractAsyncContextManager[None]:
        """Hold one of ``max_concurrent`` slots while inside; ``LimitExceeded`` when all are held."""
        ...

    def hold(self, limits: Sequence[Limit], slots: Sequence[Slot]) -> AbstractAsyncContextManager[Held]:
        """``check`` and a slot of every scope in ``slots``, all or nothing (``LimitExceeded``: no
        bucket charged, no slot held); on leaving, the slots are freed and each kind the block set
        in ``Held.used`` is corrected to it (refunded or debited)."""
        ...

    async def aclose(self) -> None: ...


async def admit(limiter: Limiter, limits: Sequence[Limit]) -> Decision:
    """``limiter.check``, raising ``LimitExceeded`` (429) when the request is rejected."""
    decision = await limiter.check(limits)
    if not decision.allowed:
        raise rejection(decision)
    return decision


@contextlib.asynccontextmanager
async def hold_in_steps(limiter: Limiter, limits: Sequence[Limit], slots: Sequence[Slot]) -> AsyncIterator[Held]:
    """``Limiter.hold`` made of the other methods, a step each (the in-process limiter's way)."""
    held = Held(await admit(limiter, limits), limits)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for scope, most in slots:
                try:
                    await stack.enter_async_context(limiter.concurrency(scope, most))
                except LimitExceeded:
                    await limiter.refund(limits, {limit.kind: limit.cost for limit in limits})  # as if never admitted
                    raise
            yield held
    finally:
        corrections = held.corrections()
        if refunds := {kind: -units for kind, units in corrections.items() if units < 0}:
            await limiter.refund(limits, refunds)
        if debits := {kind: units for kind, units in corrections.items() if units > 0}:
            await limiter.debit(limits, debits)


def decide(limits: Sequence[Limit], tats: Mapping[str, float | None], now: float) -> tuple[Decision, dict[str, float]]:
    """Decide a request against its buckets' TATs (by ``Limit.key``; absent or None: never used)
    at ``now``. Returns the decision and, when allowed, the new TAT of every bucket (else ``{}``).
    A bucket named twice is charged twice."""
    charged: dict[str, float] = {}
    verdicts: list[tuple[Limit, Verdict]] = []
    for limit in limits:
        verdict = gcra(charged.get(limit.key, tats.get(limit.key)), now, limit.rate, limit.cost)
        if verdict.allowed and verdict.tat is not None:  # an admitted verdict always has a TAT
            charged[limit.key] = verdict.tat
        verdicts.append((limit, verdict))
    rejected = [(limit, verdict) for limit, verdict in verdicts if not verdict.allowed]
    if not rejected:
        return Decision(True, 0.0, _tightest(verdicts)), charged
    limit, verdict = max(rejected, key=lambda pair: pair[1].retry_after_s)
    uncharged = [(each, gcra(tats.get(each.key), now, each.rate, 0)) for each in limits]
    blocked = Blocked(limit, next(_quota(*pair) for pair in uncharged if pair[0] is limit))
    return Decision(False, verdict.retry_after_s, _tightest(uncharged), blocked), {}


def _quota(limit: Limit, verdict: Verdict) -> Quota:
    return Quota(limit.rate.amount, verdict.remaining, verdict.reset_s)


def _tightest(verdicts: Sequence[tuple[Limit, Verdict]]) -> dict[Kind, Quota]:
    quotas: dict[Kind, Quota] = {}
    for limit, verdict in verdicts:
        quota, current = _quota(limit, verdict), quotas.get(limit.kind)
        if current is None or (quota.remaining, -quota.reset_s) < (current.remaining, -current.reset_s):
            quotas[limit.kind] = quota
    return quotas
