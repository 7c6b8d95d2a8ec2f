"""The shared limiter: buckets in Redis, decided atomically by Lua, with an in-process fallback.

``RedisLimiter(url, replicas=N, fallback=MemoryLimiter())``. Every replica that points at the
same Redis (and ``prefix``) shares the same buckets exactly:

- ``check``: one Lua script (run with EVALSHA, sent whole with EVAL on NOSCRIPT) reads every
  bucket of the request, decides with the formulas of ``limits/gcra.py`` at the Redis server's
  ``TIME`` (replica clocks do not matter) and charges all of them or none. It returns that instant
  and the TATs it read, and ``decide`` recomputes the same verdicts here to build the ``Decision``.
  A bucket key expires (PX) a second after its TAT, so idle buckets vanish.
- ``concurrency``: a sorted set per scope whose members are slots scored by their lease expiry
  (``lease_s``, 10 minutes): a second script drops expired leases (ZREMRANGEBYSCORE), counts
  (ZCARD) and adds (ZADD); leaving the block removes the slot. A crashed replica's slots lapse
  with their leases.
- ``hold`` (the request path's): both in one script (``ENTER_LUA``), all or nothing, and on
  leaving one more (``LEAVE_LUA``) that removes the slots and corrects the buckets.

Bursts are back-pressure, not outages. At most ``max_connections`` (64) commands are on the wire
at once, each on a connection of its own (the scripts' connections are the limiter's, ``_command``;
other commands go through a ``BlockingConnectionPool`` of that size, which therefore never runs
dry); the rest of a burst waits its turn, up to ``busy_timeout_s`` (5 s), and a request
still waiting then is turned away with a 429 (``overloaded_rejections`` counts them) rather than
decided anywhere but in Redis. The wait is not part of any timeout. Redis counts as silent, and a
command (with its connect, if its connection is new) is abandoned, only when no reply at all, to
it or to any other command or handshake on any connection, has come for ``timeout_s`` (0.5 s), and
none has still after a ``GRACE_S`` and ``LOOKS`` more turns of the event loop: a loop kept busy
past the deadline (one long callback, or every turn longer than the timeout) may hold replies it
has not read yet, and reads them in those turns. While Redis answers others a slow answer is
waited for, up to ``busy_timeout_s``. So hundreds of requests on one loop, however slow the loop,
are all decided in Redis, while a Redis whose port is closed (refused at once) or whose process
is stopped (silent) is found out within about ``timeout_s``.
No client-side retries: a command that timed out may have been charged already.

Degraded mode: on such a failure (refused or reset connection, connect or answer timeout, any
error Redis answers with), the request goes to ``fallback``, a ``MemoryLimiter``, with every rate
and concurrency limit divided by ``replicas`` (at least 1 each): the replicas together then admit
about what the shared limit would. A warning is logged once per outage; requests waiting for a
connection when it begins go to the fallback at once; Redis is tried again, by one request at a
time, ``retry_interval_s`` (1 s) after the last failure, and once it answers it is used again
(logged too, with how many decisions the fallback made). ``degraded_decisions`` counts every
check and concurrency slot decided by the fallback. Redis errors never reach the caller. During
an outage a request costing more than a replica's share is rejected as too large.
Keys of one request are not hash-tagged: on Redis Cluster give all of them one hash slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisError, ResponseError

from emporion.limits import Decision, Held, Kind, Limit, Slot, decide, hold_in_steps
from emporion.limits.gcra import TOLERANCE_S
from emporion.limits.headers import CONCURRENCY_RETRY_S, LimitExceeded, concurrency_exceeded, format_duration, rejection
from emporion.limits.memory import MemoryLimiter

log = logging.getLogger(__name__)
REDIS_ERRORS = (RedisError, OSError)  # OSError covers refused connections and asyncio timeouts
GRACE_S = 0.05  # after a deadline, once the loop runs again: time to read an answer already there
LOOKS = 3  # and turns of the loop after it, each one looking at the sockets, before Redis is "silent"

_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""
_SET_TAT = "redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)"


def _decide(buckets: str, args_before: int) -> str:
    """Lua deciding the first ``buckets`` KEYS with the formulas of ``limits/gcra.py`` (amount,
    period_s and cost of each in ARGV, after ``args_before`` others), charging nothing yet: sets
    ``admitted``, ``charged`` (the new TAT of each bucket) and ``before`` (the TATs read)."""
    a = args_before
    return f"""
local before, charged, admitted = {{}}, {{}}, 1
for i = 1, {buckets} do
  local key = KEYS[i]
  local amount, period, cost = tonumber(ARGV[{a}+3*i-2]), tonumber(ARGV[{a}+3*i-1]), tonumber(ARGV[{a}+3*i])
  local stored = redis.call('GET', key)
  before[i] = stored or ''
  local tat = charged[key] or tonumber(stored) or now
  local new = math.max(tat, now) + cost * (period / amount)
  if new - now <= period + tolerance then charged[key] = new else admitted = 0 end
end"""


# KEYS: the buckets. ARGV: amount, period_s, cost for each bucket, then TOLERANCE_S.
# Returns {admitted (1 or 0), now, the TAT read for each bucket ('' when absent)}.
CHECK_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
local tolerance = tonumber(ARGV[#ARGV])
{_decide(buckets="#KEYS", args_before=0)}
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

# KEYS: the buckets. ARGV: amount, period_s, units for each bucket. Charges past a full bucket.
DEBIT_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
for i, key in ipairs(KEYS) do
  local amount, period, units = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now) + units * (period / amount)
  {_SET_TAT}
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


# ``hold``'s way in, one round trip: CHECK_LUA's decision and ACQUIRE_LUA's for every slot, all or
# nothing. KEYS: the n buckets, then a sorted set per slot. ARGV: n, TOLERANCE_S, lease_ms, then
# amount, period_s, cost for each bucket, then max_concurrent, slot id for each slot.
# Returns {admitted (1 or 0), now, the number of the first full slot (0: none), the TATs read}.
ENTER_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
local n, tolerance, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local full = 0
{_decide(buckets="n", args_before=3)}
local now_ms = math.floor(now * 1000)
if admitted == 1 then
  for j = n + 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[j]) >= tonumber(ARGV[3*n + 2*(j-n) + 2]) then full = j - n break end
  end
end
if admitted == 1 and full == 0 then
  for key, tat in pairs(charged) do {_SET_TAT} end
  for j = n + 1, #KEYS do
    redis.call('ZADD', KEYS[j], now_ms + lease_ms, ARGV[3*n + 2*(j-n) + 3])
    redis.call('PEXPIRE', KEYS[j], lease_ms)
  end
end
return {{admitted, string.format('%.17g', now), full, unpack(before)}}
"""

# ``hold``'s way out, one round trip: the slots freed, then each bucket corrected (REFUND_LUA's
# way for a negative number of units, DEBIT_LUA's for a positive one). KEYS: a sorted set per
# slot, then the buckets. ARGV: the number of slots, their ids, then amount, period_s, units for
# each bucket.
LEAVE_LUA = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
{_NOW}
local m = tonumber(ARGV[1])
for j = 1, m do redis.call('ZREM', KEYS[j], ARGV[j + 1]) end
for i = m + 1, #KEYS do
  local key, at = KEYS[i], m + 1 + 3 * (i - m - 1)
  local amount, period, units = tonumber(ARGV[at+1]), tonumber(ARGV[at+2]), tonumber(ARGV[at+3])
  local stored = tonumber(redis.call('GET', key))
  if units > 0 then
    local tat = math.max(stored or now, now) + units * (period / amount)
    {_SET_TAT}
  elseif stored and stored > now then
    local tat = math.max(stored + units * (period / amount), now)
    {_SET_TAT}
  end
end
return 1
"""


class Unavailable(Exception):
    """Redis is not to be asked now (an outage, or it just failed): decide with the fallback."""


class Overloaded(Exception):
    """No connection came free within ``busy_timeout_s``: too many requests for this replica."""


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        replicas: int = 1,
        fallback: MemoryLimiter | None = None,
        prefix: str = "emporion:limits:",
        timeout_s: float = 0.5,
        retry_interval_s: float = 1.0,
        lease_s: float = 600.0,
        max_connections: int = 64,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.where = _where(url)  # for logs: no password
        self.replicas = max(1, replicas)
        self.fallback = fallback if fallback is not None else MemoryLimiter()
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.busy_timeout_s = busy_timeout_s
        self._answer_cap_s = max(timeout_s, busy_timeout_s)  # for an answer while Redis answers others
        self.retry_interval_s = retry_interval_s
        self.lease_ms = max(1, round(lease_s * 1000))
        # Our own deadlines (``_answer``) govern; the socket timeouts are only a backstop.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=2 * self._answer_cap_s,
            socket_connect_timeout=2 * self._answer_cap_s,
        )
        pool.connection_class = _listening(pool.connection_class, self._heard)  # the URL's class, listened to
        self.client = Redis.from_pool(pool)
        self._idle: list[AbstractConnection] = []  # the scripts' connections (``_command``), free now
        self._check = _Lua(CHECK_LUA, self._command)
        self._refund = _Lua(REFUND_LUA, self._command)
        self._debit = _Lua(DEBIT_LUA, self._command)
        self._acquire = _Lua(ACQUIRE_LUA, self._command)
        self._enter = _Lua(ENTER_LUA, self._command)
        self._leave = _Lua(LEAVE_LUA, self._command)
        self._wire = asyncio.Semaphore(max_connections)  # commands on the wire: one per connection
        self.outage = False  # True from the first failure until Redis answers again
        self.degraded_decisions = 0  # checks and concurrency slots decided by the fallback
        self.overloaded_rejections = 0  # requests turned away: no connection came free in time
        self._retry_at = 0.0
        self._probing = False  # during an outage: one request at a time tries Redis again
        self._heard_at = -float("inf")  # loop time of Redis's latest reply, on any connection
        self._outage_decisions = 0  # degraded_decisions when the outage began

    async def check(self, limits: Sequence[Limit]) -> Decision:
        """``Limiter.check``; raises ``LimitExceeded`` (429) when this replica is overloaded."""
        if not limits:
            return Decision(True)
        args: list[str | int] = [n for limit in limits for n in _bucket_args(limit, limit.cost)]
        keys = self._keys(limits)
        try:
            reply = await self._call(lambda: self._check(keys=keys, args=[*args, repr(TOLERANCE_S)]))
        except Unavailable:
            self.degraded_decisions += 1
            return await self.fallback.check(self._shares(limits))
        except Overloaded:
            raise self._overloaded() from None
        now, stored = float(reply[1]), reply[2:]
        tats = {limit.key: float(raw) for limit, raw in zip(limits, stored, strict=True) if raw}
        return decide(limits, tats, now)[0]

    async def refund(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        await self._adjust("refund", self._refund, limits, units)

    async def debit(self, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        await self._adjust("debit", self._debit, limits, units)

    async def _adjust(self, what: str, script: Any, limits: Sequence[Limit], units: Mapping[Kind, int]) -> None:
        """Units moved in or out of buckets after the fact (``refund`` or ``debit``): by ``script``
        in Redis, by the fallback's method of that name in an outage; dropped when the pool is busy."""
        moved = [(limit, units.get(limit.kind, 0)) for limit in limits if units.get(limit.kind, 0) > 0]
        if not moved:
            return
        args = [n for limit, n_units in moved for n in _bucket_args(limit, n_units)]
        keys = self._keys([limit for limit, _ in moved])
        try:
            await self._call(lambda: script(keys=keys, args=args))
        except Unavailable:
            await getattr(self.fallback, what)(self._shares(limits), units)
        except Overloaded:
            log.info("%s of %s dropped: no Redis connection came free in time", what, keys)

    @asynccontextmanager
    async def concurrency(self, scope: str, max_concurrent: int) -> AsyncIterator[None]:
        key, slot = f"{self.prefix}concurrency:{scope}", secrets.token_hex(12)
        try:
            acquired = bool(await self._call(lambda: self._acquire(keys=[key], args=[max_concurrent, self.lease_ms, slot])))
        except Unavailable:
            acquired = None
        except Overloaded:
            raise self._overloaded() from None
        if acquired is None:
            self.degraded_decisions += 1
            async with self.fallback.concurrency(scope, max(1, max_concurrent // self.replicas)):
                yield
            return
        if not acquired:
            raise concurrency_exceeded(scope, max_concurrent)
        try:
            yield
        finally:
            await asyncio.shield(self._release(key, slot))

    @asynccontextmanager
    async def hold(self, limits: Sequence[Limit], slots: Sequence[Slot]) -> AsyncIterator[Held]:
        """``Limiter.hold`` in two round trips, one in (``ENTER_LUA``) and one out (``LEAVE_LUA``).
        In an outage the fallback decides, with this replica's share of each limit."""
        if not limits and not slots:
            yield Held(Decision(True), limits)
            return
        ids = [secrets.token_hex(12) for _ in slots]
        slot_keys = [f"{self.prefix}concurrency:{scope}" for scope, _ in slots]
        args: list[str | int] = [len(limits), repr(TOLERANCE_S), self.lease_ms]
        args += [n for limit in limits for n in _bucket_args(limit, limit.cost)]
        args += [n for (_, most), slot in zip(slots, ids, strict=True) for n in (most, slot)]
        keys = self._keys(limits) + slot_keys
        try:
            reply = await self._call(lambda: self._enter(keys=keys, args=args))
        except Unavailable:
            self.degraded_decisions += 1
            shares = [(scope, max(1, most // self.replicas)) for scope, most in slots]
            async with hold_in_steps(self.fallback, self._shares(limits), shares) as degraded:
                yield degraded
            return
        except Overloaded:
            raise self._overloaded() from None
        admitted, now, full, stored = int(reply[0]), float(reply[1]), int(reply[2]), reply[3:]
        tats = {limit.key: float(raw) for limit, raw in zip(limits, stored, strict=True) if raw}
        decision = decide(limits, tats, now)[0]
        if not decision.allowed:
            raise rejection(decision)
        if full:
            raise concurrency_exceeded(*slots[full - 1])
        held = Held(decision, limits)
        try:
            yield held
        finally:
            if admitted:
                await asyncio.shield(self._left(slot_keys, ids, held))

    async def _left(self, slot_keys: list[str], ids: list[str], held: Held) -> None:
        """Tried even during an outage: else the slots are held until their leases run out (and
        the buckets keep what they were charged, the estimate)."""
        corrections = held.corrections()
        moved = [(limit, corrections[limit.kind]) for limit in held.limits if corrections.get(limit.kind)]
        if not slot_keys and not moved:
            return
        args = [len(slot_keys), *ids, *(n for limit, units in moved for n in _bucket_args(limit, units))]
        keys = slot_keys + self._keys([limit for limit, _ in moved])
        try:
            await self._call(lambda: self._leave(keys=keys, args=args), during_outage=True)
        except (Unavailable, Overloaded):
            pass

    async def aclose(self) -> None:
        for connection in self._idle:
            await connection.disconnect()
        self._idle.clear()
        await self.client.aclose()
        await self.fallback.aclose()

    async def _release(self, key: str, slot: str) -> None:
        try:  # tried even during an outage: else the slot is held until its lease runs out
            await self._call(lambda: self.client.zrem(key, slot), during_outage=True)
        except (Unavailable, Overloaded):  # the slot's lease runs out instead
            pass

    async def _command(self, *args: str | int) -> Any:
        """One command on a connection of this limiter's own, sent and its reply read with
        redis-py's connection, without the client's layers this path does not use (the pool's
        lock and condition, retries, which are off, and the instrumentation that times and labels
        every command): a request's two scripts cost about a third less CPU. At most
        ``max_connections`` are ever made (``_call`` holds ``_wire`` around this); a connection
        whose reply was not read whole is disconnected before it is used again (it reconnects)."""
        connection = self._idle.pop() if self._idle else self.client.connection_pool.make_connection()
        try:
            await connection.send_packed_command(_packed(args), check_health=False)
            return await connection.read_response()
        except ResponseError:  # an answer, read whole: the connection is in order
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(connection)

    async def _call(self, command: Callable[[], Awaitable[Any]], *, during_outage: bool = False) -> Any:
        """One command, on a connection of its own once one is free. Raises ``Unavailable`` when
        Redis is not to be asked (an outage, unless ``during_outage``, and not this request's turn
        to try it again) or has just failed, ``Overloaded`` when no connection came free in time."""
        probe = False
        if self.outage and not during_outage:
            if self._probing or time.monotonic() < self._retry_at:
                raise Unavailable
            probe = self._probing = True
        try:
            try:
                async with asyncio.timeout(self.busy_timeout_s):
                    await self._wire.acquire()
            except TimeoutError:
                raise Overloaded from None
            try:
                if self.outage and not (probe or during_outage):  # it began while we waited
                    raise Unavailable
                reply = await self._answer(command)
            except MaxConnectionsError as exc:  # not with a blocking pool; never taken for an outage
                raise Overloaded from exc
            except REDIS_ERRORS as exc:
                self._failed(exc)
                raise Unavailable from exc
            finally:
                self._wire.release()
        finally:
            if probe:
                self._probing = False
        self._answered()
        return reply

    async def _answer(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``command``. It is abandoned (``TimeoutError``) only when Redis has sent nothing,
        to it or to any other command, for ``timeout_s``, and nothing still, ``GRACE_S`` and
        ``LOOKS`` turns of the loop after that deadline: a loop too busy to read answers that came
        (one long callback, or every turn longer than ``timeout_s``) reads them in those turns.
        Abandoned after ``busy_timeout_s`` (at least ``timeout_s``) whatever else Redis answers."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(command())
        started = loop.time()
        deadline = started + self.timeout_s
        try:
            while True:
                await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
                if not task.done():
                    last = self._heard_at
                    await asyncio.wait({task}, timeout=GRACE_S)
                    for _ in range(LOOKS):
                        if task.done():
                            break
                        await asyncio.sleep(0)
                    if task.done():
                        return task.result()
                    now = loop.time()
                    if (self._heard_at == last and now - max(last, started) >= self.timeout_s) or (
                        now - started >= self._answer_cap_s
                    ):
                        raise TimeoutError(f"Redis sent nothing for {format_duration(now - max(last, started))}")
                    deadline = min(max(self._heard_at, started) + self.timeout_s, started + self._answer_cap_s)
                    continue
                return task.result()
        finally:
            if not task.done():
                task.cancel()  # redis-py drops the connection: a late answer is never read
                await asyncio.gather(task, return_exceptions=True)

    def _heard(self) -> None:
        self._heard_at = asyncio.get_running_loop().time()

    def _overloaded(self) -> LimitExceeded:
        self.overloaded_rejections += 1
        message = (
            "Too many requests at once for the rate limiter of this server. "
            f"Please try again in {format_duration(CONCURRENCY_RETRY_S)}."
        )
        return LimitExceeded(message, retry_after_s=CONCURRENCY_RETRY_S)

    def _keys(self, limits: Sequence[Limit]) -> list[str]:
        return [f"{self.prefix}{limit.key}" for limit in limits]

    def _shares(self, limits: Sequence[Limit]) -> list[Limit]:
        return [replace(limit, rate=limit.rate.share(self.replicas)) for limit in limits]

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_interval_s
        if not self.outage:
            self.outage = True
            self._outage_decisions = self.degraded_decisions
            log.warning(
                "Redis at %s failed (%s: %s); rate limits fall back to this replica's share "
                "(each limit / %d replicas) until it answers again",
                self.where,
                type(exc).__name__,
                exc,
                self.replicas,
            )

    def _answered(self) -> None:
        if self.outage:
            self.outage = False
            log.warning(
                "Redis at %s answers again; rate limits are shared again (%d decisions were made "
                "by this replica's fallback meanwhile)",
                self.where,
                self.degraded_decisions - self._outage_decisions,
            )


def _packed(args: Sequence[str | int]) -> bytes:
    """A command in the Redis protocol (RESP): the arguments as bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = (arg if isinstance(arg, str) else str(arg)).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Lua:
    """A script, run by its SHA (EVALSHA), and sent whole (EVAL, which also loads it) when Redis
    does not know it yet: after a restart, a SCRIPT FLUSH, or on first use."""

    def __init__(self, text: str, command: Callable[..., Awaitable[Any]]) -> None:
        self.text, self.sha, self._command = text, hashlib.sha1(text.encode()).hexdigest(), command

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self._command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._command("EVAL", self.text, len(keys), *keys, *args)


def _listening(base: type[AbstractConnection], heard: Callable[[], None]) -> type[AbstractConnection]:
    """``base`` calling ``heard`` on every reply that Redis sends it: to commands, to the
    handshake of a new connection, and errors (an error is an answer too)."""

    class Listening(base):  # type: ignore[misc, valid-type]  # a class made at run time from the pool's connection class
        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                response = await super().read_response(*args, **kwargs)
            except ResponseError:
                heard()
                raise
            if response is not None or kwargs.get("timeout") is None:  # None with a timeout: nothing came
                heard()
            return response

    return Listening


def _bucket_args(limit: Limit, units: int) -> tuple[int, str, int]:
    return limit.rate.amount, repr(float(limit.rate.period_s)), units


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
