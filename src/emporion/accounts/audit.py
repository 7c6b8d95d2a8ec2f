"""The audit trail: who changed what in accounts, when, and the object before and after.

Every change the accounts service makes records one event in its own transaction, so a change
without its event (or an event without its change) cannot exist. An event says who acted (an
API key, the operator at the command line, or the system at first start), the action
(``organization.create``, ``key.revoke``, ``credit.top_up``, ``price.set``, ...), the object (type and
id), the organization it concerns, and snapshots of the object before and after: never a secret
(a key is its prefix, never its plaintext nor its hash), money as ``*_nanos`` integers beside
``*_usd`` strings. An operation that changes nothing records nothing.

What an admin key is shown of an event is cut to its reach: who acted and any organization named
in a snapshot (a parent, a transfer's source) appear only when that organization is in reach too,
so a reseller's customer never learns its reseller from its own trail.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from emporion.accounts.schemas import plain, usd_fields, usd_text_fields
from emporion.auth.principal import Principal
from emporion.settings import OPERATOR_TIER
from emporion.store import audit as store
from emporion.store.orgs import Balance
from emporion.store.tables import ApiKey, AuditEvent, MarginRow, Member, Organization, Preset, PriceRow

ActorKind = Literal["key", "cli", "system"]
Snapshot = dict[str, Any]
NAMED_ORGS = ("parent_id", "source_org_id")  # snapshot fields naming another organization


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: ``principal`` holds its rights (a key's, or the operator's for the CLI and the
    system), ``kind`` and ``name`` how the trail records it."""

    principal: Principal
    kind: ActorKind = "key"
    name: str | None = None


def by_key(principal: Principal) -> Actor:
    return Actor(principal)


def operator_principal() -> Principal:
    """The operator's rights, held by no key of any organization (so no organization is its own)."""
    return Principal(org_id="", org_name="", key_id="", key_kind="operator", tier=OPERATOR_TIER)


def at_cli() -> Actor:
    """The operator at the command line, recorded with the OS user that ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        user = "unknown"
    return Actor(operator_principal(), "cli", f"cli:{user}")


SYSTEM = Actor(operator_principal(), "system", "first start")


# --- snapshots: objects as the trail keeps them ----------------------------------------------------


def org_snapshot(org: Organization) -> Snapshot:
    return {
        "id": org.id,
        "name": org.name,
        "parent_id": org.parent_id,
        "created_at": org.created_at,
        "tier": org.tier,
        "tier_pinned": org.tier_pinned,
        "suspended_at": org.suspended_at,
        "suspended_reason": org.suspended_reason,
        "suspended_by_operator": org.suspended_by_operator,
        "resale_percent": plain(org.resale_percent),
        **usd_text_fields("resale_fixed", org.resale_fixed),
        "requests_per_minute": org.requests_per_minute,
        "tokens_per_minute": org.tokens_per_minute,
        "max_concurrent": org.max_concurrent,
        "retention_days": org.retention_days,
    }


def balance_snapshot(balance: Balance) -> Snapshot:
    return {
        **usd_fields("balance", balance.balance_nanos),
        **usd_fields("held", balance.held_nanos),
        **usd_fields("available", balance.available_nanos),
    }


def key_snapshot(key: ApiKey) -> Snapshot:
    """Its prefix, never the key nor its hash."""
    return {
        "id": key.id,
        "org_id": key.org_id,
        "kind": key.kind,
        "label": key.label,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "allowed_models": None if key.allowed_models is None else json.loads(key.allowed_models),
        **usd_fields("budget", key.budget_nanos),
        "budget_period": key.budget_period,
        **usd_fields("period_budget", key.period_budget_nanos),
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_minute": key.tokens_per_minute,
        "max_concurrent": key.max_concurrent,
    }


def member_snapshot(member: Member) -> Snapshot:
    return {"id": member.id, "org_id": member.org_id, "email": member.email, "role": member.role, "created_at": member.created_at}


def preset_snapshot(preset: Preset) -> Snapshot:
    return {
        "id": preset.id,
        "org_id": preset.org_id,
        "name": preset.name,
        **json.loads(preset.config),
        "created_at": preset.created_at,
        "updated_at": preset.updated_at,
    }


def price_snapshot(row: PriceRow) -> Snapshot:
    return {
        "id": row.id,
        "model": row.model_id,
        "upstream": row.upstream,
        "prompt": plain(row.prompt),
        "completion": plain(row.completion),
        "cached_prompt": plain(row.cached_prompt),
        "cache_write": plain(row.cache_write),
        "request": plain(row.request),
        "effective_at": row.effective_at,
    }


def margin_snapshot(row: MarginRow) -> Snapshot:
    return {
        "id": row.id,
        "model": row.model_id or None,
        "percent": plain(row.percent),
        **usd_text_fields("fixed", row.fixed),
        "effective_at": row.effective_at,
    }


# --- writing and showing events ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    action: str
    object_type: str
    object_id: str
    org_id: str | None  # the organization it concerns; None: the operator's own (prices, margins)
    before: Snapshot | None = None  # None: the object is new
    after: Snapshot | None = None  # None: the object is gone


async def record(session: AsyncSession, actor: Actor, change: Change) -> bool:
    """Appends the event of ``change`` in the session's transaction; nothing when nothing changed."""
    if change.before == change.after:
        return False
    principal = actor.principal
    await store.append(
        session,
        {
            "created_at_ms": int(time.time() * 1000),
            "actor_kind": actor.kind,
            "actor_key_id": principal.key_id or None,
            "actor_org_id": principal.org_id or None,
            "actor_name": actor.name,
            "action": change.action,
            "object_type": change.object_type,
            "object_id": change.object_id,
            "org_id": change.org_id,
            "before": _json(change.before),
            "after": _json(change.after),
        },
    )
    return True


def event_object(row: AuditEvent, reach: frozenset[str] | None) -> dict[str, Any]:
    """An event as a key with ``reach`` (None: the operator's, everything) is shown it."""
    shown = reach is None or row.actor_org_id in reach
    return {
        "object": "audit.event",
        "id": row.id,
        "created_at": row.created_at_ms // 1000,
        "created_at_ms": row.created_at_ms,
        "actor": {
            "kind": row.actor_kind,
            "key_id": row.actor_key_id if shown else None,
            "org_id": row.actor_org_id if shown else None,
            "name": row.actor_name if shown else None,
        },
        "action": row.action,
        "object_type": row.object_type,
        "object_id": row.object_id,
        "org_id": row.org_id,
        "before": _within(_loaded(row.before), reach),
        "after": _within(_loaded(row.after), reach),
    }


def _json(snapshot: Snapshot | None) -> str | None:
    return None if snapshot is None else json.dumps(snapshot, sort_keys=True, separators=(",", ":"))


def _loaded(text: str | None) -> Snapshot | None:
    return None if text is None else json.loads(text)


def _within(snapshot: Snapshot | None, reach: frozenset[str] | None) -> Snapshot | None:
    if snapshot is None or reach is None:
        return snapshot
    return {name: None if name in NAMED_ORGS and value not in reach else value for name, value in snapshot.items()}
