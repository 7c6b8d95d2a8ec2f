"""Reads and writes behind the accounts service: organization trees, members, keys with their
budgets and scopes (a key's secret is made by the service: only its hash and prefix come here),
account balances, and the versioned price and margin rows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.store.repos import new_id
from emporion.store.tables import (
    Account,
    ApiKey,
    Entry,
    MarginRow,
    Member,
    Organization,
    Posting,
    PriceRow,
)


class AmbiguousName(LookupError):
    """A name that no top-level organization has and several sub-organizations share."""

    def __init__(self, name: str, matches: list[Organization]) -> None:
        super().__init__(f"several organizations are named {name!r}")
        self.name = name
        self.matches = matches


async def find_org(session: AsyncSession, id_or_name: str) -> Organization | None:
    """By id, else by name (the CLI accepts either). Names are unique only within a parent: the
    top-level organization of that name comes first, else the one sub-organization of that name;
    several of them (under different resellers) raise AmbiguousName, which lists them."""
    org = await session.get(Organization, id_or_name)
    if org is not None:
        return org
    org = await org_named(session, id_or_name)
    if org is not None:
        return org
    matches = list(
        (
            await session.scalars(
                select(Organization).where(Organization.name == id_or_name).order_by(Organization.created_at, Organization.id)
            )
        ).all()
    )
    if len(matches) > 1:
        raise AmbiguousName(id_or_name, matches)
    return matches[0] if matches else None


async def org_named(session: AsyncSession, name: str, parent_id: str | None = None) -> Organization | None:
    """The organization of this name directly under ``parent_id`` (None: the top-level one), the
    scope in which names are unique."""
    parent = Organization.parent_id.is_(None) if parent_id is None else Organization.parent_id == parent_id
    return await session.scalar(select(Organization).where(Organization.name == name, parent))


async def list_orgs(session: AsyncSession, root_id: str | None = None) -> list[Organization]:
    """Every organization, or ``root_id`` and the organizations below it (its sub-organizations,
    theirs, and so on), oldest first."""
    if root_id is None:
        return list((await session.scalars(select(Organization).order_by(Organization.created_at, Organization.id))).all())
    root = await session.get(Organization, root_id)
    if root is None:
        return []
    found, frontier = [root], [root.id]
    seen = {root.id}
    while frontier:
        children = (await session.scalars(select(Organization).where(Organization.parent_id.in_(frontier)))).all()
        children = [child for child in children if child.id not in seen]
        seen.update(child.id for child in children)
        found.extend(children)
        frontier = [child.id for child in children]
    return sorted(found, key=lambda org: (org.created_at, org.id))


@dataclass(frozen=True, slots=True)
class KeyColumns:
    """What a new key may carry beyond its organization."""

    kind: str = "api"
    label: str = ""
    expires_at: int | None = None
    allowed_models: list[str] | None = None
    budget_nanos: int | None = None
    budget_period: str | None = None
    period_budget_nanos: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


async def insert_key(session: AsyncSession, org_id: str, columns: KeyColumns, key_hash: str, prefix: str) -> ApiKey:
    row = ApiKey(
        id=new_id("key"),
        org_id=org_id,
        key_hash=key_hash,
        prefix=prefix,
        label=columns.label,
        created_at=int(time.time()),
        revoked_at=None,
        kind=columns.kind,
        expires_at=columns.expires_at,
        allowed_models=None if columns.allowed_models is None else json.dumps(columns.allowed_models),
        budget_nanos=columns.budget_nanos,
        budget_period=columns.budget_period,
        period_budget_nanos=columns.period_budget_nanos,
        requests_per_minute=columns.requests_per_minute,
        tokens_per_minute=columns.tokens_per_minute,
        max_concurrent=columns.max_concurrent,
    )
    session.add(row)
    await session.flush()
    return row


async def active_keys_matching(session: AsyncSession, id_or_prefix: str) -> list[ApiKey]:
    """The active keys with this id, or this prefix (the CLI accepts either)."""
    query = select(ApiKey).where((ApiKey.id == id_or_prefix) | (ApiKey.prefix == id_or_prefix), ApiKey.revoked_at.is_(None))
    return list((await session.scalars(query)).all())


async def keys_of(session: AsyncSession, org_id: str) -> list[ApiKey]:
    return list(
        (await session.scalars(select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at, ApiKey.id))).all()
    )


async def count_keys(session: AsyncSession, org_id: str) -> int:
    query = select(func.count()).select_from(ApiKey).where(ApiKey.org_id == org_id, ApiKey.revoked_at.is_(None))
    return await session.scalar(query) or 0


async def add_member(session: AsyncSession, org_id: str, email: str, role: str) -> Member | None:
    """None when the organization already has a member with that email."""
    if await session.scalar(select(Member.id).where(Member.org_id == org_id, Member.email == email)) is not None:
        return None
    member = Member(id=new_id("mem"), org_id=org_id, email=email, role=role, created_at=int(time.time()))
    session.add(member)
    await session.flush()
    return member


async def members_of(session: AsyncSession, org_id: str) -> list[Member]:
    return list(
        (await session.scalars(select(Member).where(Member.org_id == org_id).order_by(Member.created_at, Member.id))).all()
    )


async def find_member(session: AsyncSession, org_id: str, id_or_email: str) -> Member | None:
    return await session.scalar(
        select(Member).where(Member.org_id == org_id, (Member.id == id_or_email) | (Member.email == id_or_email.lower()))
    )


async def remove_member(session: AsyncSession, member: Member) -> bool:
    """False (and nothing removed) when it is the organization's last owner."""
    if member.role == "owner":
        owners = await session.scalar(
            select(func.count()).select_from(Member).where(Member.org_id == member.org_id, Member.role == "owner")
        )
        if (owners or 0) <= 1:
            return False
    await session.delete(member)
    await session.flush()
    return True


@dataclass(frozen=True, slots=True)
class Balance:
    balance_nanos: int
    held_nanos: int

    @property
    def available_nanos(self) -> int:
        return self.balance_nanos - self.held_nanos


async def balance_of(session: AsyncSession, org_id: str) -> Balance:
    """The organization's customer account (zero before its first credit)."""
    row = (
        await session.execute(select(Account.balance_nanos, Account.held_nanos).where(Account.id == f"customer:{org_id}"))
    ).first()
    return Balance(0, 0) if row is None else Balance(int(row[0]), int(row[1]))


async def balances_of(session: AsyncSession, org_ids: list[str]) -> dict[str, Balance]:
    """``balance_of`` for many organizations in one query."""
    accounts = {f"customer:{org_id}": org_id for org_id in org_ids}
    query = select(Account.id, Account.balance_nanos, Account.held_nanos).where(Account.id.in_(list(accounts)))
    rows = await session.execute(query)
    found = {accounts[account]: Balance(int(balance), int(held)) for account, balance, held in rows.all()}
    return {org_id: found.get(org_id, Balance(0, 0)) for org_id in org_ids}


async def charged_org(session: AsyncSession, request_id: str) -> str | None:
    """The organization a request's charge was taken from (its customer account's)."""
    query = (
        select(Account.org_id)
        .join(Entry, Entry.account_id == Account.id)
        .join(Posting, Posting.id == Entry.posting_id)
        .where(Posting.request_id == request_id, Posting.kind == "charge", Account.kind == "customer")
    )
    return await session.scalar(query.limit(1))


async def charge_state(session: AsyncSession, request_id: str) -> tuple[bool, bool]:
    """(charged, refunded) for a request id."""
    kinds = set((await session.scalars(select(Posting.kind).where(Posting.request_id == request_id))).all())
    return "charge" in kinds, "refund" in kinds


async def price_rows(session: AsyncSession, model_id: str | None = None) -> list[PriceRow]:
    query = select(PriceRow).order_by(PriceRow.model_id, PriceRow.upstream, PriceRow.effective_at, PriceRow.id)
    if model_id is not None:
        query = query.where(PriceRow.model_id == model_id)
    return list((await session.scalars(query)).all())


async def margin_rows(session: AsyncSession, model_id: str | None = None) -> list[MarginRow]:
    query = select(MarginRow).order_by(MarginRow.model_id, MarginRow.effective_at, MarginRow.id)
    if model_id is not None:
        query = query.where(MarginRow.model_id == model_id)
    return list((await session.scalars(query)).all())
