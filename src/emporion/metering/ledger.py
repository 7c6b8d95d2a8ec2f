"""The double-entry ledger: every movement of money is one balanced posting, so the sum over all
accounts is always zero. Requests reserve their worst-case cost as a hold before going upstream,
settle the real cost exactly once (idempotent by request id) and release the rest; holds of
crashed requests expire.

Accounts: ``customer:<org>`` (prepaid credit), ``cash`` (money received), ``grants`` (free credit
given), ``provider:<upstream>`` (owed to upstreams), ``operator`` (margin), ``reseller:<org>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.errors import EmporionError, InvalidRequest
from emporion.metering.money import Nanos, format_usd
from emporion.metering.prices import Charge
from emporion.store.session import Database
from emporion.store.tables import Account, Entry, Hold, Posting

CASH, GRANTS, OPERATOR = "cash", "grants", "operator"


class InsufficientCredits(EmporionError):
    status, type, code = 402, "insufficient_quota", "insufficient_credits"


def customer(org_id: str) -> str:
    return f"customer:{org_id}"


def provider(upstream: str) -> str:
    return f"provider:{upstream}"


@dataclass(frozen=True, slots=True)
class Settled:
    request_id: str
    charged: Nanos  # what the customer paid (never more than the hold)
    released: Nanos  # what went back to the customer's available balance


class Ledger:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._sqlite = db.url.startswith("sqlite")
        self._lock = asyncio.Lock()  # SQLite has one writer: serialize here rather than retry on SQLITE_BUSY

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._sqlite:
            async with self._lock, self.db.engine.begin() as conn:
                yield conn
        else:
            async with self.db.engine.begin() as conn:
                yield conn

    # --- money in ------------------------------------------------------------------------------

    async def top_up(self, org_id: str, amount: Nanos, reference: str | None = None) -> None:
        """Prepaid credit bought: cash -> customer. ``reference`` (a payment id) makes it idempotent."""
        await self._move("topup", reference, CASH, customer(org_id), amount, org_id)

    async def grant(self, org_id: str, amount: Nanos, reference: str | None = None) -> None:
        """Free credit given: grants -> customer."""
        await self._move("grant", reference, GRANTS, customer(org_id), amount, org_id)

    async def _move(self, kind: str, reference: str | None, source: str, target: str, amount: Nanos, org_id: str) -> None:
        if amount <= 0:
            raise InvalidRequest("An amount of credit must be positive.", param="amount")
        async with self._write() as conn:
            await _ensure(conn, source, source.split(":")[0])
            await _ensure(conn, target, "customer", org_id)
            await self._post(conn, kind, reference, {source: -amount, target: amount})

    # --- the request path ----------------------------------------------------------------------

    async def available(self, org_id: str) -> Nanos:
        async with self.db.engine.connect() as conn:
            return await _available(conn, customer(org_id))

    async def reserve(self, org_id: str, request_id: str, amount: Nanos, ttl_s: float = 900) -> None:
        """Holds ``amount`` of the organization's credit, or raises 402 insufficient_credits."""
        if amount < 0:
            raise ValueError("a hold is never negative")
        account = customer(org_id)
        async with self._write() as conn:
            await _ensure(conn, account, "customer", org_id)
            if not self._sqlite:  # one reservation at a time per account, across replicas
                await conn.execute(select(Account.id).where(Account.id == account).with_for_update())
            available = await _available(conn, account)
            if available < amount:
                raise InsufficientCredits(
                    f"Insufficient credits: this request may cost up to ${format_usd(amount)} but "
                    f"${format_usd(Nanos(max(available, 0)))} is available. Add credits to continue."
                )
            now = int(self.clock())
            await conn.execute(
                insert(Hold).values(
                    request_id=request_id, account_id=account, amount_nanos=amount, state="open",
                    created_at=now, expires_at=now + int(ttl_s),
                )
            )  # fmt: skip

    async def settle(self, request_id: str, charge: Charge, upstream: str, resellers: Sequence[str] = ()) -> Settled | None:
        """Charges the real cost against the request's hold, exactly once; a second call (or a
        call after the hold expired or was released) changes nothing and returns None."""
        async with self._write() as conn:
            hold = (await conn.execute(select(Hold).where(Hold.request_id == request_id).with_for_update())).first()
            if hold is None or hold.state != "open":
                return None
            shares = _capped(charge, hold.amount_nanos)
            total = sum(amount for _, amount in shares)
            lines: dict[str, int] = {hold.account_id: -total}
            payees = [provider(upstream), OPERATOR, *(f"reseller:{org}" for org in resellers)]
            for account, (_, amount) in zip(payees, shares, strict=False):
                if amount:
                    await _ensure(conn, account, account.split(":")[0])
                    lines[account] = lines.get(account, 0) + amount
            if total:
                await self._post(conn, "charge", request_id, lines)
            await conn.execute(update(Hold).where(Hold.request_id == request_id).values(state="settled"))
            return Settled(request_id, Nanos(total), Nanos(hold.amount_nanos - total))

    async def release(self, request_id: str) -> bool:
        """Frees a hold without charging (the request failed before any usage)."""
        async with self._write() as conn:
            result = await conn.execute(
                update(Hold).where(Hold.request_id == request_id, Hold.state == "open").values(state="released")
            )
            return result.rowcount == 1

    async def expire(self) -> int:
        """The sweeper: releases holds past their expiry (requests whose process died)."""
        async with self._write() as conn:
            result = await conn.execute(
                update(Hold).where(Hold.state == "open", Hold.expires_at <= int(self.clock())).values(state="expired")
            )
            return result.rowcount

    # --- books ---------------------------------------------------------------------------------

    async def balances(self) -> dict[str, int]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(Account.id, Account.balance_nanos))
            return {account: balance for account, balance in rows}

    async def _post(self, conn: AsyncConnection, kind: str, request_id: str | None, lines: dict[str, int]) -> None:
        if sum(lines.values()) != 0:
            raise AssertionError(f"unbalanced posting {lines}")
        try:
            async with conn.begin_nested():
                posting_id = (
                    await conn.execute(
                        insert(Posting).values(kind=kind, request_id=request_id, created_at=int(self.clock())).returning(Posting.id)
                    )
                ).scalar_one()
        except IntegrityError:
            return  # this (request_id, kind) was posted before: idempotent
        await conn.execute(insert(Entry), [{"posting_id": posting_id, "account_id": a, "amount_nanos": n} for a, n in lines.items()])
        for account, amount in lines.items():
            await conn.execute(update(Account).where(Account.id == account).values(balance_nanos=Account.balance_nanos + amount))


async def _ensure(conn: AsyncConnection, account_id: str, kind: str, org_id: str | None = None) -> None:
    if (await conn.execute(select(Account.id).where(Account.id == account_id))).first() is None:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(Account).values(id=account_id, kind=kind, org_id=org_id, balance_nanos=0))
        except IntegrityError:
            pass  # created meanwhile by another replica


async def _available(conn: AsyncConnection, account: str) -> Nanos:
    balance = (await conn.execute(select(Account.balance_nanos).where(Account.id == account))).scalar() or 0
    held = (
        await conn.execute(select(func.coalesce(func.sum(Hold.amount_nanos), 0)).where(Hold.account_id == account, Hold.state == "open"))
    ).scalar_one()
    return Nanos(int(balance) - int(held))  # PostgreSQL sums BIGINTs as NUMERIC


def _capped(charge: Charge, hold: int) -> list[tuple[str, int]]:
    """The charge's shares, cut (provider first, then operator, then resellers) so that together
    they never exceed the hold."""
    remaining = hold
    shares = []
    for name, amount in [("provider", charge.provider), ("operator", charge.operator), *(("reseller", r) for r in charge.resellers)]:
        take = min(amount, remaining)
        shares.append((name, take))
        remaining -= take
    return shares
