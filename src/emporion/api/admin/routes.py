"""The admin API, ``/admin/v1``: organizations and sub-organizations, members, keys, credits,
prices, margins, tiers and the audit trail, as thin callers of the accounts service: parse and
validate, call it, render.

Admin keys manage their organization's tree; operator keys manage everything. An organization
outside a key's reach answers exactly as an unknown id (404), and what is refused by kind of key
is refused before any id is looked at (403), so no answer tells one tenant about another. Where a
route names an organization, it is looked up before the body is read (a 404 comes before a 400);
the service checks everything again in the transaction of the change.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.accounts import rules, schemas
from emporion.accounts.audit import (
    Actor,
    balance_snapshot,
    by_key,
    key_snapshot,
    margin_snapshot,
    member_snapshot,
    preset_snapshot,
    price_snapshot,
)
from emporion.accounts.service import Accounts
from emporion.api.body import invalid_request, no_nul, read_body, valid_unicode
from emporion.api.openai.routes import authenticate, json_response
from emporion.auth.principal import Principal
from emporion.auth.scope import require_admin, require_operator
from emporion.errors import InvalidRequest
from emporion.pipeline import Deps
from emporion.store import orgs
from emporion.store.tables import ApiKey, MarginRow, Member, Organization, Preset, PriceRow

PREFIX = "/admin/v1"


# --- helpers -----------------------------------------------------------------------------------


async def _admin(request: Request) -> tuple[Deps, Accounts, Actor]:
    deps, principal = await authenticate(request)
    require_admin(principal)
    accounts = Accounts(deps.db, deps.ledger, deps.settings, deps.pricebook, deps.catalog, deps.auth.forget)
    return deps, accounts, by_key(principal)


async def _operator(request: Request) -> tuple[Deps, Accounts, Actor]:
    deps, accounts, actor = await _admin(request)
    require_operator(actor.principal)
    return deps, accounts, actor


async def _body(request: Request, deps: Deps, schema: type[schemas.Body], optional: bool = False) -> Any:
    """The body validated into ``schema``; ``optional``: no body at all means every default."""
    raw = await read_body(request, deps.settings.server.max_body_bytes)
    valid_unicode(raw)
    if b"\\u0000" in raw:
        raise InvalidRequest("Invalid body: text cannot contain NUL characters (\\u0000).", code="invalid_value")
    if optional and not raw.strip():
        return schema()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def _org_id(request: Request) -> str:
    return no_nul(request.path_params["org_id"], "org_id")


async def _reached(accounts: Accounts, actor: Actor, request: Request) -> Organization:
    return await accounts.organization(actor, _org_id(request))


_money = schemas.usd_fields


def org_object(principal: Principal, org: Organization, balance: orgs.Balance | None = None) -> dict[str, Any]:
    """An organization as a key in reach sees it: the parent is named only when it is in reach too
    (a reseller's customers are not told whom their reseller buys from)."""
    fixed = schemas.usd_text_fields("resale_fixed", org.resale_fixed)
    shown_parent = principal.key_kind == "operator" or org.id != principal.org_id
    body: dict[str, Any] = {
        "object": "organization",
        "id": org.id,
        "name": org.name,
        "created_at": org.created_at,
        "parent_id": org.parent_id if shown_parent else None,
        "tier": org.tier,
        "tier_pinned": org.tier_pinned,
        "suspended": org.suspended_at is not None,
        "suspended_at": org.suspended_at,
        "suspended_reason": org.suspended_reason,
        "resale_percent": schemas.plain(org.resale_percent),
        **fixed,
        "requests_per_minute": org.requests_per_minute,
        "tokens_per_minute": org.tokens_per_minute,
        "max_concurrent": org.max_concurrent,
        "retention_days": org.retention_days or 0,
    }
    if balance is not None:
        body |= balance_snapshot(balance)
    return body


def key_object(key: ApiKey) -> dict[str, Any]:
    """Never the key itself: only its prefix (as the audit trail shows it)."""
    return {"object": "api_key", **key_snapshot(key)}


def member_object(member: Member) -> dict[str, Any]:
    return {"object": "organization.member", **member_snapshot(member)}


def price_object(row: PriceRow) -> dict[str, Any]:
    return {"object": "price", **price_snapshot(row), "created_at": row.created_at}


def margin_object(row: MarginRow) -> dict[str, Any]:
    return {"object": "margin", **margin_snapshot(row), "created_at": row.created_at}


def _list(data: list[dict[str, Any]]) -> Response:
    return json_response({"object": "list", "data": data})


# --- organizations -----------------------------------------------------------------------------


async def create_org(request: Request) -> Response:
    deps, accounts, actor = await _admin(request)
    body: schemas.CreateOrganization = await _body(request, deps, schemas.CreateOrganization)
    org, balance = await accounts.create_org(actor, body)
    return json_response(org_object(actor.principal, org, balance))


async def list_orgs(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return _list([org_object(actor.principal, org) for org in await accounts.list_orgs(actor)])


async def get_org(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    org, balance = await accounts.get_org(actor, _org_id(request))
    return json_response(org_object(actor.principal, org, balance))


async def update_org(request: Request) -> Response:
    """The operator sets anything; an admin key sets the resale markup of its own organization."""
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    body: schemas.UpdateOrganization = await _body(request, deps, schemas.UpdateOrganization)
    return json_response(org_object(actor.principal, await accounts.update_org(actor, org.id, body)))


async def suspend_org(request: Request) -> Response:
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    rules.not_own(actor.principal, org, "suspend")
    body: schemas.Suspend = await _body(request, deps, schemas.Suspend, optional=True)
    return json_response(org_object(actor.principal, await accounts.suspend_org(actor, org.id, body)))


async def restore_org(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return json_response(org_object(actor.principal, await accounts.restore_org(actor, _org_id(request))))


async def set_tier(request: Request) -> Response:
    """Pinned (the default), the tier stays until set again; unpinned, it floats with paid spend and age."""
    deps, accounts, actor = await _operator(request)
    org = await _reached(accounts, actor, request)
    body: schemas.SetTier = await _body(request, deps, schemas.SetTier)
    return json_response(org_object(actor.principal, await accounts.set_tier(actor, org.id, body)))


# --- members -----------------------------------------------------------------------------------


async def add_member(request: Request) -> Response:
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    body: schemas.AddMember = await _body(request, deps, schemas.AddMember)
    return json_response(member_object(await accounts.add_member(actor, org.id, body)))


async def list_members(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return _list([member_object(m) for m in await accounts.list_members(actor, _org_id(request))])


async def remove_member(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    member_id = no_nul(request.path_params["member_id"], "member_id")
    await accounts.remove_member(actor, org.id, member_id)
    return json_response({"object": "organization.member.deleted", "id": member_id, "deleted": True})


# --- presets -----------------------------------------------------------------------------------


def preset_object(preset: Preset) -> dict[str, Any]:
    return {"object": "preset", **preset_snapshot(preset)}


async def set_preset(request: Request) -> Response:
    """Creates the preset, or replaces the organization's preset of that name."""
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    body: schemas.SetPreset = await _body(request, deps, schemas.SetPreset)
    preset = await accounts.set_preset(actor, org.id, body)
    if deps.presets is not None:
        deps.presets.forget()
    return json_response(preset_object(preset))


async def list_presets(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return _list([preset_object(p) for p in await accounts.list_presets(actor, _org_id(request))])


async def get_preset(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return json_response(preset_object(await accounts.get_preset(actor, _org_id(request), _preset_name(request))))


async def delete_preset(request: Request) -> Response:
    deps, accounts, actor = await _admin(request)
    gone = await accounts.delete_preset(actor, _org_id(request), _preset_name(request))
    if deps.presets is not None:
        deps.presets.forget()
    return json_response({"object": "preset.deleted", "id": gone.id, "name": gone.name, "deleted": True})


def _preset_name(request: Request) -> str:
    return no_nul(request.path_params["name"], "name")


# --- keys --------------------------------------------------------------------------------------


async def create_key(request: Request) -> Response:
    """The key itself is in this answer and nowhere else, ever: only its hash is stored."""
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    body: schemas.CreateKey = await _body(request, deps, schemas.CreateKey)
    new, row = await accounts.create_key(actor, org.id, body)
    return json_response({**key_object(row), "key": new.plaintext})


async def list_keys(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return _list([key_object(key) for key in await accounts.list_keys(actor, _org_id(request))])


async def revoke_key(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return json_response(key_object(await accounts.revoke_key(actor, no_nul(request.path_params["key_id"], "key_id"))))


# --- credits -----------------------------------------------------------------------------------


async def add_credit(request: Request) -> Response:
    """Money in: a top-up or a grant (operator), or a transfer from the organization's reseller;
    ``reference`` makes it idempotent (``applied`` false the second time; another amount: 422)."""
    deps, accounts, actor = await _admin(request)
    org = await _reached(accounts, actor, request)
    body: schemas.AddCredit = await _body(request, deps, schemas.AddCredit)
    credited = await accounts.add_credit(actor, org.id, body)
    return json_response(
        {
            "object": "organization.credit",
            "org_id": credited.org_id,
            "kind": body.kind,
            **_money("amount", credited.amount_nanos),
            "reference": body.reference,
            "applied": credited.applied,
            "tier": credited.tier,
            **balance_snapshot(credited.balance),
        }
    )


async def get_credits(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    org_id = _org_id(request)
    balance = await accounts.balance(actor, org_id)
    return json_response({"object": "organization.credits", "org_id": org_id, **balance_snapshot(balance)})


async def refund_generation(request: Request) -> Response:
    _, accounts, actor = await _operator(request)
    request_id = no_nul(request.path_params["request_id"], "request_id")
    amount = await accounts.refund(actor, request_id)
    return json_response({"object": "generation.refund", "id": request_id, "refunded": amount > 0, **_money("amount", amount)})


# --- prices and margins ------------------------------------------------------------------------


async def set_price(request: Request) -> Response:
    deps, accounts, actor = await _operator(request)
    body: schemas.SetPrice = await _body(request, deps, schemas.SetPrice)
    return json_response(price_object(await accounts.set_price(actor, body)))


async def list_prices(request: Request) -> Response:
    _, accounts, actor = await _operator(request)
    model = no_nul(request.query_params.get("model") or "", "model") or None
    return _list([price_object(row) for row in await accounts.list_prices(actor, model)])


async def set_margin(request: Request) -> Response:
    deps, accounts, actor = await _operator(request)
    body: schemas.SetMargin = await _body(request, deps, schemas.SetMargin)
    return json_response(margin_object(await accounts.set_margin(actor, body)))


async def list_margins(request: Request) -> Response:
    _, accounts, actor = await _operator(request)
    model = no_nul(request.query_params.get("model") or "", "model") or None
    return _list([margin_object(row) for row in await accounts.list_margins(actor, model)])


# --- the audit trail ---------------------------------------------------------------------------


async def list_audit(request: Request) -> Response:
    """Events newest first, as OpenAI's lists page: ``after`` the previous page's ``last_id``."""
    _, accounts, actor = await _admin(request)
    query = {name: no_nul(value, name) for name, value in request.query_params.items()}
    try:
        spec = schemas.AuditQuery.model_validate(query)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    page = await accounts.audit(actor, spec)
    ids = [event["id"] for event in page.data]
    return json_response(
        {
            "object": "list",
            "data": page.data,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "has_more": page.has_more,
        }
    )


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
    Route(ORG + "/presets", set_preset, methods=["POST"]),
    Route(ORG + "/presets", list_presets, methods=["GET"]),
    Route(ORG + "/presets/{name}", get_preset, methods=["GET"]),
    Route(ORG + "/presets/{name}", delete_preset, methods=["DELETE"]),
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
    Route(PREFIX + "/audit", list_audit, methods=["GET"]),
]
