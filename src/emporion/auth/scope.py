"""Who may see and change what: API keys call /v1; an organization's admin keys manage that
organization and its sub-organizations (a reseller's customers); operator keys manage everything.
An organization outside a key's reach is answered as if it did not exist (404), so ids reveal nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from emporion.auth.principal import Principal
from emporion.errors import NotFound, PermissionDenied
from emporion.store import repos
from emporion.store.session import Database
from emporion.store.tables import Organization


def require_admin(principal: Principal) -> None:
    if principal.key_kind not in ("admin", "operator"):
        raise PermissionDenied("This route needs an admin key; API keys can only call /v1.", code="admin_key_required")


def require_operator(principal: Principal) -> None:
    if principal.key_kind != "operator":
        raise PermissionDenied("Only the operator's admin keys can do this.", code="operator_key_required")


def reaches(principal: Principal, org: Organization, ancestors: list[Organization]) -> bool:
    """True when ``org`` (with its ``ancestors``, parent first) is within the principal's reach."""
    if principal.key_kind == "operator":
        return True
    if principal.key_kind != "admin":
        return org.id == principal.org_id
    return org.id == principal.org_id or any(a.id == principal.org_id for a in ancestors)


async def org_in_reach(
    session: AsyncSession, principal: Principal, org_id: str, *, for_update: bool = False
) -> Organization | None:
    """The organization, when the principal may see it, else None (``for_update``: its row locked
    until the transaction ends, so what is read of it stays true while it is changed)."""
    org = await session.get(Organization, org_id, with_for_update=for_update or None)
    if org is not None and reaches(principal, org, await repos.org_ancestors(session, org)):
        return org
    return None


async def visible_org(db: Database, principal: Principal, org_id: str) -> Organization:
    """The organization, when the principal may see it; otherwise 404, exactly as for an unknown id."""
    async with db.session() as session:
        org = await org_in_reach(session, principal, org_id)
    if org is not None:
        return org
    raise NotFound(f"No organization with id `{org_id}`.", param="org_id", code="organization_not_found")
