"""Per-deployment health: a circuit breaker, and measured latency, throughput and error rate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
EWMA_ALPHA = 0.2  # weight of the newest sample in the moving averages


@dataclass
class Breaker:
    """After ``threshold`` consecutive failures the deployment leaves rotation for ``cooldown_s``;
    then exactly one probe request is let through, and its outcome closes or reopens the breaker."""

    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def state(self, now: float | None = None) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "half_open" if now - self.opened_at >= self.cooldown_s else "open"

    def available(self, now: float | None = None) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self.probing)

    def begin(self, now: float | None = None) -> None:
        if self.state(now) == "half_open":
            self.probing = True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failed(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at, self.probing = now, False

    def released(self) -> None:
        """The attempt ended without a verdict (the client left): let another probe through."""
        self.probing = False


@dataclass
class Health:
    breaker: Breaker = field(default_factory=Breaker)
    requests: int = 0
    errors: int = 0
    ttft_s: float | None = None  # moving average of time to first token
    tokens_per_s: float | None = None  # moving average of output speed
    error_rate: float = 0.0  # moving average of failures (0..1)

    def record_success(self, ttft_s: float, output_tokens: int, total_s: float) -> None:
        self.requests += 1
        self.breaker.succeeded()
        self.error_rate = _ewma(self.error_rate, 0.0)
        self.ttft_s = ttft_s if self.ttft_s is None else _ewma(self.ttft_s, ttft_s)
        generating_s = total_s - ttft_s
        if output_tokens > 1 and generating_s > 0:
            speed = output_tokens / generating_s
            self.tokens_per_s = speed if self.tokens_per_s is None else _ewma(self.tokens_per_s, speed)

    def record_failure(self) -> None:
        self.requests += 1
        self.errors += 1
        self.breaker.failed()
        self.error_rate = _ewma(self.error_rate, 1.0)

    def snapshot(self) -> dict[str, object]:
        return {
            "breaker": self.breaker.state(),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
        }


def _ewma(old: float, new: float) -> float:
    return (1 - EWMA_ALPHA) * old + EWMA_ALPHA * new


class HealthBook(dict[str, Health]):
    """Health by deployment key, made on first sight with the configured breaker."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.cooldown_s = cooldown_s

    def __missing__(self, key: str) -> Health:
        health = Health(breaker=Breaker(threshold=self.threshold, cooldown_s=self.cooldown_s))
        self[key] = health
        return health
