"""Authentication: an API key presented on a request becomes a Principal, or a 401 / 403."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from emporion.auth.keys import hash_key, redact
from emporion.core.prices import Margin
from emporion.errors import AuthenticationFailed, PermissionDenied
from emporion.store import licenses, repos
from emporion.store.session import Database
from emporion.store.tables import ApiKey, Organization

CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Limits set on a key or an organization; None: not set there."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    org_name: str
    key_id: str
    key_kind: str = "api"  # api: /v1; admin: /admin/v1 over its organization's tree; operator: everything
    tier: str = "free"
    allowed_models: frozenset[str] | None = None  # None: every model
    budget_nanos: int | None = None  # the key's budget over its life
    budget_period: str | None = None  # day, week or month
    period_budget_nanos: int | None = None
    key_limits: KeyLimits = KeyLimits()
    org_limits: KeyLimits = KeyLimits()
    resellers: tuple[tuple[str, Margin], ...] = ()  # (reseller org id, its markup), outermost first
    retention_days: int | None = None  # how long the request log keeps its bodies; None: not at all
    suspended: str | None = field(default=None, compare=False)  # why, when the key's organization (or its reseller) is suspended
    accepted_licenses: frozenset[tuple[str, str]] = frozenset()  # (model id, license) its organization accepted


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
        if principal.suspended is not None:
            raise PermissionDenied(f"This organization is suspended: {principal.suspended}", code="account_suspended")
        return principal

    def forget(self) -> None:
        """Drops every cached answer (after an admin change made by this process)."""
        self._cache.clear()

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

    async def of_key(self, key_id: str) -> Principal:
        """The principal of a key by its id, for work done later on its behalf (a batch's lines):
        the same 401 / 403 as a request with it would get, once it is revoked, expired or suspended."""
        async with self.db.session() as session:
            principal = await self._principal(session, await repos.find_active_key_by_id(session, key_id))
        if principal is None:
            raise AuthenticationFailed("The API key that created this batch was revoked or has expired.")
        if principal.suspended is not None:
            raise PermissionDenied(f"This organization is suspended: {principal.suspended}", code="account_suspended")
        return principal

    async def _lookup(self, key_hash: str) -> Principal | None:
        async with self.db.session() as session:
            return await self._principal(session, await repos.find_active_key(session, key_hash))

    @staticmethod
    async def _principal(session: AsyncSession, found: tuple[ApiKey, Organization] | None) -> Principal | None:
        if found is None:
            return None
        key, org = found
        if key.expires_at is not None and key.expires_at <= time.time():
            return None
        accepted = frozenset((row.model_id, row.license) for row in await licenses.of_org(session, org.id))
        return principal_of(key, org, await repos.org_ancestors(session, org), accepted)


def principal_of(
    key: ApiKey, org: Organization, ancestors: list[Organization], accepted: frozenset[tuple[str, str]] = frozenset()
) -> Principal:
    """``ancestors``: the organization's resellers, its parent first; ``accepted``: the licenses it accepted."""
    suspended: str | None
    if org.suspended_at:
        suspended = org.suspended_reason or "suspended by the operator"
    else:  # a reseller's customers are not told who their reseller is, nor why it was suspended
        suspended = "suspended by your provider" if any(o.suspended_at for o in ancestors) else None
    resellers = tuple((o.id, Margin(Decimal(o.resale_percent), Decimal(o.resale_fixed))) for o in reversed(ancestors))
    return Principal(
        org_id=org.id,
        org_name=org.name,
        key_id=key.id,
        key_kind=key.kind,
        tier=org.tier,
        allowed_models=frozenset(json.loads(key.allowed_models)) if key.allowed_models else None,
        budget_nanos=key.budget_nanos,
        budget_period=key.budget_period,
        period_budget_nanos=key.period_budget_nanos,
        key_limits=KeyLimits(key.requests_per_minute, key.tokens_per_minute, key.max_concurrent),
        org_limits=KeyLimits(org.requests_per_minute, org.tokens_per_minute, org.max_concurrent),
        resellers=resellers,
        retention_days=org.retention_days or None,
        suspended=suspended,
        accepted_licenses=accepted,
    )


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
