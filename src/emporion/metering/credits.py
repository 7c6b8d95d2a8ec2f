"""Credit an organization gets by being one: the free grant, and the tier its paid spend and age earn."""

from __future__ import annotations

import time

from sqlalchemy import func, select, update

from emporion.metering.ledger import Ledger
from emporion.metering.money import NANOS_PER_USD, to_nanos
from emporion.settings import Settings
from emporion.store.session import Database
from emporion.store.tables import Account, Entry, Organization, Posting

DAY_S = 86_400


async def welcome(ledger: Ledger, settings: Settings, org_id: str, parent_id: str | None = None) -> None:
    """The free credit every new top-level organization gets, once (the grant's reference makes it
    idempotent). A reseller's sub-organizations get none: it funds them by transfer, so making
    sub-organizations never makes money."""
    amount = to_nanos(settings.metering.free_credit_usd)
    if amount > 0 and parent_id is None:
        await ledger.grant(org_id, amount, reference="welcome")


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
