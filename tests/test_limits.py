"""Rate limits: GCRA properties, all-or-nothing checks, Redis sharing, fallback and concurrency."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emporion.errors import RateLimited
from emporion.limits import (
    Decision,
    Limit,
    LimitExceeded,
    Quota,
    Rate,
    admit,
    decide,
    ratelimit_headers,
)
from emporion.limits.gcra import TOLERANCE_S, gcra, refund
from emporion.limits.headers import format_duration
from emporion.limits.memory import MemoryLimiter
from emporion.limits.redis import RedisLimiter, Unavailable

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
FLOAT_SLACK_S = 1e-4  # float rounding of TATs near epoch-sized clocks, over a few dozen steps


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need Redis on {REDIS_HOST}:{REDIS_PORT} ({exc})")
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    return f"test-limits:{uuid.uuid4().hex}:"


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[MemoryLimiter | RedisLimiter]:
    if request.param == "memory":
        made: MemoryLimiter | RedisLimiter = MemoryLimiter(Clock())
    else:
        made = RedisLimiter(request.getfixturevalue("redis_url"), prefix=prefix)
    yield made
    await made.aclose()


# --- gcra: properties -------------------------------------------------------------------------

rates = st.builds(Rate, amount=st.integers(1, 50), period_s=st.floats(0.5, 120, allow_nan=False, allow_infinity=False))
starts = st.floats(0, 2e9, allow_nan=False)  # from a monotonic clock near 0 to Redis TIME (epoch)


def steps(max_cost: int) -> st.SearchStrategy[list[tuple[float, int]]]:
    return st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, max_cost)), max_size=60)


def run(rate: Rate, start: float, script: list[tuple[float, int]]) -> tuple[float | None, float, list]:
    """Play (advance, cost) steps against one bucket; returns its TAT, the clock and admissions."""
    tat, now, admitted = None, start, []
    for advance_s, cost in script:
        now += advance_s * rate.period_s / 10
        verdict = gcra(tat, now, rate, cost)
        if verdict.allowed:
            admitted.append((now, cost))
        else:
            assert verdict.tat == tat, "a rejected call changed the bucket"
        tat = verdict.tat
    return tat, now, admitted


@settings(max_examples=300, deadline=None)
@given(rate=rates, start=starts, data=st.data())
def test_gcra_admits_at_most_a_burst_plus_the_refill_in_any_window(rate: Rate, start: float, data) -> None:
    """In any window [a, b], at most amount + (b - a) * amount / period_s units are admitted."""
    _, _, admitted = run(rate, start, data.draw(steps(rate.amount + 2)))
    for i, (first_s, _) in enumerate(admitted):
        units = 0
        for last_s, cost in admitted[i:]:
            units += cost
            allowance = rate.amount + (last_s - first_s + TOLERANCE_S + FLOAT_SLACK_S) / rate.interval_s
            assert units <= allowance, (units, allowance, first_s, last_s)


@settings(max_examples=300, deadline=None)
@given(rate=rates, start=starts, data=st.data())
def test_gcra_retry_after_is_exact(rate: Rate, start: float, data) -> None:
    tat, now, _ = run(rate, start, data.draw(steps(rate.amount)))
    cost = data.draw(st.integers(1, rate.amount))
    verdict = gcra(tat, now, rate, cost)
    if verdict.allowed:
        return
    assert verdict.tat == tat
    assert 0 < verdict.retry_after_s <= rate.period_s + 2 * FLOAT_SLACK_S
    assert gcra(tat, now + verdict.retry_after_s, rate, cost).allowed
    assert not gcra(tat, now + verdict.retry_after_s - 1e-5, rate, cost).allowed


@settings(max_examples=300, deadline=None)
@given(rate=rates, start=starts, data=st.data())
def test_gcra_remaining_is_exactly_what_is_still_admitted(rate: Rate, start: float, data) -> None:
    tat, now, _ = run(rate, start, data.draw(steps(rate.amount)))
    remaining = gcra(tat, now, rate, 0).remaining
    assert gcra(tat, now, rate, remaining).allowed
    if remaining < rate.amount:
        assert not gcra(tat, now, rate, remaining + 1).allowed


@settings(max_examples=200, deadline=None)
@given(rate=rates, start=starts, data=st.data())
def test_gcra_refund_gives_units_back_but_never_past_a_full_bucket(rate: Rate, start: float, data) -> None:
    tat, now, _ = run(rate, start, data.draw(steps(rate.amount)))
    units = data.draw(st.integers(0, 2 * rate.amount))
    before = gcra(tat, now, rate, 0).remaining
    refunded = None if tat is None else refund(tat, now, rate, units)
    assert refunded is None or refunded >= min(tat, now)  # type: ignore[type-var]
    after = gcra(refunded, now, rate, 0).remaining
    assert min(rate.amount, before + units) - 1 <= after <= min(rate.amount, before + units)


def test_gcra_allows_a_full_period_at_once_and_refills_at_the_rate() -> None:
    rate, now = Rate(60), 100.0
    tat = None
    for _ in range(60):
        verdict = gcra(tat, now, rate, 1)
        assert verdict.allowed
        tat = verdict.tat
    rejected = gcra(tat, now, rate, 1)
    assert not rejected.allowed and rejected.retry_after_s == 1.0 and rejected.remaining == 0
    assert gcra(tat, now + 1.0, rate, 1).allowed
    assert not gcra(tat, now + 1.0, rate, 2).allowed


def test_gcra_never_admits_a_cost_above_the_amount() -> None:
    verdict = gcra(None, 0.0, Rate(100), 101)
    assert not verdict.allowed and verdict.retry_after_s == math.inf and verdict.tat is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 3), st.integers(0, 12)), max_size=40))
def test_memory_limiter_charges_every_bucket_or_none(requests: list[tuple[float, int, int]]) -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    for advance_s, requests_cost, tokens_cost in requests:
        clock.advance(advance_s)
        limits = [
            Limit("key:k", "requests", Rate(3, 10), requests_cost),
            Limit("org:o", "tokens", Rate(20, 10), tokens_cost),
            Limit("org:o", "requests", Rate(5, 10), requests_cost),
        ]
        before = live(limiter.tats, clock.now)
        expected, charged = decide(limits, before, clock.now)
        decision = limiter.check_now(limits)
        assert decision == expected
        if decision.allowed:
            assert live(limiter.tats, clock.now) == {**before, **live(charged, clock.now)}
        else:
            assert live(limiter.tats, clock.now) == before and decision.retry_after_s > 0


def live(tats: dict[str, float], now: float) -> dict[str, float]:
    """The buckets that are not full (a full bucket decides exactly as an absent one)."""
    return {key: tat for key, tat in tats.items() if tat > now}


# --- both limiters ----------------------------------------------------------------------------


async def test_a_request_rejected_by_one_bucket_consumes_nothing_from_the_others(limiter) -> None:
    requests = Limit("key:k1", "requests", Rate(5), 1)
    tokens = Limit("org:o1", "tokens", Rate(100), 30)
    for _ in range(3):
        assert (await limiter.check([requests, tokens])).allowed
    rejected = await limiter.check([requests, tokens])  # 90 tokens used: 30 more do not fit
    assert not rejected.allowed and rejected.blocked.limit == tokens
    assert rejected.quotas["requests"].remaining == 2 and rejected.quotas["tokens"].remaining == 10
    assert [(await limiter.check([requests])).allowed for _ in range(3)] == [True, True, False]


async def test_admit_raises_rate_limited_with_openai_headers(limiter) -> None:
    limit = Limit("org:org_x", "requests", Rate(2), 1)
    await admit(limiter, [limit])
    await admit(limiter, [limit])
    with pytest.raises(RateLimited) as caught:
        await admit(limiter, [limit])
    error = caught.value
    assert isinstance(error, LimitExceeded) and error.status == 429
    assert error.envelope()["error"]["type"] == "rate_limit_exceeded"
    assert error.message.startswith("Rate limit reached for requests per minute (org org_x): Limit 2, Used 2")
    assert 29 <= error.retry_after_s <= 30
    headers = error.headers()
    assert headers["retry-after"] == "30" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "2" and "x-ratelimit-limit-tokens" not in headers


async def test_refund_moves_tokens_back_but_not_past_a_full_bucket(limiter) -> None:
    tokens = Limit("key:k2", "tokens", Rate(100, 3600), 80)
    assert (await limiter.check([tokens])).quotas["tokens"].remaining == 20
    await limiter.refund([tokens], {"tokens": 50})
    assert (await limiter.check([replace(tokens, cost=0)])).quotas["tokens"].remaining == 70
    await limiter.refund([tokens], {"tokens": 1000, "requests": 5})
    assert (await limiter.check([replace(tokens, cost=0)])).quotas["tokens"].remaining == 100


async def test_memory_and_redis_limiters_agree_on_the_same_script(redis_url: str, prefix: str) -> None:
    memory, shared = MemoryLimiter(Clock()), RedisLimiter(redis_url, prefix=prefix)
    script = [(1, 300), (1, 250), (2, 400), (1, 100), (1, 0), (3, 50), (1, 1), (4, 20), (1, 500), (1, 10)]
    try:
        for requests_cost, tokens_cost in script:  # per hour: refill in this burst stays below a unit
            limits = [
                Limit("key:k", "requests", Rate(10, 3600), requests_cost),
                Limit("org:o", "tokens", Rate(1000, 3600), tokens_cost),
                Limit("tier:free:o", "requests", Rate(8, 3600), requests_cost),
            ]
            expected, got = await memory.check(limits), await shared.check(limits)
            assert got.allowed == expected.allowed
            assert {k: q.remaining for k, q in got.quotas.items()} == {k: q.remaining for k, q in expected.quotas.items()}
            assert got.retry_after_s == pytest.approx(expected.retry_after_s, abs=1.0)
            assert (got.blocked and got.blocked.limit) == (expected.blocked and expected.blocked.limit)
    finally:
        await memory.aclose()
        await shared.aclose()


# --- Redis: replicas, outage ------------------------------------------------------------------

REPLICA = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from emporion.limits import Limit, Rate
    from emporion.limits.redis import RedisLimiter

    async def main(url, prefix, start_at, duration_s):
        limiter = RedisLimiter(url, prefix=prefix, replicas=2)
        limit = [Limit("org:hammered", "requests", Rate(600), 1)]
        admitted, times, failures = 0, [], 0

        async def hammer():
            nonlocal admitted, failures
            while time.time() < start_at + duration_s:
                decision = await limiter.check(limit)
                if decision.allowed:
                    admitted += 1
                    times.append(time.time())
            failures += limiter.outage

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(hammer() for _ in range(16)))
        await limiter.aclose()
        report = {"admitted": admitted, "first": min(times), "last": max(times), "outages": failures}
        print(json.dumps(report))

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    """
)


def test_two_replica_processes_share_one_bucket_exactly(redis_url: str, prefix: str) -> None:
    start_at, duration_s, rate = time.time() + 1.0, 2.0, Rate(600)
    command = [sys.executable, "-c", REPLICA, redis_url, prefix, str(start_at), str(duration_s)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    replicas = [subprocess.Popen(command, **pipes) for _ in range(2)]
    reports = []
    for replica in replicas:
        out, err = replica.communicate(timeout=15)
        assert replica.returncode == 0, err
        reports.append(json.loads(out))
    assert all(report["admitted"] > 0 and report["outages"] == 0 for report in reports)
    total = sum(report["admitted"] for report in reports)
    window_s = max(r["last"] for r in reports) - min(r["first"] for r in reports) + 0.05
    assert rate.amount <= total <= rate.amount * 1.01 + window_s / rate.interval_s, (total, window_s)


async def test_redis_down_falls_back_to_each_replicas_share_and_warns_once(caplog) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", replicas=4, retry_interval_s=0.02)
    limit = Limit("org:o", "requests", Rate(20), 1)
    outcomes = []
    with caplog.at_level(logging.WARNING, logger="emporion.limits.redis"):
        for _ in range(10):
            try:
                outcomes.append((await admit(limiter, [limit])).quotas["requests"].limit)
            except RateLimited:
                outcomes.append("429")
            await asyncio.sleep(0.01)  # past retry_interval_s now and then: Redis is tried again
        await limiter.refund([limit], {"requests": 1})
        async with limiter.concurrency("key:k", 8), limiter.concurrency("key:k", 8):
            with pytest.raises(RateLimited):
                async with limiter.concurrency("key:k", 8):
                    pass
        tokens = Limit("org:o", "tokens", Rate(400), 50)  # a share of 100
        async with limiter.hold([tokens], [("key:h", 4)]) as held:  # one slot of 4 / 4
            assert held.decision.quotas["tokens"] == Quota(100, 50, held.decision.quotas["tokens"].reset_s)
            with pytest.raises(RateLimited):
                async with limiter.hold([], [("key:h", 4)]):
                    pass
            held.used["tokens"] = 0
        async with limiter.hold([replace(tokens, cost=100)], [("key:h", 4)]):  # all given back, and the slot
            pass
    await limiter.aclose()
    assert outcomes == [5] * 5 + ["429"] * 5  # 20 / 4 replicas
    warnings = [r for r in caplog.records if r.name == "emporion.limits.redis"]
    assert len(warnings) == 1 and "fall back" in warnings[0].getMessage() and limiter.outage


class RedisRelay:
    """A TCP relay to the real Redis that a test cuts and restores: an outage on a real socket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(REDIS_HOST, REDIS_PORT)
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_redis_is_used_again_when_it_comes_back(redis_url: str, prefix: str, caplog) -> None:
    relay = RedisRelay()
    await relay.start()
    url = f"redis://127.0.0.1:{relay.port}/0"
    limiter = RedisLimiter(url, prefix=prefix, replicas=2, retry_interval_s=0.05)
    limit = Limit("org:o", "requests", Rate(10), 1)
    direct = redis.asyncio.Redis.from_url(redis_url)
    with caplog.at_level(logging.WARNING, logger="emporion.limits.redis"):
        first = (await limiter.check([limit])).quotas["requests"]
        assert (first.limit, first.remaining) == (10, 9)
        await relay.stop()
        during = [await limiter.check([limit]) for _ in range(3)]
        assert limiter.outage and [d.quotas["requests"].limit for d in during] == [5, 5, 5]
        await relay.start()
        await asyncio.sleep(0.1)
        after = await limiter.check([limit])
    assert not limiter.outage and after.quotas["requests"].limit == 10
    assert after.quotas["requests"].remaining == 8  # the shared bucket, where the outage left it
    assert await direct.exists(f"{prefix}requests:org:o")
    messages = [r.getMessage() for r in caplog.records if r.name == "emporion.limits.redis"]
    assert len(messages) == 2 and "fall back" in messages[0] and "again" in messages[1]
    await limiter.aclose()
    await direct.aclose()
    await relay.stop()


# --- concurrency ------------------------------------------------------------------------------


async def test_concurrency_holds_at_most_n_slots_and_frees_them_on_error_and_cancel(limiter) -> None:
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(limiter.concurrency("key:c", 2))
        with pytest.raises(RateLimited, match=r"Too many concurrent requests \(key c\): Limit 2"):
            await stack.enter_async_context(limiter.concurrency("key:c", 2))
    with pytest.raises(ZeroDivisionError):
        async with limiter.concurrency("key:c", 1):
            1 / 0  # noqa: B018
    entered = asyncio.Event()

    async def hold() -> None:
        async with limiter.concurrency("key:c", 1):
            entered.set()
            await asyncio.sleep(60)

    holder = asyncio.create_task(hold())
    await entered.wait()
    with pytest.raises(RateLimited):
        async with limiter.concurrency("key:c", 1):
            pass
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    async with limiter.concurrency("key:c", 1):
        pass


async def test_hold_is_all_or_nothing_and_the_buckets_keep_what_was_used(limiter) -> None:
    requests, tokens = Limit("key:h", "requests", Rate(5, 3600), 1), Limit("org:h", "tokens", Rate(100, 3600), 40)

    async def remaining() -> tuple[int, int]:
        quotas = (await limiter.check([replace(requests, cost=0), replace(tokens, cost=0)])).quotas
        return quotas["requests"].remaining, quotas["tokens"].remaining

    async with limiter.hold([requests, tokens], [("key:h", 1)]) as held:
        assert held.decision.allowed and held.decision.quotas["tokens"].remaining == 60
        with pytest.raises(RateLimited, match=r"Too many concurrent requests \(key h\): Limit 1"):
            async with limiter.hold([requests, tokens], [("key:h", 1)]):
                pass
        assert await remaining() == (4, 60)  # the one turned away for its slot was charged nothing
        held.used["tokens"] = 10
    assert await remaining() == (4, 90)  # 30 of the 40 feared given back
    with pytest.raises(RateLimited, match="Request too large for tokens"):
        async with limiter.hold([requests, replace(tokens, cost=500)], [("key:h", 1)]):
            pass
    async with limiter.hold([requests, tokens], [("key:h", 1)]) as held:  # that took no slot either
        held.used["tokens"] = 70
    assert await remaining() == (3, 20)  # 30 more than feared taken
    with pytest.raises(ZeroDivisionError):
        async with limiter.hold([requests, replace(tokens, cost=20)], [("key:h", 1)]):
            1 / 0  # noqa: B018
    assert await remaining() == (2, 0)  # what it did not say it used stays charged: the estimate
    async with limiter.hold([], [("key:h", 1)]):  # and its slot is free
        pass


async def test_redis_slots_are_shared_and_a_dead_replicas_leases_expire(redis_url: str, prefix: str) -> None:
    crashed = RedisLimiter(redis_url, prefix=prefix, lease_s=0.3)
    alive = RedisLimiter(redis_url, prefix=prefix, lease_s=0.3)
    slot = crashed.concurrency("org:o", 1)
    await slot.__aenter__()  # never left: the replica died holding it
    with pytest.raises(RateLimited):
        async with alive.concurrency("org:o", 1):
            pass
    await asyncio.sleep(0.4)
    async with alive.concurrency("org:o", 1):
        pass
    await crashed.aclose()
    await alive.aclose()


# --- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (1, "1s"),
        (1.2, "1.2s"),
        (59.999, "59.999s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_report_the_tightest_bucket_of_each_kind_checked() -> None:
    limits = [
        Limit("key:k", "requests", Rate(60), 1),
        Limit("org:o", "requests", Rate(10), 1),
        Limit("org:o", "tokens", Rate(150_000), 16),
    ]
    decision, _ = decide(limits, {}, now=0.0)
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "7ms",  # 6.4ms, rounded up
    }
    requests_only, _ = decide(limits[:1], {}, now=0.0)
    assert set(ratelimit_headers(requests_only)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert ratelimit_headers(Decision(True)) == {}


async def test_the_rejection_message_reads_like_openais() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    limit = Limit("org:org_x", "requests", Rate(60), 1)
    for _ in range(60):
        await admit(limiter, [limit])
    clock.advance(0.3)
    with pytest.raises(LimitExceeded) as caught:
        await admit(limiter, [limit])
    assert caught.value.message == (
        "Rate limit reached for requests per minute (org org_x): Limit 60, Used 60, Requested 1. Please try again in 700ms."
    )
    assert caught.value.headers()["retry-after"] == "1"
    assert caught.value.headers()["retry-after-ms"] == "700"
    with pytest.raises(LimitExceeded) as too_large:
        await admit(limiter, [Limit("key:k", "tokens", Rate(1000), 1001)])
    assert too_large.value.message.startswith("Request too large for tokens per minute (key k): Limit 1000")
    assert "retry-after" not in too_large.value.headers()


def test_memory_limiter_forgets_full_buckets() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock, max_buckets=100, sweep_interval_s=3600)
    for n in range(100):
        limiter.check_now([Limit(f"key:{n}", "requests", Rate(1, 1.0), 1)])
    assert len(limiter.tats) == 100
    clock.advance(2.0)
    limiter.check_now([Limit("key:late", "requests", Rate(1, 1.0), 1)])  # 101 > max_buckets
    assert list(limiter.tats) == ["requests:key:late"]


# --- bursts: a busy pool or event loop is back-pressure, not an outage -------------------------

BURST = 300  # above redis-py's default pool of 100 connections, which once overflowed into fallback
HOURLY = Rate(60, 3600)  # 60 at once; at one a minute the refill during a burst is nil: exact counts


def degraded(*limiters: RedisLimiter) -> list[int | None]:
    return [getattr(limiter, "degraded_decisions", None) for limiter in limiters]


async def admitted_in_a_burst(limiters: list[RedisLimiter], limit: Limit, n: int = BURST) -> int:
    async def one(i: int) -> bool:
        try:
            await admit(limiters[i % len(limiters)], [limit])
        except LimitExceeded:
            return False
        return True

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def peak_in_a_burst(
    limiters: list[RedisLimiter], scope: str, most: int, n: int = BURST, how: str = "concurrency"
) -> tuple[int, int]:
    """``n`` requests at once through ``limiters`` into ``most`` slots, each holding its slot until
    every one has got in or been turned away: the most ever inside together, and how many got in.
    ``how``: by ``concurrency``, or by ``hold`` (the slot and a bucket that admits them all)."""
    inside = peak = entered = decided = 0
    everyone_decided = asyncio.Event()

    def one_decided() -> None:
        nonlocal decided
        decided += 1
        if decided == n:
            everyone_decided.set()

    async def one(i: int) -> None:
        nonlocal inside, peak, entered
        try:
            limiter = limiters[i % len(limiters)]
            slot = (scope, most)
            bucket = Limit(scope, "requests", Rate(10 * n, 3600), 1)
            async with limiter.concurrency(*slot) if how == "concurrency" else limiter.hold([bucket], [slot]):
                inside, entered = inside + 1, entered + 1
                peak = max(peak, inside)
                one_decided()
                try:
                    await asyncio.wait_for(everyone_decided.wait(), 10)
                finally:
                    inside -= 1
        except LimitExceeded:
            one_decided()

    await asyncio.gather(*(one(i) for i in range(n)))
    return peak, entered


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_burst_admits_exactly_the_limit(redis_url: str, prefix: str, replicas: int) -> None:
    """300 requests at once for 60 a period, through one replica or two in one process: 60."""
    limiters = [RedisLimiter(redis_url, prefix=prefix, replicas=replicas) for _ in range(replicas)]
    try:
        admitted = await admitted_in_a_burst(limiters, Limit("org:burst", "requests", HOURLY, 1))
        again = await admitted_in_a_burst(limiters, Limit("org:burst", "requests", HOURLY, 1))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert (admitted, again) == (60, 0)
    assert degraded(*limiters) == [0] * replicas and not any(limiter.outage for limiter in limiters)


@pytest.mark.parametrize("how", ["concurrency", "hold"])
@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_burst_never_holds_more_than_max_concurrent(redis_url: str, prefix: str, replicas: int, how: str) -> None:
    limiters = [RedisLimiter(redis_url, prefix=prefix, replicas=replicas) for _ in range(replicas)]
    try:
        peak, entered = await peak_in_a_burst(limiters, "org:burst", 6, how=how)
        async with AsyncExitStack() as stack:  # every slot was given back
            for i in range(6):
                await stack.enter_async_context(limiters[i % replicas].concurrency("org:burst", 6))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert (peak, entered) == (6, 6)
    assert degraded(*limiters) == [0] * replicas and not any(limiter.outage for limiter in limiters)


BURST_REPLICA = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from emporion.limits import Limit, Rate
    from emporion.limits.redis import RedisLimiter

    async def main(url, prefix, start_at, n):
        limiter = RedisLimiter(url, prefix=prefix, replicas=2)
        limit = [Limit("org:burst", "requests", Rate(60, 3600), 1)]
        await limiter.check([])  # loaded: the burst starts on time
        await asyncio.sleep(max(0.0, start_at - time.time()))
        decisions = await asyncio.gather(*(limiter.check(limit) for _ in range(n)))
        await limiter.aclose()
        report = {"admitted": sum(d.allowed for d in decisions), "outage": limiter.outage,
                  "degraded": getattr(limiter, "degraded_decisions", None)}
        print(json.dumps(report))

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
    """
)


def test_a_burst_through_two_replica_processes_admits_exactly_the_limit(redis_url: str, prefix: str) -> None:
    """250 requests at once in each of two processes, for 60 a period shared through Redis: 60."""
    command = [sys.executable, "-c", BURST_REPLICA, redis_url, prefix, str(time.time() + 1.5), "250"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    replicas = [subprocess.Popen(command, **pipes) for _ in range(2)]
    reports = []
    for replica in replicas:
        out, err = replica.communicate(timeout=30)
        assert replica.returncode == 0, err
        reports.append(json.loads(out))
    assert sum(report["admitted"] for report in reports) == 60, reports
    assert all(report["degraded"] == 0 and not report["outage"] for report in reports), reports


@pytest.mark.parametrize("hogging", ["once", "throughout"])
async def test_a_busy_event_loop_is_not_taken_for_a_redis_outage(redis_url: str, prefix: str, hogging: str) -> None:
    """The loop kept busy past the command timeout while Redis answered, by one long callback or by
    every turn of the loop taking longer than the timeout (on new connections, then on pooled ones):
    the answers are read, and the fallback admits nobody on top of what Redis charged."""
    limiter = RedisLimiter(redis_url, prefix=prefix, timeout_s=0.1)
    checked = asyncio.Event()

    async def hog() -> None:  # a handler hogging the loop, on purpose
        await asyncio.sleep(0.005)  # the checks are on the wire
        while True:
            time.sleep(0.3 if hogging == "once" else 0.15)  # noqa: ASYNC251
            if hogging == "once" or checked.is_set():
                return
            await asyncio.sleep(0)

    async def burst(limit: Limit) -> list[Decision]:
        try:
            return await asyncio.gather(*(limiter.check([limit]) for _ in range(30)))
        finally:
            checked.set()

    try:
        for round_ in range(2):
            checked.clear()
            limit = Limit(f"org:busy{round_}", "requests", Rate(10, 3600), 1)
            decisions, _ = await asyncio.gather(burst(limit), hog())
            assert sum(d.allowed for d in decisions) == 10
            assert limiter.fallback.tats == {}, "the fallback decided too"
            assert (await limiter.check([replace(limit, cost=0)])).quotas["requests"].remaining == 0
        assert degraded(limiter) == [0] and not limiter.outage
    finally:
        await limiter.aclose()


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A Redis of this test's own, to close or stop (SIGSTOP) without touching the shared one."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2).ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
                time.sleep(0.05)
        yield port, process
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("how", ["closed", "stopped"])
async def test_a_burst_while_redis_is_really_down_degrades_within_about_a_second(own_redis, how: str) -> None:
    """Port closed (refused at once) or process stopped (silent): a burst of 300 is decided by
    each replica's share within about a second, and every such decision is counted."""
    port, process = own_redis
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", replicas=2, retry_interval_s=0.2)
    limit = Limit("org:down", "requests", HOURLY, 1)
    assert (await limiter.check([limit])).allowed and limiter.degraded_decisions == 0  # connected
    if how == "closed":
        process.terminate()
        process.wait(timeout=10)
    else:
        process.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        decisions = await asyncio.gather(*(limiter.check([limit]) for _ in range(BURST)))
        elapsed = time.monotonic() - began
        assert elapsed < 1.2 and limiter.outage, elapsed
        assert sum(d.allowed for d in decisions) == 30 and limiter.degraded_decisions == BURST  # 60 / 2
        if how == "stopped":
            process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.25)  # past retry_interval_s: the next request tries Redis again
            back = await limiter.check([limit])
            assert not limiter.outage and back.quotas["requests"].limit == 60
            assert limiter.degraded_decisions == BURST
    finally:
        process.send_signal(signal.SIGCONT)
        await limiter.aclose()


async def test_a_replica_with_no_connection_free_in_time_turns_requests_away(redis_url: str, prefix: str) -> None:
    """Redis busy (a slow script of another client) and one connection: the requests that wait
    longer than busy_timeout_s for it get a 429, and none is decided by the fallback."""
    limiter = RedisLimiter(redis_url, prefix=prefix, max_connections=1, timeout_s=1.0, busy_timeout_s=0.1)
    direct = redis.asyncio.Redis.from_url(redis_url)
    busy = (  # 0.4 s of Redis's time
        "local t = redis.call('TIME'); local stop = t[1] + t[2] / 1e6 + 0.4\n"
        "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 >= stop\nreturn 1"
    )
    limit = Limit("org:crowded", "requests", Rate(60, 3600), 1)

    async def one() -> str:
        try:
            return "allowed" if (await limiter.check([limit])).allowed else "rejected"
        except LimitExceeded as exc:
            assert exc.status == 429 and exc.headers()["retry-after"] == "1"
            return "overloaded"

    try:
        slow = asyncio.ensure_future(direct.eval(busy, 0))
        await asyncio.sleep(0.05)  # the script is running: Redis answers nobody for 0.35 s more
        outcomes = await asyncio.gather(*(one() for _ in range(20)))
        await slow
    finally:
        await limiter.aclose()
        await direct.aclose()
    assert outcomes.count("allowed") >= 1 and outcomes.count("overloaded") >= 10, outcomes
    assert limiter.overloaded_rejections == outcomes.count("overloaded")
    assert limiter.degraded_decisions == 0 and not limiter.outage and limiter.fallback.tats == {}


async def test_debit_charges_used_units_past_a_full_bucket_on_both_limiters(redis_url: str, prefix: str) -> None:
    """A request without max_tokens pays its output after the fact: the debt makes later requests wait."""
    for limiter in (MemoryLimiter(), RedisLimiter(redis_url, prefix=prefix)):
        bucket = Limit(f"org:debit-{uuid.uuid4().hex}", "tokens", Rate(100), 10)
        assert (await limiter.check([bucket])).allowed
        await limiter.debit([bucket], {"tokens": 150})  # 160 used of 100
        blocked = await limiter.check([replace(bucket, cost=1)])
        assert not blocked.allowed and 30 < blocked.retry_after_s <= 37, blocked
        await limiter.aclose()


async def test_scripts_still_run_after_redis_forgets_them(redis_url: str, prefix: str) -> None:
    limiter = RedisLimiter(redis_url, prefix=prefix)
    direct = redis.asyncio.Redis.from_url(redis_url)
    limit = Limit("org:flush", "requests", Rate(10, 3600), 1)
    try:
        async with limiter.hold([limit], [("org:flush", 2)]):
            pass
        await direct.script_flush()  # a restarted Redis, or SCRIPT FLUSH: EVALSHA answers NOSCRIPT
        async with limiter.hold([limit], [("org:flush", 2)]) as held:
            assert held.decision.quotas["requests"].remaining == 8
        assert (await limiter.check([limit])).quotas["requests"].remaining == 7
        assert degraded(limiter) == [0] and not limiter.outage
    finally:
        await direct.aclose()
        await limiter.aclose()


async def test_an_abandoned_reply_is_never_read_as_the_next_commands() -> None:
    """A server that answers its first command late: the limiter gives up on it, and the next
    command gets its own reply, not the late one (which a reused connection would read first)."""
    pings = 0

    async def command(reader: asyncio.StreamReader) -> list[bytes]:  # RESP: *N, then N bulk strings
        count = int((await reader.readline())[1:] or 0)
        return [(await reader.readexactly(int((await reader.readline())[1:]) + 2))[:-2] for _ in range(count)]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        while args := await command(reader):
            if args[0].upper() == b"HELLO":  # the handshake of a new connection
                reply = b"%1\r\n+proto\r\n:3\r\n"
            elif args[0].upper() == b"PING":
                pings += 1
                if pings == 1:
                    await asyncio.sleep(0.5)
                reply = b":%d\r\n" % pings
            else:
                reply = b"+OK\r\n"
            try:
                writer.write(reply)
                await writer.drain()
            except OSError:
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", timeout_s=0.1, busy_timeout_s=0.2, retry_interval_s=0)
    try:
        with pytest.raises(Unavailable):
            await limiter._call(lambda: limiter._command("PING"))
        await asyncio.sleep(0.6)  # the late reply has been sent by now
        assert await limiter._call(lambda: limiter._command("PING")) == 2  # the second command's own
    finally:
        await limiter.aclose()
        server.close()
