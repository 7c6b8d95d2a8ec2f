"""The double-entry ledger: every movement of money is one balanced posting, so the sum over all
accounts is always zero. Requests reserve their worst-case cost as a hold before going upstream,
settle the real cost exactly once (idempotent by request id) and release the rest; holds of
crashed requests expire.

Accounts: ``customer:<org>`` (prepaid credit), ``cash`` (money received), ``grants`` (free credit
given), ``provider:<upstream>`` (owed to upstreams), ``operator`` (margin), ``reseller:<org>``
(a reseller's markup). A reseller funds its customers by transfer, customer -> customer.

Each account keeps ``balance`` (the sum of its entries) and ``held`` (the sum of its open holds)
in step; a reservation is one conditional update, ``held += x where balance - held >= x``, which
is atomic on SQLite and on PostgreSQL alike, so replicas sharing a database can never overdraw
an account together (a batch of reservations holds each account's total in one such update).
Budgets (a key's spending caps) work the same way with ``used``. Every write goes through one
group-commit writer (store/group_commit.py).

With ``leases`` (the gateway's default, metering/leases.py) a busy account's requests are held
and settled in memory, out of a lease this replica holds in the ledger, and their settlements are
written behind; every other hold takes the strict path above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.core.money import Nanos, format_usd
from emporion.core.prices import Charge
from emporion.errors import EmporionError, InvalidRequest
from emporion.metering.leases import IDLE_S, Lease, Leases, Take
from emporion.store.bulk import insert_rows
from emporion.store.group_commit import GroupCommit
from emporion.store.session import Database
from emporion.store.tables import Account, Budget, Entry, Hold, Posting, RequestRecord

CASH, GRANTS, OPERATOR = "cash", "grants", "operator"
log = logging.getLogger("emporion.ledger")


class InsufficientCredits(EmporionError):
    status, type, code = 402, "insufficient_quota", "insufficient_credits"


class BudgetExceeded(EmporionError):
    status, type, code = 402, "insufficient_quota", "budget_exceeded"


def customer(org_id: str) -> str:
    return f"customer:{org_id}"


def provider(upstream: str) -> str:
    return f"provider:{upstream}"


def reseller(org_id: str) -> str:
    return f"reseller:{org_id}"


@dataclass(frozen=True, slots=True)
class Settled:
    request_id: str
    charged: Nanos  # what the customer paid (never more than the hold)
    released: Nanos  # what went back to the customer's available balance


# --- the writes, as queued for the group-commit writer ---------------------------------------


@dataclass(frozen=True, slots=True)
class _Reserve:
    org_id: str
    request_id: str
    amount: int
    expires_at: int
    budgets: tuple[tuple[str, int], ...]  # (budget id, its limit)


@dataclass(frozen=True, slots=True)
class _Leased:
    """A request's hold served in memory: from a lease (its row's request id), or of nothing."""

    lease_id: str | None
    account: str
    amount: int
    budget_ids: str


@dataclass(frozen=True, slots=True)
class _Settle:
    request_id: str
    charge: Charge
    upstream: str
    resellers: tuple[str, ...]
    record: dict[str, Any] | None
    leased: _Leased | None = None  # None: its hold is its own row (the strict path)


@dataclass(frozen=True, slots=True)
class _Take:
    """A lease taken, or refilled: ``want`` more held against the account and budgets, capped at
    ``share`` of what each has available; nothing when that is under ``least``."""

    lease_id: str
    org_id: str
    budgets: tuple[tuple[str, int], ...]
    want: int
    least: int
    share: float
    expires_at: int
    first: bool


@dataclass(frozen=True, slots=True)
class _Release:
    request_id: str


@dataclass(frozen=True, slots=True)
class _Expire:
    now: int
    live: tuple[tuple[str, int], ...]  # (request id, ttl) of requests still running in this process


@dataclass(frozen=True, slots=True)
class Move:
    kind: str  # topup, grant, refund
    reference: str | None
    lines: tuple[tuple[str, int], ...]
    org_id: str


@dataclass(frozen=True, slots=True)
class Transfer:
    source: str  # org ids
    target: str
    amount: int
    reference: str | None


class _Short(Exception):
    """Raised inside a savepoint to undo a transfer its source could not cover."""


@dataclass(frozen=True, slots=True)
class Refund:
    request_id: str


@dataclass
class _Deltas:
    """What a batch does to account and budget counters, applied in one statement per table."""

    balance: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    budget_used: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    budget_held: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def free_hold(self, account: str, amount: int, budget_ids: str) -> None:
        self.held[account] -= amount
        for budget in budget_ids.split():
            self.budget_held[budget] -= amount


class Ledger:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        leases: Leases | None = None,
        settle_flush_s: float = 0.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.leases = leases  # None: every hold takes the strict path
        self._known: set[str] = set()  # accounts known to exist
        self._live: dict[str, int] = {}  # request id (or lease) -> its hold's ttl, for holds live here
        self._leased: dict[str, tuple[_Leased, Lease | None]] = {}  # requests running on memory holds
        self._background: set[asyncio.Task[Any]] = set()
        self._tending: asyncio.Task[None] | None = None
        self.writer: GroupCommit[Any] = GroupCommit(
            db.engine,
            self._apply,
            on_rollback=self._known.clear,
            flush_interval_s=settle_flush_s,
            writer_engine=lambda: db.new_engine(inline=True, pool_size=1, max_overflow=1),
        )

    async def aclose(self) -> None:
        """Gives this replica's leases back, then commits what is queued."""
        if self._tending is not None:
            self._tending.cancel()
            await asyncio.gather(self._tending, return_exceptions=True)
            self._tending = None
        if self.leases is not None:
            for lease in self.leases.all():
                self.writer.defer(_Release(lease.id))
                self._live.pop(lease.id, None)
        await self.writer.aclose()

    async def flush(self) -> None:
        """Waits until the settlements written behind so far are committed: for a reader of the
        books that must see what this replica has answered."""
        await self.writer.flush()

    # --- money in and back -----------------------------------------------------------------------

    async def top_up(self, org_id: str, amount: Nanos, reference: str | None = None) -> bool:
        """Prepaid credit bought: cash -> customer. ``reference`` (a payment id) makes it
        idempotent: a second top-up of the organization with the same reference changes nothing
        and returns False."""
        return await self._move("topup", reference, CASH, org_id, amount)

    async def apply_in(self, conn: AsyncConnection, op: Move | Transfer | Refund) -> Any:
        """One credit, transfer or refund in the caller's transaction (the accounts service's,
        which records its audit event in the same one), applied by the very code the group-commit
        writer applies its batches with; a refusal is raised. A caller whose transaction then
        rolls back calls ``rolled_back``, as the writer does."""
        result = (await self._apply(conn, [op]))[0]
        if isinstance(result, BaseException):  # the batch code hands refusals back as values
            raise result
        return result

    def rolled_back(self) -> None:
        """Forget what a rolled-back transaction seemed to create (accounts it made)."""
        self._known.clear()

    async def grant(self, org_id: str, amount: Nanos, reference: str | None = None) -> bool:
        """Free credit given: grants -> customer."""
        return await self._move("grant", reference, GRANTS, org_id, amount)

    async def _move(self, kind: str, reference: str | None, source: str, org_id: str, amount: Nanos) -> bool:
        positive(amount)
        lines = ((source, -amount), (customer(org_id), amount))
        return await self.writer.submit(Move(kind, scoped(org_id, reference), lines, org_id))

    async def transfer(self, source_org: str, target_org: str, amount: Nanos, reference: str | None = None) -> bool:
        """Credit moved between organizations (a reseller funding its customer): customer ->
        customer, only from what the source has available (402 insufficient_credits otherwise).
        Idempotent by ``reference`` (per source organization) like a top-up."""
        positive(amount)
        return await self.writer.submit(Transfer(source_org, target_org, amount, scoped(source_org, reference)))

    async def refund(self, request_id: str) -> Nanos:
        """Gives a settled request's charge back, every share reversed; once. Returns the amount."""
        await self.flush()
        return await self.writer.submit(Refund(request_id))

    # --- the request path ------------------------------------------------------------------------

    async def available(self, org_id: str) -> Nanos:
        async with self.db.engine.connect() as conn:
            return await _available(conn, customer(org_id))

    async def reserve(
        self, org_id: str, request_id: str, amount: Nanos, ttl_s: float = 900, budgets: Sequence[tuple[str, int]] = ()
    ) -> None:
        """Holds ``amount`` of the organization's credit (and of each budget), or raises 402
        insufficient_credits (budget_exceeded)."""
        if amount < 0:
            raise ValueError("a hold is never negative")
        ttl = max(1, int(ttl_s))
        if self.leases is not None:
            decision = self.leases.hold(org_id, tuple(budgets), amount)
            if decision.take is not None:
                self._start_take(decision.take, org_id, ttl)
            if decision.served:
                budget_ids = " ".join(budget for budget, _ in budgets)
                lease_id = decision.lease.id if decision.lease is not None else None
                self._leased[request_id] = (_Leased(lease_id, customer(org_id), amount, budget_ids), decision.lease)
                return
        await self.writer.submit(_Reserve(org_id, request_id, amount, int(self.clock()) + ttl, tuple(budgets)))
        self._live[request_id] = ttl

    async def settle(
        self,
        request_id: str,
        charge: Charge,
        upstream: str,
        resellers: Sequence[str] = (),
        record: dict[str, Any] | None = None,
    ) -> Settled | None:
        """Charges the real cost against the request's hold, exactly once; a second call (or a
        call after the hold expired or was released) changes nothing and returns None. The
        request's record, when given, is written in the same transaction. A hold served from
        memory settles at once, its write queued behind (see metering/leases.py)."""
        memory = self._leased.pop(request_id, None)
        if memory is not None:
            leased, lease = memory
            charged = sum(_capped(charge, leased.amount))
            if lease is not None and self.leases is not None:
                self.leases.settled(lease, leased.amount, charged)
            self.writer.defer(_Settle(request_id, charge, upstream, tuple(resellers), record, leased))
            await self.writer.room()
            return Settled(request_id, Nanos(charged), Nanos(leased.amount - charged))
        try:
            return await self.writer.submit(_Settle(request_id, charge, upstream, tuple(resellers), record))
        finally:
            self._live.pop(request_id, None)

    async def release(self, request_id: str) -> bool:
        """Frees a hold without charging (the request failed before any usage)."""
        if self._forget_memory_hold(request_id):
            return True
        try:
            return await self.writer.submit(_Release(request_id))
        finally:
            self._live.pop(request_id, None)

    def release_soon(self, request_id: str) -> None:
        """For a caller cancelled while reserving (its reservation may commit all the same): the
        release is queued behind the reservation, so it frees it whatever happened."""
        if not self._forget_memory_hold(request_id):
            self._in_background(self.release(request_id))

    def _forget_memory_hold(self, request_id: str) -> bool:
        memory = self._leased.pop(request_id, None)
        if memory is None:
            return False
        leased, lease = memory
        if lease is not None and self.leases is not None:
            self.leases.settled(lease, leased.amount, 0)
        return True

    def _in_background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- leases ----------------------------------------------------------------------------------

    def _start_take(self, take: Take, org_id: str, ttl: int) -> None:
        assert self.leases is not None
        op = _Take(
            take.lease.id,
            org_id,
            take.pool.key[1],
            take.want,
            take.least,
            self.leases.share,
            int(self.clock()) + ttl,
            first=not take.lease.taken,
        )
        self._in_background(self._take(take, op, ttl))
        if self._tending is None or self._tending.done():
            self._tending = asyncio.create_task(self._tend(), name="leases")

    async def _take(self, take: Take, op: _Take, ttl: int) -> None:
        assert self.leases is not None
        try:
            granted = await self.writer.submit(op)
        except Exception as exc:  # the strict path goes on meanwhile; a later hold tries again
            log.warning("taking a balance lease failed: %r", exc)
            granted = 0
        self.leases.taken(take, granted)
        if take.lease.taken and take.pool.lease is take.lease:
            self._live[take.lease.id] = ttl

    async def _tend(self) -> None:
        """Gives idle leases back, every half of IDLE_S, while this replica has pools."""
        assert self.leases is not None
        while self.leases.pools:
            await asyncio.sleep(IDLE_S / 2)
            await self.give_back_idle()

    async def give_back_idle(self) -> int:
        """Gives back the leases unused for IDLE_S (metering/leases.py); returns how many (their
        releases are written behind, after the settlements charged to them)."""
        idle = self.leases.idle() if self.leases is not None else []
        for lease in idle:  # deferred: behind the settlements charged to it
            self._live.pop(lease.id, None)
            self.writer.defer(_Release(lease.id))
        return len(idle)

    async def expire(self) -> int:
        """The sweeper: releases holds past their expiry (requests whose process died). First it
        pushes back the expiry of the holds of requests still running in this process (a long
        stream), so only a dead process's holds ever expire; each replica sweeps for its own."""
        return await self.writer.submit(_Expire(int(self.clock()), tuple(self._live.items())))

    # --- books -----------------------------------------------------------------------------------

    async def balances(self) -> dict[str, int]:
        await self.flush()
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(Account.id, Account.balance_nanos))
            return {account: balance for account, balance in rows}

    # --- the writer ------------------------------------------------------------------------------

    async def _apply(self, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        """Applies a batch in order of kind: moves, transfers, refunds, reserves, lease takes,
        settles, releases (of leases too), expiries."""
        results: list[Any] = [None] * len(ops)
        if conn.dialect.name == "postgresql":
            await _lock_rows(conn, ops)
        deltas = _Deltas()
        by_kind: dict[type, list[int]] = defaultdict(list)
        for index, op in enumerate(ops):
            by_kind[type(op)].append(index)
        for index in by_kind[Move]:
            results[index] = await self._apply_move(conn, ops[index])
        for index in by_kind[Transfer]:
            results[index] = await self._apply_transfer(conn, ops[index])
        for index in by_kind[Refund]:
            results[index] = await self._apply_refund(conn, ops[index])
        if by_kind[_Reserve]:
            await self._apply_reserves(conn, [(i, ops[i]) for i in by_kind[_Reserve]], results)
        for index in by_kind[_Take]:
            results[index] = await self._apply_take(conn, ops[index])
        if by_kind[_Settle]:
            await self._apply_settles(conn, [(i, ops[i]) for i in by_kind[_Settle]], results, deltas)
        if by_kind[_Release]:
            released = await _close_holds(conn, [ops[i].request_id for i in by_kind[_Release]], "released", deltas)
            for i in by_kind[_Release]:
                results[i] = ops[i].request_id in released
        for index in by_kind[_Expire]:
            await _extend(conn, ops[index].now, ops[index].live)
            rows = await conn.execute(
                update(Hold)
                .where(Hold.state == "open", Hold.expires_at <= ops[index].now)
                .values(state="expired")
                .returning(Hold.account_id, Hold.amount_nanos, Hold.budget_ids)
            )
            expired = rows.all()
            for account, amount, budget_ids in expired:
                deltas.free_hold(account, amount, budget_ids)
            results[index] = len(expired)
        await _apply_deltas(conn, deltas)
        return results

    async def _apply_move(self, conn: AsyncConnection, op: Move) -> bool:
        for account, _ in op.lines:
            await self._ensure(conn, account, op.org_id if account.startswith("customer:") else None)
        return await _post(conn, op.kind, op.reference, dict(op.lines), int(self.clock()))

    async def _apply_transfer(self, conn: AsyncConnection, op: Transfer) -> bool | InsufficientCredits:
        source, target = customer(op.source), customer(op.target)
        await self._ensure(conn, source, op.source)
        await self._ensure(conn, target, op.target)
        try:
            async with conn.begin_nested():
                if not await _post(conn, "transfer", op.reference, {source: -op.amount, target: op.amount}, int(self.clock())):
                    return False
                if await _available(conn, source) < 0:  # the source's row is locked by the update until commit
                    raise _Short
        except _Short:
            available = await _available(conn, source)
            return InsufficientCredits(
                f"Insufficient credits: ${format_usd(Nanos(max(available, 0)))} is available to transfer, "
                f"not ${format_usd(Nanos(op.amount))}."
            )
        return True

    async def _apply_refund(self, conn: AsyncConnection, op: Refund) -> int:
        charge_lines = (
            await conn.execute(
                select(Entry.account_id, Entry.amount_nanos)
                .join(Posting, Posting.id == Entry.posting_id)
                .where(Posting.request_id == op.request_id, Posting.kind == "charge")
            )
        ).all()
        if not charge_lines:
            return 0
        lines = {account: -amount for account, amount in charge_lines}
        if not await _post(conn, "refund", op.request_id, lines, int(self.clock())):
            return 0
        return max(lines.values())

    async def _apply_reserves(self, conn: AsyncConnection, ops: list[tuple[int, _Reserve]], results: list[Any]) -> None:
        """Holds in bulk: one statement holds every account's total for the batch, one every
        budget's, and when each can cover its total (the common case) that is all. The writes of
        an account or budget that cannot are undone and tried one by one, so each is refused
        alone and in arrival order."""
        totals: dict[str, int] = defaultdict(int)
        for _, op in ops:
            totals[customer(op.org_id)] += op.amount
        accounts_held = await _hold_totals(conn, totals)
        fast = [(index, op) for index, op in ops if customer(op.org_id) in accounts_held]
        budget_totals: dict[str, int] = defaultdict(int)
        limits: dict[str, int] = {}
        for _, op in fast:
            for budget, limit in op.budgets:
                budget_totals[budget] += op.amount
                limits[budget] = limit
        budgets_held = await _hold_budget_totals(conn, budget_totals, limits)
        admitted = [(index, op) for index, op in fast if all(b in budgets_held for b, _ in op.budgets)]
        spilled = [(index, op) for index, op in fast if not all(b in budgets_held for b, _ in op.budgets)]
        if spilled:  # give back what the bulk statements held for them, then retry them alone
            undo = _Deltas()
            for _, op in spilled:
                undo.held[customer(op.org_id)] -= op.amount
                for budget, _ in op.budgets:
                    if budget in budgets_held:
                        undo.budget_held[budget] -= op.amount
            await _apply_deltas(conn, undo)
        slow = [(index, op) for index, op in ops if customer(op.org_id) not in accounts_held] + spilled
        for index, op in sorted(slow, key=lambda item: (customer(item[1].org_id), item[0])):  # one lock order
            refusal = await self._reserve_alone(conn, op)
            if refusal is None:
                admitted.append((index, op))
            else:
                results[index] = refusal
        now = int(self.clock())
        if admitted:
            await insert_rows(
                conn,
                Hold,
                [
                    {
                        "request_id": op.request_id,
                        "account_id": customer(op.org_id),
                        "amount_nanos": op.amount,
                        "state": "open",
                        "created_at": now,
                        "expires_at": op.expires_at,
                        "budget_ids": " ".join(budget for budget, _ in op.budgets),
                    }
                    for _, op in admitted
                ],
            )

    async def _reserve_alone(self, conn: AsyncConnection, op: _Reserve) -> EmporionError | None:
        account = customer(op.org_id)
        if not await _hold_totals(conn, {account: op.amount}):
            await self._ensure(conn, account, op.org_id)
            if not await _hold_totals(conn, {account: op.amount}):
                available = await _available(conn, account)
                return InsufficientCredits(
                    f"Insufficient credits: this request may cost up to ${format_usd(Nanos(op.amount))} but "
                    f"${format_usd(Nanos(max(available, 0)))} is available. Add credits, or lower max_tokens."
                )
        held = await _hold_budget_totals(conn, {budget: op.amount for budget, _ in op.budgets}, dict(op.budgets))
        refused = next((budget for budget, _ in op.budgets if budget not in held), None)
        if refused is not None:  # every budget or none: give back what was held
            undo = _Deltas()
            undo.held[account] -= op.amount
            for budget in held:
                undo.budget_held[budget] -= op.amount
            await _apply_deltas(conn, undo)
            return BudgetExceeded(
                f"This API key's budget ({refused}) cannot cover this request (up to ${format_usd(Nanos(op.amount))})."
            )
        return None

    async def _apply_take(self, conn: AsyncConnection, op: _Take) -> int | None:
        """Holds up to ``op.want`` more for a lease; returns what it held (None: the lease's row is
        gone, expired under a process that stalled past its ttl)."""
        account = customer(op.org_id)
        if not op.first:
            state = (await conn.execute(select(Hold.state).where(Hold.request_id == op.lease_id))).scalar()
            if state != "open":
                return None
        grant = min(op.want, int(await _available(conn, account) * op.share))
        if op.budgets:
            rows = await conn.execute(
                select(Budget.id, Budget.used_nanos, Budget.held_nanos).where(Budget.id.in_([b for b, _ in op.budgets]))
            )
            spent = {budget: int(used) + int(held) for budget, used, held in rows}
            for budget, limit in op.budgets:
                grant = min(grant, int((limit - spent.get(budget, 0)) * op.share))
        if grant < max(op.least, 1):
            return 0
        refused = await self._reserve_alone(conn, _Reserve(op.org_id, op.lease_id, grant, op.expires_at, op.budgets))
        if refused is not None:
            return 0
        if op.first:
            await conn.execute(
                insert(Hold).values(
                    request_id=op.lease_id,
                    account_id=account,
                    amount_nanos=grant,
                    state="open",
                    created_at=int(self.clock()),
                    expires_at=op.expires_at,
                    budget_ids=" ".join(budget for budget, _ in op.budgets),
                )
            )
        else:
            await conn.execute(update(Hold).where(Hold.request_id == op.lease_id).values(amount_nanos=Hold.amount_nanos + grant))
        return grant

    async def _apply_settles(
        self, conn: AsyncConnection, ops: list[tuple[int, _Settle]], results: list[Any], deltas: _Deltas
    ) -> None:
        first: dict[str, tuple[int, _Settle]] = {}
        for index, op in ops:
            first.setdefault(op.request_id, (index, op))  # a repeat within the batch changes nothing
        strict = [request_id for request_id, (_, op) in first.items() if op.leased is None]
        holds = (
            {
                request_id: (account, amount, budget_ids)
                for request_id, account, amount, budget_ids in (
                    await conn.execute(
                        update(Hold)
                        .where(Hold.request_id.in_(strict), Hold.state == "open")
                        .values(state="settled")
                        .returning(Hold.request_id, Hold.account_id, Hold.amount_nanos, Hold.budget_ids)
                    )
                ).all()
            }
            if strict
            else {}
        )
        caps = {request_id: amount for request_id, (_, amount, _) in holds.items()}  # the most each may be charged
        for account, amount, budget_ids in holds.values():
            deltas.free_hold(account, amount, budget_ids)
        leased = {request_id: op.leased for request_id, (_, op) in first.items() if op.leased is not None}
        from_leases = await self._leased_caps(conn, leased, caps, deltas) if leased else set()
        spent_leases: dict[str, int] = defaultdict(int)
        for request_id, memory in leased.items():
            holds[request_id] = (memory.account, memory.amount, memory.budget_ids)
        postings, records = [], []
        for request_id, (account, hold, budget_ids) in holds.items():
            index, op = first[request_id]
            shares = _capped(op.charge, caps[request_id])
            total = sum(shares)
            lines: dict[str, int] = defaultdict(int)
            lines[account] -= total
            payees = [provider(op.upstream), OPERATOR, *(reseller(org) for org in op.resellers)]
            for payee, amount in zip(payees, shares, strict=False):
                if amount:
                    lines[payee] += amount
            if request_id in from_leases:  # the charge leaves the lease: held drops with the balance
                memory = leased[request_id]
                assert memory.lease_id is not None
                spent_leases[memory.lease_id] += total
                deltas.free_hold(account, total, budget_ids)
            for budget in budget_ids.split():
                deltas.budget_used[budget] += total
            if total:
                postings.append((request_id, lines))
            if op.record is not None:
                records.append({**op.record, "id": request_id, "cost_nanos": total, "provider_nanos": shares[0]})
            results[index] = Settled(request_id, Nanos(total), Nanos(hold - total))
        if postings:
            for payee in sorted({a for _, lines in postings for a in lines} - self._known):
                await self._ensure(conn, payee, None)
            now = int(self.clock())
            charged = [request_id for request_id, _ in postings]
            ids = await _insert_postings(conn, charged, now)
            entries = [
                {"posting_id": ids[request_id], "account_id": account, "amount_nanos": amount}
                for request_id, lines in postings
                for account, amount in lines.items()
            ]
            await insert_rows(conn, Entry, entries)
            for _, lines in postings:
                for account, amount in lines.items():
                    deltas.balance[account] += amount
        if records:
            await insert_rows(conn, RequestRecord, records)
        if leased:
            now = int(self.clock())
            await insert_rows(
                conn,
                Hold,
                [
                    {
                        "request_id": request_id,
                        "account_id": memory.account,
                        "amount_nanos": memory.amount,
                        "state": "settled",
                        "created_at": now,
                        "expires_at": now,
                        "budget_ids": memory.budget_ids,
                    }
                    for request_id, memory in leased.items()
                ],
            )
        spent = {lease: amount for lease, amount in spent_leases.items() if amount}
        if spent:
            await conn.execute(
                update(Hold)
                .where(Hold.request_id.in_(sorted(spent)))
                .values(amount_nanos=Hold.amount_nanos - _amounts(spent, Hold.request_id))
            )

    async def _leased_caps(
        self, conn: AsyncConnection, leased: dict[str, _Leased], caps: dict[str, int], deltas: _Deltas
    ) -> set[str]:
        """The most each request served from memory may be charged: its hold, while its lease is
        open (those requests are returned); when the lease is gone (expired under a process that
        stalled past its ttl, its money back in the account), what the account and the budgets
        still have available, in arrival order, so nothing is overdrawn."""
        lease_ids = sorted({memory.lease_id for memory in leased.values() if memory.lease_id is not None})
        open_leases = (
            set(
                (
                    await conn.execute(select(Hold.request_id).where(Hold.request_id.in_(lease_ids), Hold.state == "open"))
                ).scalars()
            )
            if lease_ids
            else set()
        )
        from_leases: set[str] = set()
        room: dict[str, int] = {}  # what is still available in accounts and budgets, for the others
        for request_id, memory in leased.items():
            if memory.lease_id is None or memory.lease_id in open_leases:
                caps[request_id] = memory.amount if memory.lease_id is not None else 0
                if memory.lease_id is not None:
                    from_leases.add(request_id)
                continue
            log.warning(
                "the balance lease %s was gone when %s settled: charged from what is available", memory.lease_id, request_id
            )
            if memory.account not in room:
                room[memory.account] = max(
                    0, await _available(conn, memory.account) + deltas.balance[memory.account] - deltas.held[memory.account]
                )
            cap = min(memory.amount, room[memory.account])
            for budget in memory.budget_ids.split():
                if budget not in room:
                    row = (
                        await conn.execute(
                            select(Budget.limit_nanos, Budget.used_nanos, Budget.held_nanos).where(Budget.id == budget)
                        )
                    ).first()
                    room[budget] = 0 if row is None else max(0, int(row[0]) - int(row[1]) - int(row[2]))
                cap = min(cap, room[budget])
            caps[request_id] = cap
            for pool in [memory.account, *memory.budget_ids.split()]:
                room[pool] -= cap
        return from_leases

    async def _ensure(self, conn: AsyncConnection, account_id: str, org_id: str | None) -> None:
        if account_id in self._known:
            return
        if (await conn.execute(select(Account.id).where(Account.id == account_id))).first() is None:
            try:
                async with conn.begin_nested():
                    kind = account_id.split(":")[0]
                    await conn.execute(
                        insert(Account).values(id=account_id, kind=kind, org_id=org_id, balance_nanos=0, held_nanos=0)
                    )
            except IntegrityError:
                pass  # created meanwhile by another replica
        self._known.add(account_id)


def positive(amount: int) -> None:
    if amount <= 0:
        raise InvalidRequest("An amount of credit must be positive.", param="amount")


def scoped(org_id: str, reference: str | None) -> str | None:
    """A payment reference is unique per organization (the one credited; for a transfer, the
    one paying), so one tenant's references can neither block nor reveal another's."""
    return None if reference is None else f"{org_id}:{reference}"


async def _lock_rows(conn: AsyncConnection, ops: Sequence[Any]) -> None:
    """PostgreSQL: locks every account and budget row the batch will change, in one sorted order,
    before changing any, so two replicas' batches queue behind each other instead of deadlocking
    (a deadlock left is retried by the writer)."""
    accounts: set[str] = set()
    budgets: set[str] = set()
    closing, refunded, expire_at = [], [], None
    for op in ops:
        if isinstance(op, Move):
            accounts.update(account for account, _ in op.lines)
        elif isinstance(op, Transfer):
            accounts.update((customer(op.source), customer(op.target)))
        elif isinstance(op, _Reserve):
            accounts.add(customer(op.org_id))
            budgets.update(budget for budget, _ in op.budgets)
        elif isinstance(op, _Settle):
            accounts.update((provider(op.upstream), OPERATOR, *(reseller(org) for org in op.resellers)))
            if op.leased is None:
                closing.append(op.request_id)
            else:
                accounts.add(op.leased.account)
                budgets.update(op.leased.budget_ids.split())
        elif isinstance(op, _Take):
            accounts.add(customer(op.org_id))
            budgets.update(budget for budget, _ in op.budgets)
        elif isinstance(op, _Release):
            closing.append(op.request_id)
        elif isinstance(op, Refund):
            refunded.append(op.request_id)
        elif isinstance(op, _Expire):
            expire_at = op.now
    if closing or expire_at is not None:
        due = (
            Hold.request_id.in_(closing) if expire_at is None else or_(Hold.request_id.in_(closing), Hold.expires_at <= expire_at)
        )
        for account, budget_ids in await conn.execute(select(Hold.account_id, Hold.budget_ids).where(Hold.state == "open", due)):
            accounts.add(account)
            budgets.update(budget_ids.split())
    if refunded:
        charged = select(Entry.account_id).join(Posting, Posting.id == Entry.posting_id)
        accounts.update((await conn.execute(charged.where(Posting.kind == "charge", Posting.request_id.in_(refunded)))).scalars())
    if accounts:
        await conn.execute(select(Account.id).where(Account.id.in_(sorted(accounts))).order_by(Account.id).with_for_update())
    if budgets:
        await conn.execute(select(Budget.id).where(Budget.id.in_(sorted(budgets))).order_by(Budget.id).with_for_update())


async def _extend(conn: AsyncConnection, now: int, live: Sequence[tuple[str, int]]) -> None:
    """Pushes the expiry of live requests' open holds to ``now + ttl``."""
    by_ttl: dict[int, list[str]] = defaultdict(list)
    for request_id, ttl in live:
        by_ttl[ttl].append(request_id)
    for ttl, request_ids in by_ttl.items():
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            await conn.execute(update(Hold).where(Hold.request_id.in_(chunk), Hold.state == "open").values(expires_at=now + ttl))


async def _post(conn: AsyncConnection, kind: str, request_id: str | None, lines: dict[str, int], now: int) -> bool:
    """One balanced posting; False when (request_id, kind) was posted before (idempotent)."""
    if sum(lines.values()) != 0:
        raise AssertionError(f"unbalanced posting {lines}")
    try:
        async with conn.begin_nested():
            posting_id = (
                await conn.execute(insert(Posting).values(kind=kind, request_id=request_id, created_at=now).returning(Posting.id))
            ).scalar_one()
    except IntegrityError:
        return False
    await conn.execute(insert(Entry), [{"posting_id": posting_id, "account_id": a, "amount_nanos": n} for a, n in lines.items()])
    for account, amount in sorted(lines.items()):
        await conn.execute(update(Account).where(Account.id == account).values(balance_nanos=Account.balance_nanos + amount))
    return True


async def _insert_postings(conn: AsyncConnection, request_ids: list[str], now: int) -> dict[str, int]:
    """One charge posting for each request; returns their ids. On SQLite the ids are given here,
    after the highest one (the writer holds the database's write lock: nobody else inserts),
    rather than read back row by row; elsewhere they are read back by their unique
    (request_id, kind) — a RETURNING in parameter order costs far more."""
    rows: list[dict[str, Any]] = [{"kind": "charge", "request_id": r, "created_at": now} for r in request_ids]
    if conn.dialect.name == "sqlite":
        first = int((await conn.execute(select(func.coalesce(func.max(Posting.id), 0)))).scalar_one()) + 1
        ids = {request_id: first + offset for offset, request_id in enumerate(request_ids)}
        await insert_rows(conn, Posting, [{"id": ids[row["request_id"]], **row} for row in rows])
        return ids
    await insert_rows(conn, Posting, rows)
    query = select(Posting.request_id, Posting.id).where(Posting.kind == "charge", Posting.request_id.in_(request_ids))
    return dict((await conn.execute(query)).all())  # type: ignore[arg-type]


def _amounts(amounts: dict[str, int], key: Any) -> Any:
    """``CASE key WHEN id THEN amount ...``: per-row amounts in one statement."""
    return case({k: literal(v, BigInteger()) for k, v in amounts.items()}, value=key)


async def _hold_totals(conn: AsyncConnection, totals: dict[str, int]) -> set[str]:
    """Holds each account's total where it can cover it, in one statement; returns those held."""
    if not totals:
        return set()
    amount = _amounts(totals, Account.id)
    rows = await conn.execute(
        update(Account)
        .where(Account.id.in_(sorted(totals)), Account.balance_nanos - Account.held_nanos >= amount)
        .values(held_nanos=Account.held_nanos + amount)
        .returning(Account.id)
    )
    return set(rows.scalars().all())


async def _hold_budget_totals(conn: AsyncConnection, totals: dict[str, int], limits: dict[str, int]) -> set[str]:
    """Holds each budget's total where it stays within its limit, in one statement."""
    if not totals:
        return set()
    existing = set((await conn.execute(select(Budget.id).where(Budget.id.in_(sorted(totals))))).scalars().all())
    for budget in sorted(set(totals) - existing):
        try:
            async with conn.begin_nested():
                await conn.execute(insert(Budget).values(id=budget, limit_nanos=limits[budget], used_nanos=0, held_nanos=0))
        except IntegrityError:
            pass  # created meanwhile by another replica
    amount, limit = _amounts(totals, Budget.id), _amounts(limits, Budget.id)
    rows = await conn.execute(
        update(Budget)
        .where(Budget.id.in_(sorted(totals)), Budget.used_nanos + Budget.held_nanos + amount <= limit)
        .values(held_nanos=Budget.held_nanos + amount, limit_nanos=limit)
        .returning(Budget.id)
    )
    return set(rows.scalars().all())


async def _close_holds(conn: AsyncConnection, request_ids: list[str], state: str, deltas: _Deltas) -> set[str]:
    rows = await conn.execute(
        update(Hold)
        .where(Hold.request_id.in_(request_ids), Hold.state == "open")
        .values(state=state)
        .returning(Hold.request_id, Hold.account_id, Hold.amount_nanos, Hold.budget_ids)
    )
    closed = set()
    for request_id, account, amount, budget_ids in rows.all():
        deltas.free_hold(account, amount, budget_ids)
        closed.add(request_id)
    return closed


async def _apply_deltas(conn: AsyncConnection, deltas: _Deltas) -> None:
    accounts = sorted(a for a in {*deltas.balance, *deltas.held} if deltas.balance.get(a) or deltas.held.get(a))
    if accounts:
        await conn.execute(
            update(Account)
            .where(Account.id == bindparam("account"))
            .values(
                balance_nanos=Account.balance_nanos + bindparam("balance"), held_nanos=Account.held_nanos + bindparam("held")
            ),
            [{"account": a, "balance": deltas.balance.get(a, 0), "held": deltas.held.get(a, 0)} for a in accounts],
        )
    budgets = sorted(
        b for b in {*deltas.budget_used, *deltas.budget_held} if deltas.budget_used.get(b) or deltas.budget_held.get(b)
    )
    if budgets:
        await conn.execute(
            update(Budget)
            .where(Budget.id == bindparam("budget"))
            .values(used_nanos=Budget.used_nanos + bindparam("used"), held_nanos=Budget.held_nanos + bindparam("held")),
            [{"budget": b, "used": deltas.budget_used.get(b, 0), "held": deltas.budget_held.get(b, 0)} for b in budgets],
        )


async def _available(conn: AsyncConnection, account: str) -> Nanos:
    row = (await conn.execute(select(Account.balance_nanos, Account.held_nanos).where(Account.id == account))).first()
    return Nanos(0 if row is None else int(row[0]) - int(row[1]))


def _capped(charge: Charge, hold: int) -> list[int]:
    """The charge's shares (provider, operator, resellers...), cut in that order so that together
    they never exceed the hold."""
    remaining = hold
    shares = []
    for amount in [charge.provider, charge.operator, *charge.resellers]:
        take = min(amount, remaining)
        shares.append(take)
        remaining -= take
    return shares
