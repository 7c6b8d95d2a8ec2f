"""The wire form of a rate-limit decision: OpenAI's ``x-ratelimit-*`` headers and the 429 error.

``ratelimit_headers(decision)`` gives, for each kind the request was checked against (requests,
tokens), its tightest bucket as OpenAI writes it::

    x-ratelimit-limit-requests: 60         x-ratelimit-limit-tokens: 150000
    x-ratelimit-remaining-requests: 59     x-ratelimit-remaining-tokens: 149984
    x-ratelimit-reset-requests: 1s         x-ratelimit-reset-tokens: 6m0s

Resets and waits are durations in Go's notation, as OpenAI's are: "120ms", "1.2s", "6m0s",
"1h0m0s" (rounded up to the millisecond). ``LimitExceeded`` is the ``RateLimited`` error a
rejection raises; its ``headers()`` add these to Retry-After (and ``retry-after-ms``, which the
``openai`` SDKs read first).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from emporion.errors import RateLimited

if TYPE_CHECKING:
    from emporion.limits import Decision, Kind, Limit

CONCURRENCY_RETRY_S = 1.0  # what a client is told to wait when all concurrency slots are held
KINDS: tuple[Kind, ...] = ("requests", "tokens")
PERIOD_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


class LimitExceeded(RateLimited):
    """429 ``rate_limit_exceeded``, with Retry-After and the ``x-ratelimit-*`` headers."""

    def __init__(self, message: str, *, retry_after_s: float | None, decision: Decision | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.decision = decision

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after_s is not None and math.isfinite(self.retry_after_s):
            wait_ms = max(1, math.ceil(round(self.retry_after_s * 1000, 3)))
            headers["retry-after"] = str(math.ceil(wait_ms / 1000))
            headers["retry-after-ms"] = str(wait_ms)
        if self.decision is not None:
            headers.update(ratelimit_headers(self.decision))
        return headers


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind in KINDS:
        if (quota := decision.quotas.get(kind)) is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(quota.reset_s)
    return headers


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration`` notation, to the millisecond, rounded up: 0.12 -> "120ms"."""
    total_ms = max(0, math.ceil(round(seconds * 1000, 3)))
    if total_ms < 1000:
        return f"{total_ms}ms" if total_ms else "0s"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole_s, ms = divmod(rest_ms, 1000)
    text = f"{whole_s}.{ms:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def rejection(decision: Decision) -> LimitExceeded:
    """The error for a rejected decision, worded as OpenAI words it."""
    assert decision.blocked is not None, "only a rejected decision has a blocked bucket"
    limit, quota = decision.blocked.limit, decision.blocked.quota
    where = f"{limit.kind} per {_period_name(limit)} ({limit.scope.replace(':', ' ', 1)})"
    if not math.isfinite(decision.retry_after_s):
        message = (
            f"Request too large for {where}: Limit {quota.limit}, Requested {limit.cost}. "
            f"The input or output tokens must be reduced in order to run successfully."
        )
        return LimitExceeded(message, retry_after_s=None, decision=decision)
    message = (
        f"Rate limit reached for {where}: Limit {quota.limit}, Used {quota.limit - quota.remaining}, "
        f"Requested {limit.cost}. Please try again in {format_duration(decision.retry_after_s)}."
    )
    return LimitExceeded(message, retry_after_s=decision.retry_after_s, decision=decision)


def concurrency_exceeded(scope: str, max_concurrent: int) -> LimitExceeded:
    message = (
        f"Too many concurrent requests ({scope.replace(':', ' ', 1)}): Limit {max_concurrent}. "
        f"Please try again in {format_duration(CONCURRENCY_RETRY_S)}."
    )
    return LimitExceeded(message, retry_after_s=CONCURRENCY_RETRY_S)


def _period_name(limit: Limit) -> str:
    return PERIOD_NAMES.get(limit.rate.period_s) or format_duration(limit.rate.period_s)
