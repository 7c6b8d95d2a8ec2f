"""The admin API, ``/admin/v1``: organizations and sub-organizations, members, keys, credits,
prices, margins and tiers.

Admin keys manage their organization's tree; operator keys manage everything. An organization
outside a key's reach answers exactly as an unknown id (404), and what is refused by kind of key
is refused before any id is looked at (403), so no answer tells one tenant about another.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.admin import schemas
from emporion.api.body import invalid_request, no_nul, read_body
from emporion.api.openai.routes import authenticate, json_response
from emporion.auth.principal import Principal
from emporion.auth.scope import require_admin, require_operator, visible_org
from emporion.core.money import Nanos, format_usd, to_nanos
from emporion.core.prices import Margin, Price
from emporion.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from emporion.metering import credits
from emporion.pipeline import Deps
from emporion.store import orgs, repos
from emporion.store.tables import ApiKey, MarginRow, Member, Organization, PriceRow

PREFIX = "/admin/v1"


# --- helpers -----------------------------------------------------------------------------------


async def _admin(request: Request) -> tuple[Deps, Principal]:
    deps, principal = await authenticate(request)
    require_admin(principal)
    return deps, principal


async def _operator(request: Request) -> tuple[Deps, Principal]:
    deps, principal = await _admin(request)
    require_operator(principal)
    return deps, principal


async def _body(request: Request, deps: Deps, schema: type[schemas.Body], optional: bool = False) -> Any:
    """The body validated into ``schema``; ``optional``: no body at all means every default."""
    raw = await read_body(request, deps.settings.server.max_body_bytes)
    if b"\\u0000" in raw:
        raise InvalidRequest("Invalid body: text cannot contain NUL characters (\\u0000).", code="invalid_value")
    if optional and not raw.strip():
        return schema()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None


@contextlib.asynccontextmanager
async def _writing(deps: Deps) -> AsyncIterator[AsyncSession]:
    """One transaction; a uniqueness race lost to another request is a 409, not a 500."""
    try:
        async with deps.db.session() as session, session.begin():
            yield session
    except IntegrityError:
        raise Conflict("This conflicts with a change made at the same time; try again.") from None


async def _visible(deps: Deps, principal: Principal, org_id: str, param: str = "org_id") -> Organization:
    """The organization when in reach; else 404, whose message does not even repeat the id."""
    try:
        return await visible_org(deps.db, principal, org_id)
    except NotFound:
        raise NotFound("No such organization.", param=param, code="organization_not_found") from None


async def _reached(deps: Deps, principal: Principal, request: Request) -> Organization:
    return await _visible(deps, principal, no_nul(request.path_params["org_id"], "org_id"))


def _not_own(principal: Principal, org: Organization, what: str) -> None:
    if org.id == principal.org_id:
        raise PermissionDenied(f"A key cannot {what} its own organization.", code="own_organization")


def _operators_suspension(principal: Principal, org: Organization) -> None:
    if org.suspended_at and org.suspended_by_operator and principal.key_kind != "operator":
        raise PermissionDenied("The operator suspended this organization; only the operator can change that.", code="operator_key_required")


def _check_tier(deps: Deps, tier: str | None) -> None:
    if tier is not None and not deps.settings.knows_tier(tier):
        names = ", ".join(deps.settings.tier_names)
        raise InvalidRequest(f"Unknown tier `{tier}`; the tiers are {names}.", param="tier", code="invalid_value")


def _usd_text(text: str) -> dict[str, Any]:
    amount = to_nanos(Decimal(text))
    return {"usd": format_usd(amount), "nanos": amount}


def _money(name: str, amount: int | None) -> dict[str, Any]:
    return {f"{name}_usd": None if amount is None else format_usd(Nanos(amount)), f"{name}_nanos": amount}


def org_object(principal: Principal, org: Organization, balance: orgs.Balance | None = None) -> dict[str, Any]:
    """An organization as a key in reach sees it: the parent is named only when it is in reach too
    (a reseller's customers are not told whom their reseller buys from)."""
    fixed = _usd_text(org.resale_fixed)
    shown_parent = principal.key_kind == "operator" or org.id != principal.org_id
    body: dict[str, Any] = {
        "object": "organization", "id": org.id, "name": org.name, "created_at": org.created_at,
        "parent_id": org.parent_id if shown_parent else None, "tier": org.tier, "tier_pinned": org.tier_pinned,
        "suspended": org.suspended_at is not None, "suspended_at": org.suspended_at, "suspended_reason": org.suspended_reason,
        "resale_percent": schemas.plain(org.resale_percent),
        "resale_fixed_usd": fixed["usd"], "resale_fixed_nanos": fixed["nanos"],
        "requests_per_minute": org.requests_per_minute, "tokens_per_minute": org.tokens_per_minute,
        "max_concurrent": org.max_concurrent,
    }  # fmt: skip
    if balance is not None:
        body |= _balance(balance)
    return body


def _balance(balance: orgs.Balance) -> dict[str, Any]:
    return {**_money("balance", balance.balance_nanos), **_money("held", balance.held_nanos), **_money("available", balance.available_nanos)}


def key_object(key: ApiKey) -> dict[str, Any]:
    """Never the key itself: only its prefix."""
    return {
        "object": "api_key", "id": key.id, "org_id": key.org_id, "kind": key.kind, "label": key.label,
        "prefix": key.prefix, "created_at": key.created_at, "expires_at": key.expires_at, "revoked_at": key.revoked_at,
        "allowed_models": None if key.allowed_models is None else json.loads(key.allowed_models),
        **_money("budget", key.budget_nanos), "budget_period": key.budget_period, **_money("period_budget", key.period_budget_nanos),
        "requests_per_minute": key.requests_per_minute, "tokens_per_minute": key.tokens_per_minute,
        "max_concurrent": key.max_concurrent,
    }  # fmt: skip


def member_object(member: Member) -> dict[str, Any]:
    return {"object": "organization.member", "id": member.id, "org_id": member.org_id, "email": member.email,
            "role": member.role, "created_at": member.created_at}  # fmt: skip


def price_object(row: PriceRow) -> dict[str, Any]:
    plain = schemas.plain
    return {"object": "price", "id": row.id, "model": row.model_id, "upstream": row.upstream, "prompt": plain(row.prompt),
            "completion": plain(row.completion), "cached_prompt": plain(row.cached_prompt), "cache_write": plain(row.cache_write),
            "request": plain(row.request), "effective_at": row.effective_at, "created_at": row.created_at}  # fmt: skip


def margin_object(row: MarginRow) -> dict[str, Any]:
    fixed = _usd_text(row.fixed)
    return {"object": "margin", "id": row.id, "model": row.model_id or None, "percent": schemas.plain(row.percent),
            "fixed_usd": fixed["usd"], "fixed_nanos": fixed["nanos"], "effective_at": row.effective_at,
            "created_at": row.created_at}  # fmt: skip


def _list(data: list[dict[str, Any]]) -> Response:
    return json_response({"object": "list", "data": data})


# --- organizations -----------------------------------------------------------------------------


async def create_org(request: Request) -> Response:
    deps, principal = await _admin(request)
    body: schemas.CreateOrganization = await _body(request, deps, schemas.CreateOrganization)
    parent_id = body.parent_id
    if principal.key_kind != "operator":
        if body.tier is not None:
            require_operator(principal)
        parent_id = parent_id or principal.org_id  # an admin key creates sub-organizations of its tree only
    if parent_id is not None:
        await _visible(deps, principal, parent_id, param="parent_id")
    _check_tier(deps, body.tier)
    async with _writing(deps) as session:  # names are unique within the parent only: no other tenant's name is told
        if await orgs.org_named(session, body.name, parent_id) is not None:
            where = "here" if parent_id is None else "under this parent"
            raise Conflict(f"An organization named `{body.name}` already exists {where}.", param="name", code="organization_exists")
        org = await repos.create_org(session, body.name, parent_id=parent_id, tier=body.tier or next(iter(deps.settings.tiers)))
        org.tier_pinned = body.tier is not None
    await credits.welcome(deps.ledger, deps.settings, org.id, org.parent_id)
    async with deps.db.session() as session:
        return json_response(org_object(principal, org, await orgs.balance_of(session, org.id)))


async def list_orgs(request: Request) -> Response:
    deps, principal = await _admin(request)
    async with deps.db.session() as session:
        found = await orgs.list_orgs(session, None if principal.key_kind == "operator" else principal.org_id)
    return _list([org_object(principal, org) for org in found])


async def get_org(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    async with deps.db.session() as session:
        return json_response(org_object(principal, org, await orgs.balance_of(session, org.id)))


async def update_org(request: Request) -> Response:
    """The operator sets anything; an admin key sets the resale markup of its own organization
    (what it adds when it sells to its sub-organizations)."""
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    body: schemas.UpdateOrganization = await _body(request, deps, schemas.UpdateOrganization)
    given = body.model_fields_set
    if principal.key_kind != "operator":
        if given & schemas.LIMIT_FIELDS:
            require_operator(principal)
        if given & schemas.RESALE_FIELDS and org.id != principal.org_id:
            raise PermissionDenied("An admin key sets the resale markup of its own organization only.", code="own_organization_only")
    async with _writing(deps) as session:
        row = await session.get(Organization, org.id)
        assert row is not None
        if "resale_percent" in given:
            row.resale_percent = str(body.resale_percent)
        if "resale_fixed_usd" in given:
            row.resale_fixed = str(body.resale_fixed_usd)
        for name in given & schemas.LIMIT_FIELDS:
            setattr(row, name, getattr(body, name))
    deps.auth.forget()
    return json_response(org_object(principal, row))


async def suspend_org(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    _not_own(principal, org, "suspend")
    body: schemas.Suspend = await _body(request, deps, schemas.Suspend, optional=True)
    async with _writing(deps) as session:
        row = await session.get(Organization, org.id)
        assert row is not None
        _operators_suspension(principal, row)
        row.suspended_at = row.suspended_at or int(time.time())
        row.suspended_reason = body.reason or None
        row.suspended_by_operator = principal.key_kind == "operator"
    deps.auth.forget()
    return json_response(org_object(principal, row))


async def restore_org(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    _not_own(principal, org, "restore")
    async with _writing(deps) as session:
        row = await session.get(Organization, org.id)
        assert row is not None
        _operators_suspension(principal, row)
        row.suspended_at, row.suspended_reason, row.suspended_by_operator = None, None, False
    deps.auth.forget()
    return json_response(org_object(principal, row))


async def set_tier(request: Request) -> Response:
    """Pinned (the default), the tier stays until set again; unpinned, it floats with paid spend and age."""
    deps, principal = await _operator(request)
    org = await _reached(deps, principal, request)
    body: schemas.SetTier = await _body(request, deps, schemas.SetTier)
    _check_tier(deps, body.tier)
    async with _writing(deps) as session:
        row = await session.get(Organization, org.id)
        assert row is not None
        if body.tier is not None:
            row.tier = body.tier
        row.tier_pinned = body.pinned
    if not body.pinned:
        await credits.refresh_tiers(deps.db, deps.settings)
    deps.auth.forget()
    async with deps.db.session() as session:
        return json_response(org_object(principal, await session.get(Organization, org.id)))  # type: ignore[arg-type]


# --- members -----------------------------------------------------------------------------------


async def add_member(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    body: schemas.AddMember = await _body(request, deps, schemas.AddMember)
    async with _writing(deps) as session:
        member = await orgs.add_member(session, org.id, body.email, body.role)
    if member is None:
        raise Conflict(f"`{body.email}` is already a member of this organization.", param="email", code="member_exists")
    return json_response(member_object(member))


async def list_members(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    async with deps.db.session() as session:
        return _list([member_object(m) for m in await orgs.members_of(session, org.id)])


async def remove_member(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    member_id = no_nul(request.path_params["member_id"], "member_id")
    async with _writing(deps) as session:
        member = await session.get(Member, member_id)
        if member is None or member.org_id != org.id:
            raise NotFound("No such member in this organization.", param="member_id", code="member_not_found")
        if not await orgs.remove_member(session, member):
            raise Conflict("An organization keeps at least one owner.", param="member_id", code="last_owner")
    return json_response({"object": "organization.member.deleted", "id": member_id, "deleted": True})


# --- keys --------------------------------------------------------------------------------------


async def create_key(request: Request) -> Response:
    """The key itself is in this answer and nowhere else, ever: only its hash is stored."""
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    body: schemas.CreateKey = await _body(request, deps, schemas.CreateKey)
    if body.kind == "operator":
        require_operator(principal)
    for model in body.allowed_models or []:
        if not deps.catalog.has(model):
            raise NotFound(f"The model `{model}` does not exist.", param="allowed_models", code="model_not_found")
    async with _writing(deps) as session:
        new, row = await orgs.create_key(session, org, body.columns())
    return json_response({**key_object(row), "key": new.plaintext})


async def list_keys(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    async with deps.db.session() as session:
        return _list([key_object(key) for key in await orgs.keys_of(session, org.id)])


async def revoke_key(request: Request) -> Response:
    deps, principal = await _admin(request)
    key_id = no_nul(request.path_params["key_id"], "key_id")
    unknown = NotFound("No such API key.", param="key_id", code="key_not_found")
    async with deps.db.session() as session:
        key = await session.get(ApiKey, key_id)
    if key is None:
        raise unknown
    try:
        await _visible(deps, principal, key.org_id)
    except NotFound:
        raise unknown from None
    if key.kind == "operator":
        require_operator(principal)
    async with _writing(deps) as session:
        row = await session.get(ApiKey, key_id)
        assert row is not None
        row.revoked_at = row.revoked_at or int(time.time())
    deps.auth.forget()
    return json_response(key_object(row))


# --- credits -----------------------------------------------------------------------------------


async def add_credit(request: Request) -> Response:
    """Money in: a top-up (cash received) or a grant (free credit), by the operator; or a transfer
    from the organization's reseller (its parent), by an admin key of the reseller, out of what
    the reseller has available. ``reference`` makes it idempotent: the same reference twice
    credits once (``applied`` false the second time); the reference again with another amount
    is a 422 ``reference_reused``."""
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    body: schemas.AddCredit = await _body(request, deps, schemas.AddCredit)
    amount = to_nanos(body.amount_usd)
    if body.kind == "transfer":
        if org.parent_id is None:
            raise InvalidRequest("This organization has no reseller to transfer credit from.", param="kind", code="no_reseller")
        try:
            await visible_org(deps.db, principal, org.parent_id)
        except NotFound:
            raise PermissionDenied("Only the organization's reseller can transfer credit to it.", code="not_reseller") from None
    else:
        require_operator(principal)
    applied = await credits.add_credit(deps.ledger, body.kind, org.id, amount, body.reference, source_org=org.parent_id)
    if body.kind != "grant":  # money paid moves tiers
        await credits.refresh_tiers(deps.db, deps.settings)
        deps.auth.forget()
    async with deps.db.session() as session:
        balance = await orgs.balance_of(session, org.id)
        tier = (await session.get(Organization, org.id)).tier  # type: ignore[union-attr]
    return json_response({
        "object": "organization.credit", "org_id": org.id, "kind": body.kind, **_money("amount", amount),
        "reference": body.reference, "applied": applied, "tier": tier, **_balance(balance),
    })  # fmt: skip


async def get_credits(request: Request) -> Response:
    deps, principal = await _admin(request)
    org = await _reached(deps, principal, request)
    async with deps.db.session() as session:
        balance = await orgs.balance_of(session, org.id)
    return json_response({"object": "organization.credits", "org_id": org.id, **_balance(balance)})


async def refund_generation(request: Request) -> Response:
    deps, _ = await _operator(request)
    request_id = no_nul(request.path_params["request_id"], "request_id")
    async with deps.db.session() as session:
        charged, refunded = await orgs.charge_state(session, request_id)
    if not charged:
        raise NotFound(f"No charged generation with id `{request_id}`.", param="request_id", code="generation_not_found")
    if refunded:
        raise Conflict(f"The generation `{request_id}` was refunded already.", param="request_id", code="already_refunded")
    amount = await deps.ledger.refund(request_id)
    return json_response({"object": "generation.refund", "id": request_id, "refunded": amount > 0, **_money("amount", amount)})


# --- prices and margins ------------------------------------------------------------------------


async def set_price(request: Request) -> Response:
    deps, _ = await _operator(request)
    body: schemas.SetPrice = await _body(request, deps, schemas.SetPrice)
    model = deps.catalog.get(body.model)
    upstreams = {deployment.upstream for deployment in model.deployments}
    if body.upstream and body.upstream not in upstreams:
        raise InvalidRequest(
            f"The model `{model.id}` is not deployed on `{body.upstream}` (it is on {', '.join(sorted(upstreams))}).",
            param="upstream", code="invalid_value",
        )  # fmt: skip
    price = Price(body.prompt, body.completion, body.cached_prompt, body.cache_write, body.request)
    effective_at = int(time.time()) if body.effective_at is None else body.effective_at
    row_id = await deps.pricebook.set_price(model.id, price, body.upstream, effective_at)
    async with deps.db.session() as session:
        return json_response(price_object(await session.get(PriceRow, row_id)))  # type: ignore[arg-type]


async def list_prices(request: Request) -> Response:
    deps, _ = await _operator(request)
    async with deps.db.session() as session:
        rows = await orgs.price_rows(session, no_nul(request.query_params.get("model") or "", "model") or None)
    return _list([price_object(row) for row in rows])


async def set_margin(request: Request) -> Response:
    deps, _ = await _operator(request)
    body: schemas.SetMargin = await _body(request, deps, schemas.SetMargin)
    model_id = "" if body.model is None else deps.catalog.get(body.model).id
    effective_at = int(time.time()) if body.effective_at is None else body.effective_at
    row_id = await deps.pricebook.set_margin(Margin(body.percent, body.fixed_usd), model_id, effective_at)
    async with deps.db.session() as session:
        return json_response(margin_object(await session.get(MarginRow, row_id)))  # type: ignore[arg-type]


async def list_margins(request: Request) -> Response:
    deps, _ = await _operator(request)
    async with deps.db.session() as session:
        rows = await orgs.margin_rows(session, no_nul(request.query_params.get("model") or "", "model") or None)
    return _list([margin_object(row) for row in rows])


ORG = PREFIX + "/organizations/{org_id}"

routes: list[Route] = [
    Route(PREFIX + "/organizations", create_org, methods=["POST"]),
    Route(PREFIX + "/organizations", list_orgs, methods=["GET"]),
    Route(ORG, get_org, methods=["GET"]),
    Route(ORG, update_org, methods=["PATCH"]),
    Route(ORG + "/suspend", suspend_org, methods=["POST"]),
    Route(ORG + "/restore", restore_org, methods=["POST"]),
    Route(ORG + "/tier", set_tier, methods=["POST"]),
    Route(ORG + "/members", add_member, methods=["POST"]),
    Route(ORG + "/members", list_members, methods=["GET"]),
    Route(ORG + "/members/{member_id}", remove_member, methods=["DELETE"]),
    Route(ORG + "/keys", create_key, methods=["POST"]),
    Route(ORG + "/keys", list_keys, methods=["GET"]),
    Route(PREFIX + "/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route(ORG + "/credits", add_credit, methods=["POST"]),
    Route(ORG + "/credits", get_credits, methods=["GET"]),
    Route(PREFIX + "/generations/{request_id}/refund", refund_generation, methods=["POST"]),
    Route(PREFIX + "/prices", set_price, methods=["POST"]),
    Route(PREFIX + "/prices", list_prices, methods=["GET"]),
    Route(PREFIX + "/margins", set_margin, methods=["POST"]),
    Route(PREFIX + "/margins", list_margins, methods=["GET"]),
]
