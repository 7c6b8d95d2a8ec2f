"""Credit an organization gets by being one (the free grant, and the tier its paid spend and age
earn), credit given to it by reference (top-ups, grants, transfers: ``add_credit``), where a
reference names one payment: the same again is a no-op, a different one is refused (422), and
refunds of a request's charge.

These run in the caller's transaction (the accounts service's, which writes its audit event in
the same one): each posting is made by the ledger's own code, the function its group-commit writer
applies a batch with, so the money and the record of who moved it commit together or not at all.
A caller whose transaction fails calls ``ledger.rolled_back()``, as the writer itself does."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.core.money import NANOS_PER_USD, Nanos, format_usd, to_nanos
from emporion.errors import Unprocessable
from emporion.metering.ledger import CASH, GRANTS, Ledger, Move, Refund, Transfer, customer, positive, scoped
from emporion.settings import Settings
from emporion.store.session import Database
from emporion.store.tables import Account, Entry, Organization, Posting

DAY_S = 86_400

CreditKind = Literal["top_up", "grant", "transfer"]
POSTING_KIND: dict[str, str] = {"top_up": "topup", "grant": "grant", "transfer": "transfer"}


async def welcome(ledger: Ledger, conn: AsyncConnection, settings: Settings, org_id: str, parent_id: str | None = None) -> Nanos:
    """The free credit every new top-level organization gets, once (the grant's reference makes it
    idempotent); what was granted. A reseller's sub-organizations get none: it funds them by
    transfer, so making sub-organizations never makes money."""
    amount = to_nanos(settings.metering.free_credit_usd)
    if amount <= 0 or parent_id is not None:
        return Nanos(0)
    return amount if await _move(ledger, conn, "grant", org_id, amount, "welcome") else Nanos(0)


async def _move(
    ledger: Ledger, conn: AsyncConnection, kind: CreditKind, org_id: str, amount: Nanos, reference: str | None
) -> bool:
    positive(amount)
    source = CASH if kind == "top_up" else GRANTS
    lines = ((source, -amount), (customer(org_id), amount))
    return await ledger.apply_in(conn, Move(POSTING_KIND[kind], scoped(org_id, reference), lines, org_id))


async def add_credit(
    ledger: Ledger,
    conn: AsyncConnection,
    kind: CreditKind,
    org_id: str,
    amount: Nanos,
    reference: str | None = None,
    source_org: str | None = None,
) -> bool:
    """A top-up, grant or transfer (from ``source_org``) of ``amount`` to the organization. With a
    ``reference``, it is idempotent: the same credit again changes nothing and returns False; the
    reference used before for another amount (or, for a transfer, to another organization) is a
    422 ``reference_reused``, not a silent no-op that would look like money received."""
    scope = org_id  # whose references these are
    if kind == "transfer":
        assert source_org is not None
        scope = source_org
        positive(amount)
        applied = await ledger.apply_in(conn, Transfer(source_org, org_id, amount, scoped(source_org, reference)))
    else:
        applied = await _move(ledger, conn, kind, org_id, amount, reference)
    if applied or reference is None:
        return applied
    earlier = await credited(conn, kind, scope, reference)
    if earlier != (org_id, amount):
        what = {"top_up": "top-up", "grant": "grant", "transfer": "transfer"}[kind]
        was = (
            ""
            if earlier is None
            else f" of ${format_usd(Nanos(earlier[1]))}" + ("" if earlier[0] == org_id else " to another organization")
        )
        raise Unprocessable(
            f"The reference `{reference}` was already used for a {what}{was}; this {what} of ${format_usd(amount)} was not made. "
            "A new payment needs a new reference.",
            param="reference",
            code="reference_reused",
        )
    return False


async def refund(ledger: Ledger, conn: AsyncConnection, request_id: str) -> Nanos:
    """Gives a settled request's charge back, every share reversed; once. The amount (0: nothing
    was charged, or it was refunded before)."""
    return await ledger.apply_in(conn, Refund(request_id))


async def credited(conn: AsyncConnection, kind: CreditKind, scope_org: str, reference: str) -> tuple[str, int] | None:
    """(organization credited, amount) by the ``kind`` posting with this reference of ``scope_org``
    (the organization credited; for a transfer, the one paying), or None."""
    row = (
        await conn.execute(
            select(Account.org_id, Entry.amount_nanos)
            .join(Entry, Entry.account_id == Account.id)
            .join(Posting, Posting.id == Entry.posting_id)
            .where(Posting.kind == POSTING_KIND[kind], Posting.request_id == scoped(scope_org, reference))
            .where(Entry.amount_nanos > 0)
        )
    ).first()
    return None if row is None else (str(row[0]), int(row[1]))


def earned_tier(settings: Settings, paid_nanos: int, age_s: float, current: str) -> str:
    """The highest tier whose thresholds are met; an organization never moves down by itself."""
    names = list(settings.tiers)
    best = names.index(current) if current in names else 0
    for index, tier in enumerate(settings.tiers.values()):
        if paid_nanos >= tier.min_paid_usd * NANOS_PER_USD and age_s >= tier.min_age_days * DAY_S:
            best = max(best, index)
    return names[best]


async def refresh_tiers(db: Database, settings: Settings, now: float | None = None) -> dict[str, str]:
    """Moves every organization whose tier is not pinned by hand to the tier it has earned.
    Returns {org id: new tier} for those that moved."""
    async with db.engine.begin() as conn:
        return await refresh_tiers_in(conn, settings, now)


async def refresh_tiers_in(
    conn: AsyncConnection, settings: Settings, now: float | None = None, org_ids: Sequence[str] | None = None
) -> dict[str, str]:
    """``refresh_tiers`` in the caller's transaction, of ``org_ids`` only when given (the one a payment
    or a tier let float again concerns: a transaction that has locked that organization's row moves
    no other's, so it cannot deadlock with another doing the same). Rows are moved in id order."""
    now = time.time() if now is None else now
    paid_query = (
        select(Account.org_id, func.coalesce(func.sum(Entry.amount_nanos), 0))
        .join(Entry, Entry.account_id == Account.id)
        .join(Posting, Posting.id == Entry.posting_id)
        # paid: top-ups, and for a reseller's customer what its reseller transferred to it
        .where(Posting.kind.in_(("topup", "transfer")), Entry.amount_nanos > 0, Account.kind == "customer")
        .group_by(Account.org_id)
    )
    query = select(Organization.id, Organization.tier, Organization.created_at).where(Organization.tier_pinned.is_(False))
    if org_ids is not None:
        paid_query = paid_query.where(Account.org_id.in_(list(org_ids)))
        query = query.where(Organization.id.in_(list(org_ids)))
    paid = dict((await conn.execute(paid_query)).all())
    moved = {}
    for org_id, tier, created_at in (await conn.execute(query.order_by(Organization.id))).all():
        earned = earned_tier(settings, int(paid.get(org_id, 0)), now - created_at, tier)
        if earned != tier:
            await conn.execute(update(Organization).where(Organization.id == org_id).values(tier=earned))
            moved[org_id] = earned
    return moved
