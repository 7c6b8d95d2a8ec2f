"""Reads and writes of organizations, API keys and local models."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.store.tables import ApiKey, LocalModel, Organization

DEFAULT_ORG = "default"


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}"


async def count_organizations(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(Organization)) or 0


async def get_or_create_org(session: AsyncSession, name: str) -> Organization:
    """The top-level organization of this name, created if new (names are unique only within a
    parent: a sub-organization of the same name elsewhere is another organization)."""
    org = await session.scalar(select(Organization).where(Organization.name == name, Organization.parent_id.is_(None)))
    if org is None:
        org = await create_org(session, name)
    return org


async def create_org(session: AsyncSession, name: str, parent_id: str | None = None, tier: str = "free") -> Organization:
    """A new organization (its free credit is granted by ``metering.credits.welcome``)."""
    org = Organization(
        id=new_id("org"),
        name=name,
        created_at=int(time.time()),
        parent_id=parent_id,
        tier=tier,
        tier_pinned=False,
        resale_percent="0",
        resale_fixed="0",
    )
    session.add(org)
    await session.flush()
    return org


async def find_active_key(session: AsyncSession, key_hash: str) -> tuple[ApiKey, Organization] | None:
    row = (
        await session.execute(
            select(ApiKey, Organization)
            .join(Organization, Organization.id == ApiKey.org_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def find_active_key_by_id(session: AsyncSession, key_id: str) -> tuple[ApiKey, Organization] | None:
    """A key not revoked, by its id (the batch worker runs a batch's lines as the key that made it)."""
    row = (
        await session.execute(
            select(ApiKey, Organization)
            .join(Organization, Organization.id == ApiKey.org_id)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def org_ancestors(session: AsyncSession, org: Organization) -> list[Organization]:
    """The organization's resellers: its parent, the parent's parent, and so on."""
    chain: list[Organization] = []
    seen = {org.id}
    parent_id = org.parent_id
    while parent_id is not None and parent_id not in seen:
        parent = await session.get(Organization, parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.id)
        parent_id = parent.parent_id
    return chain


async def list_keys(session: AsyncSession) -> list[tuple[ApiKey, Organization]]:
    rows = await session.execute(
        select(ApiKey, Organization).join(Organization, Organization.id == ApiKey.org_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return [(key, org) for key, org in rows.all()]


async def add_local_model(session: AsyncSession, model: LocalModel) -> None:
    session.add(model)
    await session.flush()


async def get_local_model(session: AsyncSession, model_id: str) -> LocalModel | None:
    return await session.get(LocalModel, model_id)


async def list_local_models(session: AsyncSession) -> list[LocalModel]:
    return list((await session.scalars(select(LocalModel).order_by(LocalModel.created_at))).all())


async def remove_local_model(session: AsyncSession, model_id: str) -> bool:
    model = await session.get(LocalModel, model_id)
    if model is None:
        return False
    await session.delete(model)
    return True
