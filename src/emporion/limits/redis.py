"""The shared limiter: buckets in Redis, decided atomically by Lua, with an in-process fallback.

``RedisLimiter(url, replicas=N, fallback=MemoryLimiter())``. Every replica that points at the
same Redis (and ``prefix``) shares the same buckets exactly:

- ``check``: one Lua script (run with EVALSHA; redis-py loads it again on NOSCRIPT) reads every
  bucket of the request, decides with the formulas of ``limits/gcra.py`` at the Redis server's
  ``TIME`` (replica clocks do not matter) and charges all of them or none. It returns that instant
  and the TATs it read, and ``decide`` recomputes the same verdicts here to build the ``Decision``.
  A bucket key expires (PX) a second after its TAT, so idle buckets vanish.
- ``concurrency``: a sorted set per scope whose members are slots scored by their lease expiry
  (``lease_s``, 10 minutes): a second script drops expired leases (ZREMRANGEBYSCORE), counts
  (ZCARD) and adds (ZADD); leaving the block removes the slot. A crashed replica's slots lapse
  with their leases.

Fallback: on any Redis error, refused connection or timeout (``timeout_s``, 0.25 s, for connect
and for each command; no client-side retries), the request goes to ``fallback``, a
``MemoryLimiter``, with every rate and concurrency limit divided by ``replicas`` (at least 1 each):
the replicas together then admit about what the shared limit would. A warning is logged once per
outage; Redis is tried again ``retry_interval_s`` (1 s) after the last failure, and once it
answers it is used again (logged too). Redis errors never reach the caller. During an outage a
request costing more than a replica's share is rejected as too large.
Keys of one request are not hash-tagged: on Redis Cluster give all of them one hash slot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from emporion.limits import Decision, Kind, Limit, decide
from emporion.limits.gcra import TOLERANCE_S
from emporion.limits.headers import concurrency_exceeded
from emporion.limits.memory import MemoryLimiter

log = logging.getLogger(__name__)
REDIS_ERRORS = (RedisError, OSError)  # OSError covers refused connections and asyncio timeouts

_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""
_SET_TAT = "redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)"

# KEYS: the buckets. ARGV: amount, period_s, cost for each bucket, then TOLERANCE_S.
# Returns {admitted (1 or 0), now, the TAT read for each bucket ('' when absent)}.
CHECK_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
local tolerance = tonumber(ARGV[#ARGV])
local before, charged, admitted = {{}}, {{}}, 1
for i, key in ipairs(KEYS) do
  local amount, period, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local stored = redis.call('GET', key)
  before[i] = stored or ''
  local tat = charged[key] or tonumber(stored) or now
  local new = math.max(tat, now) + cost * (period / amount)
  if new - now <= period + tolerance then charged[key] = new else admitted = 0 end
end
if admitted == 1 then
  for key, tat in pairs(charged) do {_SET_TAT} end
end
return {{admitted, string.format('%.17g', now), unpack(before)}}
"""

# KEYS: the buckets. ARGV: amount, period_s, units for each bucket.
REFUND_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
for i, key in ipairs(KEYS) do
  local amount, period, units = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = tonumber(redis.call('GET', key))
  if tat and tat > now then
    tat = math.max(tat - units * (period / amount), now)
    {_SET_TAT}
  end
end
return 1
"""

# KEYS[1]: the scope's sorted set. ARGV: max_concurrent, lease_ms, slot id. Returns 1 or 0.
ACQUIRE_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        replicas: int = 1,
        fallback: MemoryLimiter | None = None,
        prefix: str = "emporion:limits:",
        timeout_s: float = 0.25,
        retry_interval_s: float = 1.0,
        lease_s: float = 600.0,
    ) -> None:
        self.where = _where(url)  # for logs: no password
        self.replicas = max(1, replicas)
        self.fallback = fallback if fallback is not None else MemoryLimiter()
        self.prefix = prefix
        self.retry_interval_s = retry_interval_s
        self.lease_ms = max(1, round(lease_s * 1000))
        self.client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._check = self.client.register_script(CHECK_LUA)
        self._refund = self.client.register_script(REFUND_LUA)
        self._acquire = self.client.register_script(ACQUIRE_LUA)
        self.outage = False  # True from the first failure until Redis answers again
        self._retry_at = 0.0

    async def check(self, limits: Sequence[Limit]) -> Decision:
        if not limits:
            return Decision(True)
        if self._reachable():
            args: list[str | int] = [n for limit in limits for n in _bucket_args(limit, limit.cost)]
            try:
                reply = await self._check(keys=self._keys(limits), args=[*args, repr(TOLERANCE_S)])
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                self._answered()
                now, stored = float(reply[1]), reply[2:]
                tats = {limit.key: float(raw) for limit, raw in zip(limits, stored, strict=True) if raw}
                return decide(limits, tats, now)[0]
        return await self.fallback.check(self._shares(limits))

    async def refund(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        given = [(limit, units.get(limit.kind, 0)) for limit in limits if units.get(limit.kind, 0) > 0]
        if not given:
            return
        if self._reachable():
            args = [n for limit, n_units in given for n in _bucket_args(limit, n_units)]
            try:
                await self._refund(keys=self._keys([limit for limit, _ in given]), args=args)
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                self._answered()
                return
        await self.fallback.refund(self._shares(limits), units)

    @asynccontextmanager
    async def concurrency(self, scope: str, max_concurrent: int) -> AsyncIterator[None]:
        key, slot = f"{self.prefix}concurrency:{scope}", secrets.token_hex(12)
        acquired: bool | None = None
        if self._reachable():
            try:
                acquired = bool(await self._acquire(keys=[key], args=[max_concurrent, self.lease_ms, slot]))
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                self._answered()
        if acquired is None:
            async with self.fallback.concurrency(scope, max(1, max_concurrent // self.replicas)):
                yield
            return
        if not acquired:
            raise concurrency_exceeded(scope, max_concurrent)
        try:
            yield
        finally:
            await asyncio.shield(self._release(key, slot))

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.fallback.aclose()

    async def _release(self, key: str, slot: str) -> None:
        try:
            await self.client.zrem(key, slot)
        except REDIS_ERRORS as exc:  # the slot's lease runs out instead
            self._failed(exc)

    def _keys(self, limits: Sequence[Limit]) -> list[str]:
        return [f"{self.prefix}{limit.key}" for limit in limits]

    def _shares(self, limits: Sequence[Limit]) -> list[Limit]:
        return [replace(limit, rate=limit.rate.share(self.replicas)) for limit in limits]

    def _reachable(self) -> bool:
        return not self.outage or time.monotonic() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_interval_s
        if not self.outage:
            self.outage = True
            log.warning(
                "Redis at %s failed (%s: %s); rate limits fall back to this replica's share "
                "(each limit / %d replicas) until it answers again",
                self.where, type(exc).__name__, exc, self.replicas,
            )  # fmt: skip

    def _answered(self) -> None:
        if self.outage:
            self.outage = False
            log.warning("Redis at %s answers again; rate limits are shared again", self.where)


def _bucket_args(limit: Limit, units: int) -> tuple[int, str, int]:
    return limit.rate.amount, repr(float(limit.rate.period_s)), units


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
