"""Credit an organization gets by being one (the free grant, and the tier its paid spend and age
earn), and credit given to it by reference (top-ups, grants, transfers: ``add_credit``), where a
reference names one payment: the same again is a no-op, a different one is refused (422)."""

from __future__ import annotations

import time
from typing import Literal

from sqlalchemy import func, select, update

from emporion.core.money import NANOS_PER_USD, Nanos, format_usd, to_nanos
from emporion.errors import Unprocessable
from emporion.metering.ledger import Ledger, _scoped
from emporion.settings import Settings
from emporion.store.session import Database
from emporion.store.tables import Account, Entry, Organization, Posting

DAY_S = 86_400

CreditKind = Literal["top_up", "grant", "transfer"]
POSTING_KIND: dict[str, str] = {"top_up": "topup", "grant": "grant", "transfer": "transfer"}


async def welcome(ledger: Ledger, settings: Settings, org_id: str, parent_id: str | None = None) -> None:
    """The free credit every new top-level organization gets, once (the grant's reference makes it
    idempotent). A reseller's sub-organizations get none: it funds them by transfer, so making
    sub-organizations never makes money."""
    amount = to_nanos(settings.metering.free_credit_usd)
    if amount > 0 and parent_id is None:
        await ledger.grant(org_id, amount, reference="welcome")


async def add_credit(
    ledger: Ledger, kind: CreditKind, org_id: str, amount: Nanos, reference: str | None = None, source_org: str | None = None
) -> bool:
    """A top-up, grant or transfer (from ``source_org``) of ``amount`` to the organization. With a
    ``reference``, it is idempotent: the same credit again changes nothing and returns False; the
    reference used before for another amount (or, for a transfer, to another organization) is a
    422 ``reference_reused``, not a silent no-op that would look like money received."""
    scope = org_id  # whose references these are
    if kind == "transfer":
        assert source_org is not None
        scope = source_org
        applied = await ledger.transfer(source_org, org_id, amount, reference)
    else:
        applied = await (ledger.top_up if kind == "top_up" else ledger.grant)(org_id, amount, reference)
    if applied or reference is None:
        return applied
    earlier = await credited(ledger, kind, scope, reference)
    if earlier != (org_id, amount):
        what = {"top_up": "top-up", "grant": "grant", "transfer": "transfer"}[kind]
        was = "" if earlier is None else f" of ${format_usd(Nanos(earlier[1]))}" + ("" if earlier[0] == org_id else " to another organization")
        raise Unprocessable(
            f"The reference `{reference}` was already used for a {what}{was}; this {what} of ${format_usd(amount)} was not made. "
            "A new payment needs a new reference.", param="reference", code="reference_reused",
        )  # fmt: skip
    return False


async def credited(ledger: Ledger, kind: CreditKind, scope_org: str, reference: str) -> tuple[str, int] | None:
    """(organization credited, amount) by the ``kind`` posting with this reference of ``scope_org``
    (the organization credited; for a transfer, the one paying), or None."""
    async with ledger.db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(Account.org_id, Entry.amount_nanos)
                .join(Entry, Entry.account_id == Account.id)
                .join(Posting, Posting.id == Entry.posting_id)
                .where(Posting.kind == POSTING_KIND[kind], Posting.request_id == _scoped(scope_org, reference), Entry.amount_nanos > 0)
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
    now = time.time() if now is None else now
    async with db.engine.begin() as conn:
        paid = dict(
            (
                await conn.execute(
                    select(Account.org_id, func.coalesce(func.sum(Entry.amount_nanos), 0))
                    .join(Entry, Entry.account_id == Account.id)
                    .join(Posting, Posting.id == Entry.posting_id)
                    # paid: top-ups, and for a reseller's customer what its reseller transferred to it
                    .where(Posting.kind.in_(("topup", "transfer")), Entry.amount_nanos > 0, Account.kind == "customer")
                    .group_by(Account.org_id)
                )
            ).all()
        )
        orgs = (await conn.execute(select(Organization.id, Organization.tier, Organization.created_at).where(Organization.tier_pinned.is_(False)))).all()
        moved = {}
        for org_id, tier, created_at in orgs:
            earned = earned_tier(settings, int(paid.get(org_id, 0)), now - created_at, tier)
            if earned != tier:
                await conn.execute(update(Organization).where(Organization.id == org_id).values(tier=earned))
                moved[org_id] = earned
    return moved
