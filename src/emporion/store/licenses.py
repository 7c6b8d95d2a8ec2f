"""License acceptances in the database: the accounts service writes them, the authenticator
reads an organization's with its keys (auth/principal.py) so the pipeline checks them in memory."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.store.tables import LicenseAcceptance


async def of_org(session: AsyncSession, org_id: str) -> list[LicenseAcceptance]:
    """The organization's acceptances, by model id."""
    query = select(LicenseAcceptance).where(LicenseAcceptance.org_id == org_id).order_by(LicenseAcceptance.model_id)
    return list((await session.scalars(query)).all())


async def find(session: AsyncSession, org_id: str, model_id: str) -> LicenseAcceptance | None:
    return await session.scalar(
        select(LicenseAcceptance).where(LicenseAcceptance.org_id == org_id, LicenseAcceptance.model_id == model_id)
    )


async def accept(
    session: AsyncSession, org_id: str, model_id: str, license: str, accepted_by: str
) -> tuple[LicenseAcceptance, LicenseAcceptance | None]:
    """The acceptance as recorded, and the one of another license it replaced (None: it is new)."""
    found = await find(session, org_id, model_id)
    before = None
    if found is None:
        found = LicenseAcceptance(id="lic_" + secrets.token_hex(12), org_id=org_id, model_id=model_id)
        session.add(found)
    else:
        before = LicenseAcceptance(
            id=found.id,
            org_id=org_id,
            model_id=model_id,
            license=found.license,
            accepted_by=found.accepted_by,
            accepted_at=found.accepted_at,
        )
    found.license, found.accepted_by, found.accepted_at = license, accepted_by, int(time.time())
    await session.flush()
    return found, before
