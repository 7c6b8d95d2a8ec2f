"""Authentication: an API key presented on a request becomes a Principal, or a 401."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from emporion.auth.keys import hash_key, redact
from emporion.errors import AuthenticationFailed
from emporion.store import repos
from emporion.store.session import Database

CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    org_name: str
    key_id: str


class Authenticator:
    """Looks keys up by hash; answers are cached for ``cache_s`` so revocation takes at most that long."""

    def __init__(self, db: Database, cache_s: float) -> None:
        self.db = db
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, authorization: str | None, x_api_key: str | None = None) -> Principal:
        token = _bearer_token(authorization) or (x_api_key or "").strip()
        if not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        key_hash = hash_key(token)
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] > time.monotonic():
            principal = cached[0]
        else:
            principal = await self._lookup_once(key_hash)
        if principal is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {redact(token)}.")
        return principal

    async def _lookup_once(self, key_hash: str) -> Principal | None:
        """One database lookup per key at a time: when a cached entry expires under load, the
        requests that arrive meanwhile wait for that lookup instead of each making their own."""
        pending = self._pending.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key_hash))
            self._pending[key_hash] = pending
            try:
                principal = await asyncio.shield(pending)
            finally:
                del self._pending[key_hash]
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[key_hash] = (principal, time.monotonic() + self.cache_s)
            return principal
        return await asyncio.shield(pending)

    async def _lookup(self, key_hash: str) -> Principal | None:
        async with self.db.session() as session:
            found = await repos.find_active_key(session, key_hash)
        if found is None:
            return None
        key, org = found
        return Principal(org_id=org.id, org_name=org.name, key_id=key.id)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
