"""The accounts service: every operation on organizations, members, keys, credits, prices, margins
and tiers, for the admin API and the CLI alike (the console will be a third caller).

Each operation takes the actor (audit.Actor: a key's principal, or the operator at the command
line), checks its rights the way auth/scope.py and rules.py say (an organization out of reach is
a 404 exactly as an unknown id; what the kind of key may not do is a 403), makes the change in
one transaction and records its audit event in that same transaction: the change and its event
commit together, and a refused or failed operation leaves neither.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.accounts import rules, schemas
from emporion.accounts.audit import (
    SYSTEM,
    Actor,
    Change,
    Snapshot,
    balance_snapshot,
    event_object,
    key_snapshot,
    margin_snapshot,
    member_snapshot,
    org_snapshot,
    preset_snapshot,
    price_snapshot,
    record,
)
from emporion.accounts.keys import issue_key
from emporion.auth.keys import NewKey
from emporion.auth.scope import org_in_reach, require_admin, require_operator
from emporion.catalog.models import Catalog
from emporion.core.money import Nanos, to_nanos
from emporion.core.prices import Margin, Price
from emporion.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from emporion.metering import credits
from emporion.metering.ledger import Ledger
from emporion.metering.pricebook import PriceBook, insert_margin, insert_price
from emporion.settings import OPERATOR_TIER, Settings
from emporion.store import audit as audit_store
from emporion.store import licenses, orgs, presets, repos
from emporion.store.orgs import Balance
from emporion.store.session import Database
from emporion.store.tables import ApiKey, LicenseAcceptance, MarginRow, Member, Organization, Preset, PriceRow


@dataclass(frozen=True, slots=True)
class OrgDetails:
    org: Organization
    parent: Organization | None
    balance: Balance
    active_keys: int
    members: int


@dataclass(frozen=True, slots=True)
class Credited:
    org_id: str
    applied: bool  # False: the same reference credited before, nothing changed
    amount_nanos: Nanos
    tier: str  # after the credit (money paid moves tiers)
    balance: Balance


@dataclass(frozen=True, slots=True)
class AuditPage:
    data: list[dict[str, Any]]  # events as the actor is shown them, newest first
    has_more: bool


def _nothing() -> None:
    return None


class Accounts:
    """``forget``: drops what this process cached of keys and organizations (the authenticator's
    cache), called after a change that affects how requests are authenticated or limited."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        settings: Settings,
        pricebook: PriceBook,
        catalog: Catalog,
        forget: Callable[[], None] = _nothing,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings
        self.pricebook = pricebook
        self.catalog = catalog
        self.forget = forget

    # --- organizations -----------------------------------------------------------------------------

    async def create_org(self, actor: Actor, spec: schemas.CreateOrganization) -> tuple[Organization, Balance]:
        """A top-level organization gets the free credit; an admin key creates under its own tree only."""
        principal = actor.principal
        require_admin(principal)
        parent_id = spec.parent_id
        if principal.key_kind != "operator":
            if spec.tier is not None:
                require_operator(principal)
            parent_id = parent_id or principal.org_id
        async with self._change() as session:
            org = await self._new_org(session, actor, spec.name, parent_id, spec.tier)
            return org, await orgs.balance_of(session, org.id)

    async def list_orgs(self, actor: Actor) -> list[Organization]:
        principal = actor.principal
        require_admin(principal)
        async with self.db.session() as session:
            return await orgs.list_orgs(session, None if principal.key_kind == "operator" else principal.org_id)

    async def org_balances(self, actor: Actor) -> list[tuple[Organization, Balance]]:
        """The organizations in reach, each with its balance."""
        found = await self.list_orgs(actor)
        async with self.db.session() as session:
            balances = await orgs.balances_of(session, [org.id for org in found])
        return [(org, balances[org.id]) for org in found]

    async def organization(self, actor: Actor, org_id: str) -> Organization:
        """The organization in reach, or 404."""
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await self._reach(session, actor, org_id)

    async def get_org(self, actor: Actor, org_id: str) -> tuple[Organization, Balance]:
        require_admin(actor.principal)
        async with self.db.session() as session:
            org = await self._reach(session, actor, org_id)
            return org, await orgs.balance_of(session, org.id)

    async def org_details(self, actor: Actor, org_id: str) -> OrgDetails:
        require_admin(actor.principal)
        async with self.db.session() as session:
            org = await self._reach(session, actor, org_id)
            parent = None if org.parent_id is None else await org_in_reach(session, actor.principal, org.parent_id)
            balance, keys = await orgs.balance_of(session, org.id), await orgs.count_keys(session, org.id)
            return OrgDetails(org, parent, balance, keys, len(await orgs.members_of(session, org.id)))

    async def update_org(self, actor: Actor, org_id: str, spec: schemas.UpdateOrganization) -> Organization:
        """The operator sets anything; an admin key sets the resale markup of its own organization
        (what it adds when it sells to its sub-organizations). A limit set to None goes back to the tier's."""
        principal = actor.principal
        require_admin(principal)
        given = spec.model_fields_set
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            if principal.key_kind != "operator":
                if given & schemas.LIMIT_FIELDS:
                    require_operator(principal)
                if given & schemas.RESALE_FIELDS and org.id != principal.org_id:
                    raise PermissionDenied(
                        "An admin key sets the resale markup of its own organization only.", code="own_organization_only"
                    )
            before = org_snapshot(org)
            if "resale_percent" in given:
                org.resale_percent = str(spec.resale_percent)
            if "resale_fixed_usd" in given:
                org.resale_fixed = str(spec.resale_fixed_usd)
            for name in given & schemas.LIMIT_FIELDS:
                setattr(org, name, getattr(spec, name))
            if "retention_days" in given:
                org.retention_days = spec.retention_days or None
            await self._changed_org(session, actor, "organization.update", org, before)
        self.forget()
        return org

    async def suspend_org(self, actor: Actor, org_id: str, spec: schemas.Suspend) -> Organization:
        """Its keys, and those of everything under it, get 403 account_suspended."""
        principal = actor.principal
        require_admin(principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            rules.not_own(principal, org, "suspend")
            rules.operators_suspension(principal, org)
            before = org_snapshot(org)
            org.suspended_at = org.suspended_at or int(time.time())
            org.suspended_reason = spec.reason or None
            org.suspended_by_operator = principal.key_kind == "operator"
            await self._changed_org(session, actor, "organization.suspend", org, before)
        self.forget()
        return org

    async def restore_org(self, actor: Actor, org_id: str) -> Organization:
        principal = actor.principal
        require_admin(principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            rules.not_own(principal, org, "restore")
            rules.operators_suspension(principal, org)
            before = org_snapshot(org)
            org.suspended_at, org.suspended_reason, org.suspended_by_operator = None, None, False
            await self._changed_org(session, actor, "organization.restore", org, before)
        self.forget()
        return org

    async def set_tier(self, actor: Actor, org_id: str, spec: schemas.SetTier) -> Organization:
        """Pinned, the tier stays until set again; unpinned, it floats with paid spend and age (at once
        to the tier earned so far)."""
        require_admin(actor.principal)
        require_operator(actor.principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            rules.known_tier(self.settings, spec.tier)
            before = org_snapshot(org)
            org.tier = spec.tier or org.tier
            org.tier_pinned = spec.pinned
            if not spec.pinned:
                await session.flush()
                await credits.refresh_tiers_in(await session.connection(), self.settings, org_ids=[org.id])
                await session.refresh(org)
            await self._changed_org(session, actor, "organization.set_tier", org, before)
        self.forget()
        return org

    # --- members -----------------------------------------------------------------------------------

    async def add_member(self, actor: Actor, org_id: str, spec: schemas.AddMember) -> Member:
        require_admin(actor.principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            member = await orgs.add_member(session, org.id, spec.email, spec.role)
            if member is None:
                raise Conflict(f"`{spec.email}` is already a member of this organization.", param="email", code="member_exists")
            await record(
                session, actor, Change("member.add", "organization.member", member.id, org.id, None, member_snapshot(member))
            )
            return member

    async def list_members(self, actor: Actor, org_id: str) -> list[Member]:
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await orgs.members_of(session, (await self._reach(session, actor, org_id)).id)

    async def find_member(self, actor: Actor, org_id: str, id_or_email: str) -> Member | None:
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await orgs.find_member(session, (await self._reach(session, actor, org_id)).id, id_or_email)

    async def remove_member(self, actor: Actor, org_id: str, member_id: str) -> Member:
        """Never the organization's last owner."""
        require_admin(actor.principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)  # one member change of an organization at a time
            member = await session.get(Member, member_id)
            if member is None or member.org_id != org.id:
                raise NotFound("No such member in this organization.", param="member_id", code="member_not_found")
            before = member_snapshot(member)
            if not await orgs.remove_member(session, member):
                raise Conflict("An organization keeps at least one owner.", param="member_id", code="last_owner")
            await record(session, actor, Change("member.remove", "organization.member", member.id, org.id, before, None))
            return member

    # --- presets -----------------------------------------------------------------------------------

    async def set_preset(self, actor: Actor, org_id: str, spec: schemas.SetPreset) -> Preset:
        """Creates the preset, or replaces the one of that name."""
        require_admin(actor.principal)
        rules.known_models(self.catalog, [spec.model] if spec.model else None, "model")
        rules.known_models(self.catalog, spec.models, "models")
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            preset, before = await presets.upsert(session, org.id, spec.name, spec.config())
            old = preset_snapshot(before) if before is not None else None
            await record(session, actor, Change("preset.set", "preset", preset.id, org.id, old, preset_snapshot(preset)))
            return preset

    async def list_presets(self, actor: Actor, org_id: str) -> list[Preset]:
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await presets.listed(session, (await self._reach(session, actor, org_id)).id)

    async def get_preset(self, actor: Actor, org_id: str, name: str) -> Preset:
        require_admin(actor.principal)
        async with self.db.session() as session:
            found = await presets.get(session, (await self._reach(session, actor, org_id)).id, name)
        if found is None:
            raise NotFound(f"No preset named `{name}` in this organization.", param="name", code="preset_not_found")
        return found

    async def delete_preset(self, actor: Actor, org_id: str, name: str) -> Preset:
        require_admin(actor.principal)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            found = await presets.get(session, org.id, name)
            if found is None:
                raise NotFound(f"No preset named `{name}` in this organization.", param="name", code="preset_not_found")
            await session.delete(found)
            await record(session, actor, Change("preset.delete", "preset", found.id, org.id, preset_snapshot(found), None))
            return found

    # --- keys --------------------------------------------------------------------------------------

    async def create_key(self, actor: Actor, org_id: str, spec: schemas.CreateKey) -> tuple[NewKey, ApiKey]:
        """The key itself is in the answer and nowhere else, ever: only its hash is stored."""
        require_admin(actor.principal)
        async with self._change() as session:
            return await self._new_key(session, actor, await self._reach(session, actor, org_id), spec)

    async def create_key_with_org(
        self, actor: Actor, org: schemas.CreateOrganization, spec: schemas.CreateKey
    ) -> tuple[NewKey, ApiKey]:
        """A new organization (with its free credit when top-level) and its first key, in one transaction."""
        require_admin(actor.principal)
        async with self._change() as session:
            created = await self._new_org(session, actor, org.name, org.parent_id, org.tier)
            return await self._new_key(session, actor, created, spec)

    async def list_keys(self, actor: Actor, org_id: str) -> list[ApiKey]:
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await orgs.keys_of(session, (await self._reach(session, actor, org_id)).id)

    async def all_keys(self, actor: Actor) -> list[tuple[ApiKey, Organization]]:
        require_operator(actor.principal)
        async with self.db.session() as session:
            return await repos.list_keys(session)

    async def active_keys(self, actor: Actor, id_or_prefix: str) -> list[ApiKey]:
        """The active keys with this id or prefix."""
        require_operator(actor.principal)
        async with self.db.session() as session:
            return await orgs.active_keys_matching(session, id_or_prefix)

    async def revoke_key(self, actor: Actor, key_id: str) -> ApiKey:
        """Requests with it fail with 401 (within ``auth_cache_s`` on other replicas). A key out of
        reach is a 404 exactly as an unknown one; an operator key is the operator's to revoke."""
        principal = actor.principal
        require_admin(principal)
        unknown = NotFound("No such API key.", param="key_id", code="key_not_found")
        async with self._change() as session:
            key = await session.get(ApiKey, key_id, with_for_update=True)
            if key is None or await org_in_reach(session, principal, key.org_id) is None:
                raise unknown
            if key.kind == "operator":
                require_operator(principal)
            before = key_snapshot(key)
            key.revoked_at = key.revoked_at or int(time.time())
            await session.flush()
            await record(session, actor, Change("key.revoke", "api_key", key.id, key.org_id, before, key_snapshot(key)))
        self.forget()
        return key

    # --- credits -----------------------------------------------------------------------------------

    async def add_credit(self, actor: Actor, org_id: str, spec: schemas.AddCredit) -> Credited:
        """Money in: a top-up (cash received) or a grant (free credit), by the operator; or a transfer
        from the organization's reseller (its parent), by an admin key of the reseller, out of what
        the reseller has available. ``reference`` makes it idempotent: the same reference twice
        credits once (``applied`` False the second time); the reference again with another amount
        is a 422 ``reference_reused``."""
        principal = actor.principal
        require_admin(principal)
        amount = to_nanos(spec.amount_usd)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            if spec.kind == "transfer":
                if org.parent_id is None:
                    raise InvalidRequest(
                        "This organization has no reseller to transfer credit from.", param="kind", code="no_reseller"
                    )
                if await org_in_reach(session, principal, org.parent_id) is None:
                    raise PermissionDenied("Only the organization's reseller can transfer credit to it.", code="not_reseller")
            else:
                require_operator(principal)
            conn = await session.connection()
            before = {**balance_snapshot(await orgs.balance_of(session, org.id)), "tier": org.tier}
            applied = await credits.add_credit(
                self.ledger, conn, spec.kind, org.id, amount, spec.reference, source_org=org.parent_id
            )
            if spec.kind != "grant":  # money paid moves tiers
                await credits.refresh_tiers_in(conn, self.settings, org_ids=[org.id])
                await session.refresh(org)
            balance = await orgs.balance_of(session, org.id)
            if applied:
                movement = {**schemas.usd_fields("amount", amount), "reference": spec.reference}
                if spec.kind == "transfer":
                    movement["source_org_id"] = org.parent_id
                after = {**balance_snapshot(balance), "tier": org.tier, **movement}
                await record(session, actor, Change(f"credit.{spec.kind}", "organization", org.id, org.id, before, after))
        if spec.kind != "grant":
            self.forget()
        return Credited(org.id, applied, amount, org.tier, balance)

    async def balance(self, actor: Actor, org_id: str) -> Balance:
        require_admin(actor.principal)
        await self.ledger.flush()
        async with self.db.session() as session:
            return await orgs.balance_of(session, (await self._reach(session, actor, org_id)).id)

    async def refund(self, actor: Actor, request_id: str) -> Nanos:
        """Gives a generation's charge back, every share reversed, once (operator)."""
        require_admin(actor.principal)
        require_operator(actor.principal)
        await self.ledger.flush()  # a charge written behind is in the books before it is refunded
        async with self._change() as session:
            charged, refunded = await orgs.charge_state(session, request_id)
            if not charged:
                raise NotFound(f"No charged generation with id `{request_id}`.", param="request_id", code="generation_not_found")
            if refunded:
                raise Conflict(
                    f"The generation `{request_id}` was refunded already.", param="request_id", code="already_refunded"
                )
            amount = await credits.refund(self.ledger, await session.connection(), request_id)
            if amount > 0:  # 0: refunded meanwhile by another call
                after = {"refunded": True, **schemas.usd_fields("amount", amount)}
                change = Change(
                    "generation.refund",
                    "generation",
                    request_id,
                    await orgs.charged_org(session, request_id),
                    {"refunded": False},
                    after,
                )
                await record(session, actor, change)
        return amount

    # --- prices and margins ------------------------------------------------------------------------

    async def set_price(self, actor: Actor, spec: schemas.SetPrice) -> PriceRow:
        """A new price version from ``effective_at`` (default now) on; past requests keep theirs."""
        require_admin(actor.principal)
        require_operator(actor.principal)
        model = self.catalog.get(spec.model)
        rules.deployed_on(self.catalog, model.id, spec.upstream)
        price = Price(spec.prompt, spec.completion, spec.cached_prompt, spec.cache_write, spec.request)
        effective_at = int(time.time()) if spec.effective_at is None else spec.effective_at
        async with self._change() as session:
            row_id = await insert_price(await session.connection(), model.id, price, spec.upstream, effective_at)
            row = await session.get(PriceRow, row_id)
            assert row is not None
            await record(session, actor, Change("price.set", "price", str(row.id), None, None, price_snapshot(row)))
        await self.pricebook.load()
        return row

    async def list_prices(self, actor: Actor, model_id: str | None = None) -> list[PriceRow]:
        require_admin(actor.principal)
        require_operator(actor.principal)
        async with self.db.session() as session:
            return await orgs.price_rows(session, model_id)

    async def set_margin(self, actor: Actor, spec: schemas.SetMargin) -> MarginRow:
        """A new version of the operator's margin, for one model or the global one."""
        require_admin(actor.principal)
        require_operator(actor.principal)
        model_id = "" if spec.model is None else self.catalog.get(spec.model).id
        effective_at = int(time.time()) if spec.effective_at is None else spec.effective_at
        async with self._change() as session:
            row_id = await insert_margin(await session.connection(), Margin(spec.percent, spec.fixed_usd), model_id, effective_at)
            row = await session.get(MarginRow, row_id)
            assert row is not None
            await record(session, actor, Change("margin.set", "margin", str(row.id), None, None, margin_snapshot(row)))
        await self.pricebook.load()
        return row

    async def list_margins(self, actor: Actor, model_id: str | None = None) -> list[MarginRow]:
        require_admin(actor.principal)
        require_operator(actor.principal)
        async with self.db.session() as session:
            return await orgs.margin_rows(session, model_id)

    # --- license acceptances -----------------------------------------------------------------------

    async def accept_license(self, actor: Actor, org_id: str, spec: schemas.AcceptLicense) -> LicenseAcceptance:
        """An organization accepts a model's license, which that model's terms require before it
        serves the organization (``license_acceptance``). Accepting is the organization's own act:
        an admin key of the organization itself, or the operator (a key or the CLI, recorded as
        such); a reseller's admin key may not accept for its customers. The same license accepted
        again changes nothing; a license the model changed to is accepted anew."""
        principal = actor.principal
        require_admin(principal)
        model = self.catalog.get(spec.model)
        async with self._change() as session:
            org = await self._reach(session, actor, org_id, for_update=True)
            if principal.key_kind != "operator" and org.id != principal.org_id:
                raise PermissionDenied(
                    "A license is accepted by the organization itself: an admin key of this organization, or the operator.",
                    code="own_organization_only",
                )
            if not model.license_acceptance:
                raise InvalidRequest(
                    f"The model `{model.id}` serves without accepting its license: there is nothing to accept.",
                    param="model",
                    code="license_acceptance_not_required",
                )
            found = await licenses.find(session, org.id, model.id)
            if found is not None and found.license == model.license:
                return found
            by = actor.name if actor.kind != "key" else f"key:{principal.key_id}"
            row, before = await licenses.accept(session, org.id, model.id, model.license, by or actor.kind)
            old = None if before is None else license_snapshot(before)
            await record(
                session, actor, Change("license.accept", "license_acceptance", row.id, org.id, old, license_snapshot(row))
            )
        self.forget()
        return row

    async def list_licenses(self, actor: Actor, org_id: str) -> list[LicenseAcceptance]:
        require_admin(actor.principal)
        async with self.db.session() as session:
            return await licenses.of_org(session, (await self._reach(session, actor, org_id)).id)

    # --- the audit trail and the first start ---------------------------------------------------------

    async def audit(self, actor: Actor, query: schemas.AuditQuery) -> AuditPage:
        """Events concerning organizations in the actor's reach (the operator: every event), newest first."""
        principal = actor.principal
        require_admin(principal)
        async with self.db.session() as session:
            reach = None
            if principal.key_kind != "operator":
                reach = frozenset(org.id for org in await orgs.list_orgs(session, principal.org_id))
            if query.org_id is not None:
                await self._reach(session, actor, query.org_id)
            where = audit_store.AuditFilter(
                org_ids=reach,
                org_id=query.org_id,
                action=query.action,
                object_id=query.object_id,
                since_ms=None if query.since is None else int(query.since * 1000),
                until_ms=None if query.until is None else int(query.until * 1000),
                after=query.after,
                limit=query.limit,
            )
            rows, has_more = await audit_store.page(session, where)
        return AuditPage([event_object(row, reach) for row in rows], has_more)

    async def first_start(self) -> NewKey | None:
        """On an empty database: the operator's own organization (``default``, pinned to the operator's
        tier, with the free credit) and its first key; None when there are organizations already."""
        try:
            async with self._change() as session:
                if await repos.count_organizations(session):
                    return None
                org = await self._new_org(session, SYSTEM, repos.DEFAULT_ORG, None, OPERATOR_TIER)
                new, _ = await self._new_key(session, SYSTEM, org, schemas.CreateKey(label="first key"))
                return new
        except Conflict:  # another replica, starting at the same moment, made it
            return None

    # --- within a transaction ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[AsyncSession]:
        """One writer transaction (on SQLite the write lock from BEGIN on) holding the change, its
        ledger postings and its audit event: all of them commit, or none. A uniqueness race lost to
        another writer is a 409, not a 500."""
        try:
            async with self.db.engine.connect() as conn:
                await conn.execution_options(writer=True)
                async with AsyncSession(bind=conn, expire_on_commit=False) as session, session.begin():
                    yield session
        except BaseException as exc:
            self.ledger.rolled_back()  # accounts the ledger saw made in the rolled-back transaction were not
            if isinstance(exc, IntegrityError):
                raise Conflict("This conflicts with a change made at the same time; try again.") from None
            raise

    async def _reach(
        self, session: AsyncSession, actor: Actor, org_id: str, param: str = "org_id", *, for_update: bool = False
    ) -> Organization:
        """The organization when in reach; else 404, whose message does not even repeat the id."""
        org = await org_in_reach(session, actor.principal, org_id, for_update=for_update)
        if org is None:
            raise NotFound("No such organization.", param=param, code="organization_not_found")
        return org

    async def _new_org(
        self, session: AsyncSession, actor: Actor, name: str, parent_id: str | None, tier: str | None
    ) -> Organization:
        """Names are unique within the parent only: no other tenant's name is told. A tier given is pinned."""
        if parent_id is not None:
            await self._reach(session, actor, parent_id, param="parent_id")
        rules.known_tier(self.settings, tier)
        if await orgs.org_named(session, name, parent_id) is not None:
            where = "here" if parent_id is None else "under this parent"
            raise Conflict(f"An organization named `{name}` already exists {where}.", param="name", code="organization_exists")
        org = await repos.create_org(session, name, parent_id=parent_id, tier=tier or next(iter(self.settings.tiers)))
        org.tier_pinned = tier is not None
        await session.flush()
        await credits.welcome(self.ledger, await session.connection(), self.settings, org.id, org.parent_id)
        after = {**org_snapshot(org), **balance_snapshot(await orgs.balance_of(session, org.id))}
        await record(session, actor, Change("organization.create", "organization", org.id, org.id, None, after))
        return org

    async def _new_key(
        self, session: AsyncSession, actor: Actor, org: Organization, spec: schemas.CreateKey
    ) -> tuple[NewKey, ApiKey]:
        if spec.kind == "operator":
            require_operator(actor.principal)
        rules.known_models(self.catalog, spec.allowed_models)
        new, row = await issue_key(session, org, spec.columns())
        await record(session, actor, Change("key.create", "api_key", row.id, org.id, None, key_snapshot(row)))
        return new, row

    async def _changed_org(self, session: AsyncSession, actor: Actor, action: str, org: Organization, before: Snapshot) -> None:
        await session.flush()
        await record(session, actor, Change(action, "organization", org.id, org.id, before, org_snapshot(org)))


def license_snapshot(row: LicenseAcceptance) -> Snapshot:
    return {
        "id": row.id,
        "org_id": row.org_id,
        "model": row.model_id,
        "license": row.license,
        "accepted_by": row.accepted_by,
        "accepted_at": row.accepted_at,
    }
