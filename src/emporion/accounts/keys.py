"""Issuing an API key: its secret made here (auth/keys.py), only its hash and prefix handed to the store."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from emporion.auth.keys import NewKey, generate_key
from emporion.store import orgs
from emporion.store.tables import ApiKey, Organization


async def issue_key(session: AsyncSession, org: Organization, columns: orgs.KeyColumns) -> tuple[NewKey, ApiKey]:
    """A new key of ``org`` in the session's transaction, unchecked and unaudited: what
    ``Accounts.create_key`` builds on once it has checked the actor's rights (and test fixtures use)."""
    new = generate_key()
    return new, await orgs.insert_key(session, org.id, columns, new.key_hash, new.prefix)
