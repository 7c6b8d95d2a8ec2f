"""Balance leases: how a replica holds a request's money without a database round trip.

A *lease* is a hold the ledger keeps for one replica — a row of ``holds`` named
``lease:<replica>:<n>``, held against a customer's account and a key's budgets like any hold,
with the same conditional update (so together the replicas' leases and holds never exceed what
an account or a budget has) — out of which the replica serves the holds of its requests in
memory, as TigerBeetle serves two-phase transfers out of a pending one. A request served from a
lease reserves and settles with no round trip: its settlement (the charge, the request's own
``holds`` row, now ``settled``, and its record) is queued as a deferred write that the group
commit writes within ``[metering] settle_flush_ms``, together with its neighbours'; the charge
comes out of the lease, so the account's balance and held amount drop by it together.

What keeps this exact:
- A *pool* is the money a request draws on: its organization's account and its key's budgets.
  A pool is served from a lease only while it is busy (``[metering] lease_min_rate`` requests a
  second or more, measured here); a quiet pool, and every request whose hold its lease cannot
  cover, takes the strict path (the hold and the settlement each committed before the request
  goes on), which is exact to the last nano.
- A lease covers about ``LEASE_SECONDS`` of the pool's spend and is refilled in the background
  when half of it is used; it never takes more than ``[metering] lease_share`` of what the
  account (and each budget) has available, nor less than ``LEAST_HOLDS`` holds of the request
  that asked for it — when the balance is too low for that, the pool stays strict. So another
  replica always finds most of the available balance outside the leases, and as a balance runs
  out every replica falls back to the strict path well before it is spent.
- A lease idle for ``IDLE_S`` is given back; the sweeper renews its expiry while this process
  lives, like a running request's hold.

What a crash can lose or delay (kill -9, or the machine): the settlements still queued — those
of requests answered in the last ``settle_flush_ms`` and one commit, or, while the database is
unreachable, every one since (at most what the replica's leases held: the strict path refuses
with 503 once they are spent) — never more than the group commit's MAX_BACKLOG, past which
callers wait for the writer. Those requests are not charged and have no record; nobody is ever
charged twice or more than their hold, nothing is overdrawn, and the books still sum to zero.
The dead replica's leases (and so the credit of its lost settlements) return to their accounts
when their hold expires, ``[metering] hold_ttl_s`` after its last renewal. While a lease is
taken, ``held`` in the books includes what it holds.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LEASE_SECONDS = 5.0  # a lease covers this long of its pool's spend (refilled when half is left)
LEAST_HOLDS = 8  # a lease smaller than this many holds is not worth taking: the pool stays strict
IDLE_S = 2.0  # a lease unused for this long goes back
RATE_TAU_S = 1.0  # the time constant of the rates measured per pool

PoolKey = tuple[str, tuple[tuple[str, int], ...]]  # (organization id, its key's budgets as (id, limit))


@dataclass
class Lease:
    """A slice of a pool's balance the ledger holds for this replica."""

    id: str  # its row in ``holds``
    amount: int = 0  # what the ledger holds for it, less the charges queued against it
    in_flight: int = 0  # the holds of the requests running on it
    running: int = 0
    used_at: float = 0.0
    taken: bool = False  # its row exists (its first take committed)

    @property
    def free(self) -> int:
        return self.amount - self.in_flight


@dataclass
class Pool:
    key: PoolKey
    rate: float = 0.0  # requests a second, decaying
    spend: float = 0.0  # nanos held a second, decaying
    seen: float = 0.0
    lease: Lease | None = None
    taking: bool = False  # a take (first or refill) is queued
    refused_at: float = -math.inf  # when a take last got nothing (the balance was too low for one)

    def observe(self, now: float, amount: int) -> None:
        decay = math.exp(-(now - self.seen) / RATE_TAU_S) if self.seen else 0.0
        self.rate = self.rate * decay + 1 / RATE_TAU_S
        self.spend = self.spend * decay + amount / RATE_TAU_S
        self.seen = now

    def want(self, amount: int) -> int:
        """What a take should add: the pool's spend over LEASE_SECONDS, at least LEAST_HOLDS holds."""
        return max(int(self.spend * LEASE_SECONDS), LEAST_HOLDS * amount)


@dataclass(frozen=True, slots=True)
class Take:
    """A lease to take or refill, for the ledger to apply."""

    pool: Pool
    lease: Lease
    want: int
    least: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``Leases.hold`` made of a hold."""

    served: bool  # it came out of memory: from ``lease``, or it was a hold of nothing
    lease: Lease | None = None
    take: Take | None = None  # a take (or refill) for the ledger to queue


@dataclass
class Leases:
    """This replica's pools and leases: all in memory, changed only on the event loop."""

    min_rate: float
    share: float
    clock: Callable[[], float] = time.monotonic
    replica: str = field(default_factory=lambda: secrets.token_hex(6))
    pools: dict[PoolKey, Pool] = field(default_factory=dict)
    _serial: int = 0

    def hold(self, org_id: str, budgets: tuple[tuple[str, int], ...], amount: int) -> Decision:
        """Serves a hold of ``amount`` from memory where it can: when the pool is busy and its
        lease covers it (or it is a hold of nothing). Otherwise the hold takes the strict path,
        and when the pool is busy the decision carries a take for the ledger to queue."""
        now = self.clock()
        key = (org_id, budgets)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(key)
        pool.observe(now, amount)
        if pool.rate < self.min_rate:
            return Decision(served=False)
        if amount == 0:
            return Decision(served=True)
        lease = pool.lease
        if lease is None or lease.free < amount:
            return Decision(served=False, take=self._take(pool, amount, now))
        lease.in_flight += amount
        lease.running += 1
        lease.used_at = now
        refill = self._take(pool, amount, now) if lease.free * 2 < pool.want(amount) else None
        return Decision(served=True, lease=lease, take=refill)

    def _take(self, pool: Pool, amount: int, now: float) -> Take | None:
        if pool.taking or now - pool.refused_at < IDLE_S:
            return None
        if pool.lease is None:
            self._serial += 1
            pool.lease = Lease(f"lease:{self.replica}:{self._serial}", used_at=now)
        pool.taking = True
        return Take(pool, pool.lease, pool.want(amount), LEAST_HOLDS * amount)

    def taken(self, take: Take, granted: int | None) -> None:
        """A take committed: ``granted`` added to the lease (0: refused; None: the lease's row was
        gone — expired under a stalled process — and the lease is dropped)."""
        pool = take.pool
        pool.taking = False
        if granted is None:
            if pool.lease is take.lease:
                pool.lease = None
            return
        if granted == 0:
            pool.refused_at = self.clock()
            if pool.lease is take.lease and not take.lease.taken:
                pool.lease = None
            return
        take.lease.amount += granted
        take.lease.taken = True

    def settled(self, lease: Lease, hold: int, charged: int) -> None:
        lease.in_flight -= hold
        lease.amount -= charged
        lease.running -= 1

    def idle(self) -> list[Lease]:
        """Leases unused for IDLE_S with nothing running on them: to give back (they leave their
        pool now). Quiet pools without a lease are forgotten."""
        now = self.clock()
        given: list[Lease] = []
        for key, pool in list(self.pools.items()):
            lease = pool.lease
            if lease is not None and lease.running == 0 and not pool.taking and now - lease.used_at >= IDLE_S:
                pool.lease = None
                if lease.taken:
                    given.append(lease)
            if pool.lease is None and not pool.taking and now - pool.seen >= 10 * RATE_TAU_S:
                del self.pools[key]
        return given

    def all(self) -> list[Lease]:
        """Every lease with a row (at shutdown: to give back)."""
        return [pool.lease for pool in self.pools.values() if pool.lease is not None and pool.lease.taken]
