"""The admin API (/admin/v1) and the accounts CLI: organizations and sub-organizations, members,
keys shown once, credits, prices, margins, tiers, suspension, and tenant isolation on every route.

The app runs in-process (its lifespan driven by hand) on a fresh SQLite file per test; the CLI
runs as a real subprocess."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from emporion.accounts.keys import issue_key
from emporion.app import build_app
from emporion.auth.keys import hash_key
from emporion.core.prices import Charge
from emporion.pipeline import Deps
from emporion.settings import (
    EmbeddingSettings,
    EngineSettings,
    MeteringSettings,
    ModelConfig,
    Pricing,
    ServerSettings,
    Settings,
    UpstreamConfig,
)
from emporion.store import orgs, repos
from emporion.store.session import open_database
from tests.conftest import emporion

MODEL = "fake-gpt"
OTHER_MODEL = "other-gpt"
USER = [{"role": "user", "content": "hello"}]


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        server=ServerSettings(auth_cache_s=0),
        engine=EngineSettings(enabled=False),
        embeddings=EmbeddingSettings(enabled=False),
        upstreams=[UpstreamConfig(name="fake", base_url="http://127.0.0.1:9/v1")],
        models={
            MODEL: ModelConfig(upstream="fake", pricing=Pricing(prompt=Decimal("0.000001"), completion=Decimal("0.000002"))),
            OTHER_MODEL: ModelConfig(upstream="fake"),
        },
        metering=MeteringSettings(free_credit_usd=Decimal(1)),
    )


@dataclass
class Admin:
    client: httpx.AsyncClient
    deps: Deps
    operator: str  # the operator's key
    data_dir: Path

    async def call(self, method: str, path: str, key: str, json: object | None = None) -> httpx.Response:
        return await self.client.request(method, path, json=json, headers={"authorization": f"Bearer {key}"})

    async def ok(self, method: str, path: str, json: object | None = None, key: str | None = None) -> dict:
        response = await self.call(method, path, key or self.operator, json)
        assert response.status_code == 200, response.text
        return response.json()

    async def org(self, name: str, parent_id: str | None = None, key: str | None = None) -> dict:
        return await self.ok("POST", "/admin/v1/organizations", {"name": name, "parent_id": parent_id}, key)

    async def key(self, org_id: str, kind: str = "api", key: str | None = None, **fields) -> str:
        return (await self.ok("POST", f"/admin/v1/organizations/{org_id}/keys", {"kind": kind, **fields}, key))["key"]


async def operator_key(data_dir: Path) -> str:
    db = await open_database(f"sqlite+aiosqlite:///{data_dir / 'emporion.db'}")
    try:
        async with db.session() as session, session.begin():
            org = await repos.create_org(session, "operator")
            new, _ = await issue_key(session, org, orgs.KeyColumns(kind="operator", label="ops"))
    finally:
        await db.close()
    return new.plaintext


@pytest.fixture
async def admin(tmp_path):
    key = await operator_key(tmp_path)
    app = build_app(settings_for(tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://emporion") as client:
        yield Admin(client, app.state.deps, key, tmp_path)


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


# --- the operator --------------------------------------------------------------------------------


async def test_operator_uses_every_route(admin):
    org = await admin.org("acme")
    assert org["object"] == "organization" and org["tier"] == "free" and not org["tier_pinned"]
    assert org["balance_usd"] == "1" and org["balance_nanos"] == 10**9 and org["available_nanos"] == 10**9  # the free credit
    child = await admin.org("acme-child", parent_id=org["id"])
    assert child["parent_id"] == org["id"]
    listed = await admin.ok("GET", "/admin/v1/organizations")
    assert listed["object"] == "list" and {"operator", "acme", "acme-child"} <= {o["name"] for o in listed["data"]}
    path = f"/admin/v1/organizations/{org['id']}"
    assert (await admin.ok("GET", path))["name"] == "acme"

    patched = await admin.ok("PATCH", path, {"resale_percent": "12.5", "resale_fixed_usd": "0.001", "requests_per_minute": 7})
    assert (
        patched["resale_percent"] == "12.5" and patched["resale_fixed_usd"] == "0.001" and patched["resale_fixed_nanos"] == 10**6
    )
    assert patched["requests_per_minute"] == 7 and patched["tokens_per_minute"] is None
    cleared = await admin.ok("PATCH", path, {"requests_per_minute": None})
    assert cleared["requests_per_minute"] is None and cleared["resale_percent"] == "12.5"

    suspended = await admin.ok("POST", path + "/suspend", {"reason": "unpaid invoice"})
    assert suspended["suspended"] and suspended["suspended_reason"] == "unpaid invoice"
    assert not (await admin.ok("POST", path + "/restore"))["suspended"]
    tiered = await admin.ok("POST", path + "/tier", {"tier": "tier-2"})
    assert tiered["tier"] == "tier-2" and tiered["tier_pinned"]

    owner = await admin.ok("POST", path + "/members", {"email": "Boss@Acme.example", "role": "owner"})
    assert owner["object"] == "organization.member" and owner["email"] == "boss@acme.example"
    member = await admin.ok("POST", path + "/members", {"email": "dev@acme.example"})
    assert member["role"] == "member"
    assert {m["email"] for m in (await admin.ok("GET", path + "/members"))["data"]} == {"boss@acme.example", "dev@acme.example"}
    assert (await admin.ok("DELETE", f"{path}/members/{member['id']}"))["deleted"]

    created = await admin.ok(
        "POST",
        path + "/keys",
        {
            "label": "ci",
            "budget_usd": "5",
            "budget_period": "month",
            "period_budget_usd": "1.5",
            "allowed_models": [MODEL],
            "expires_in_days": 30,
        },
    )
    assert created["key"].startswith("emp-") and created["prefix"] == created["key"][:8]
    assert (
        created["budget_usd"] == "5" and created["period_budget_nanos"] == 1_500_000_000 and created["budget_period"] == "month"
    )
    assert created["allowed_models"] == [MODEL] and created["expires_at"] > time.time() + 29 * 86_400
    keys = (await admin.ok("GET", path + "/keys"))["data"]
    assert [k["id"] for k in keys] == [created["id"]] and "key" not in keys[0]
    assert (await admin.ok("DELETE", f"/admin/v1/keys/{created['id']}"))["revoked_at"] is not None

    credit = await admin.ok("POST", path + "/credits", {"amount_usd": "10.25", "kind": "top_up", "reference": "pay-1"})
    assert credit["applied"] and credit["amount_nanos"] == 10_250_000_000 and credit["balance_usd"] == "11.25"
    again = await admin.ok("POST", path + "/credits", {"amount_usd": "10.25", "kind": "top_up", "reference": "pay-1"})
    assert not again["applied"] and again["balance_usd"] == "11.25"  # the same payment credits once
    await admin.ok("POST", path + "/credits", {"amount_usd": 2, "kind": "grant"})
    balance = await admin.ok("GET", path + "/credits")
    assert balance == {
        "object": "organization.credits",
        "org_id": org["id"],
        "balance_usd": "13.25",
        "balance_nanos": 13_250_000_000,
        "held_usd": "0",
        "held_nanos": 0,
        "available_usd": "13.25",
        "available_nanos": 13_250_000_000,
    }

    price = await admin.ok(
        "POST", "/admin/v1/prices", {"model": MODEL, "prompt": "0.000003", "completion": "1.5e-7", "upstream": "fake"}
    )
    assert price["object"] == "price" and price["completion"] == "0.00000015" and price["upstream"] == "fake"
    later = int(time.time()) + 3600
    await admin.ok(
        "POST", "/admin/v1/prices", {"model": MODEL, "prompt": "0.000004", "completion": "0.00002", "effective_at": later}
    )
    versions = (await admin.ok("GET", f"/admin/v1/prices?model={MODEL}"))["data"]
    assert [(v["prompt"], v["upstream"]) for v in versions] == [("0.000004", ""), ("0.000003", "fake")]
    assert (await admin.ok("GET", "/admin/v1/prices?model=other"))["data"] == []
    margin = await admin.ok("POST", "/admin/v1/margins", {"percent": "5", "fixed_usd": "0.0001"})
    assert margin["model"] is None and margin["fixed_nanos"] == 100_000
    await admin.ok("POST", "/admin/v1/margins", {"model": MODEL, "percent": 20})
    margins = (await admin.ok("GET", "/admin/v1/margins"))["data"]
    assert [(m["model"], m["percent"]) for m in margins] == [(None, "5"), (MODEL, "20")]
    model, deployment = admin.deps.catalog.get(MODEL), admin.deps.catalog.get(MODEL).deployments[0]
    priced = admin.deps.pricebook.priced(model, deployment)  # the price book the gateway charges with
    assert priced.price.prompt == Decimal("0.000003") and priced.margin.percent == 20


async def test_refund_gives_a_charge_back_once(admin):
    org = await admin.org("refunded")
    ledger = admin.deps.ledger
    await ledger.reserve(org["id"], "chatcmpl-r1", 500_000)
    await ledger.settle("chatcmpl-r1", Charge(provider=300_000, operator=100_000, resellers=(), total=400_000), "fake")
    assert (await admin.ok("GET", f"/admin/v1/organizations/{org['id']}/credits"))["balance_nanos"] == 10**9 - 400_000
    refund = await admin.ok("POST", "/admin/v1/generations/chatcmpl-r1/refund")
    assert refund["refunded"] and refund["amount_nanos"] == 400_000
    assert (await admin.ok("GET", f"/admin/v1/organizations/{org['id']}/credits"))["balance_nanos"] == 10**9
    error_of(await admin.call("POST", "/admin/v1/generations/chatcmpl-r1/refund", admin.operator), 409, "already_refunded")
    error_of(await admin.call("POST", "/admin/v1/generations/nope/refund", admin.operator), 404, "generation_not_found")
    assert sum((await ledger.balances()).values()) == 0


# --- resellers and their sub-organizations -----------------------------------------------------------


async def test_reseller_admin_manages_its_sub_organizations(admin):
    reseller = await admin.org("reseller")
    boss = await admin.key(reseller["id"], "admin")
    customer = await admin.org("customer", key=boss)  # under its own tree by default
    assert customer["parent_id"] == reseller["id"] and customer["balance_usd"] == "0"  # funded by its reseller, not free
    grandchild = await admin.org("customer-team", parent_id=customer["id"], key=boss)
    names = {o["name"] for o in (await admin.ok("GET", "/admin/v1/organizations", key=boss))["data"]}
    assert names == {"reseller", "customer", "customer-team"}
    own = await admin.ok("GET", f"/admin/v1/organizations/{reseller['id']}", key=boss)
    assert own["parent_id"] is None and own["balance_usd"] == "1"

    path = f"/admin/v1/organizations/{customer['id']}"
    marked = await admin.ok("PATCH", f"/admin/v1/organizations/{reseller['id']}", {"resale_percent": 30}, key=boss)
    assert marked["resale_percent"] == "30"
    error_of(await admin.call("PATCH", path, boss, {"resale_percent": 1}), 403, "own_organization_only")
    error_of(await admin.call("PATCH", path, boss, {"max_concurrent": 1}), 403, "operator_key_required")
    error_of(await admin.call("POST", path + "/tier", boss, {"tier": "tier-5"}), 403, "operator_key_required")
    error_of(
        await admin.call("POST", path + "/credits", boss, {"amount_usd": "5", "kind": "grant"}), 403, "operator_key_required"
    )
    error_of(
        await admin.call("POST", "/admin/v1/organizations", boss, {"name": "x", "tier": "tier-5"}), 403, "operator_key_required"
    )
    error_of(await admin.call("POST", f"/admin/v1/organizations/{reseller['id']}/suspend", boss, {}), 403, "own_organization")
    error_of(await admin.call("POST", path + "/keys", boss, {"kind": "operator"}), 403, "operator_key_required")
    assert (await admin.ok("GET", path + "/credits", key=boss))["available_usd"] == "0"

    await admin.ok("POST", path + "/members", {"email": "cto@customer.example", "role": "owner"}, key=boss)
    api = await admin.key(customer["id"], key=boss, label="prod", budget_usd="0.5")
    sub_api = await admin.key(grandchild["id"], key=boss)
    models = await admin.client.get("/v1/models", headers={"authorization": f"Bearer {api}"})
    assert models.status_code == 200
    await admin.ok("POST", path + "/suspend", {"reason": "card declined"}, key=boss)
    for key in (api, sub_api):  # a sub-organization of a suspended one is suspended with it
        error_of(await admin.client.get("/v1/models", headers={"authorization": f"Bearer {key}"}), 403, "account_suspended")
    denied = error_of(
        await admin.client.get("/v1/models", headers={"authorization": f"Bearer {sub_api}"}), 403, "account_suspended"
    )
    assert "customer" not in denied["message"] and "card declined" not in denied["message"]  # not its own: nothing told
    await admin.ok("POST", path + "/restore", key=boss)
    assert (await admin.client.get("/v1/models", headers={"authorization": f"Bearer {api}"})).status_code == 200
    await admin.ok("POST", path + "/suspend", {"reason": "fraud"})  # the operator's suspension...
    error_of(await admin.call("POST", path + "/restore", boss), 403, "operator_key_required")  # ...is the operator's to lift
    error_of(await admin.call("POST", path + "/suspend", boss, {"reason": "other"}), 403, "operator_key_required")
    assert (await admin.ok("GET", path))["suspended_reason"] == "fraud"
    await admin.ok("POST", path + "/restore")
    key_id = (await admin.ok("GET", path + "/keys", key=boss))["data"][0]["id"]
    await admin.ok("DELETE", f"/admin/v1/keys/{key_id}", key=boss)
    error_of(await admin.client.get("/v1/models", headers={"authorization": f"Bearer {api}"}), 401, "invalid_api_key")


async def test_a_reseller_funds_its_customers_by_transfer_from_what_it_has(admin):
    reseller = await admin.org("wholesale")
    boss = await admin.key(reseller["id"], "admin")
    customer = await admin.org("retail", key=boss)
    own = await admin.key(customer["id"], "admin", key=boss)
    api = await admin.key(customer["id"], key=boss)
    await admin.ok("POST", f"/admin/v1/organizations/{reseller['id']}/credits", {"amount_usd": "10", "kind": "top_up"})
    path = f"/admin/v1/organizations/{customer['id']}/credits"

    moved = await admin.ok("POST", path, {"amount_usd": "4", "kind": "transfer", "reference": "inv-7"}, key=boss)
    assert (moved["applied"], moved["balance_usd"], moved["available_usd"]) == (True, "4", "4")
    again = await admin.ok("POST", path, {"amount_usd": "4", "kind": "transfer", "reference": "inv-7"}, key=boss)
    assert (again["applied"], again["balance_usd"]) == (False, "4")
    error_of(await admin.call("POST", path, boss, {"amount_usd": "7.000000001", "kind": "transfer"}), 402, "insufficient_credits")
    error_of(await admin.call("POST", path, own, {"amount_usd": "1", "kind": "transfer"}), 403, "not_reseller")
    error_of(await admin.call("POST", path, api, {"amount_usd": "1", "kind": "transfer"}), 403, "admin_key_required")
    left = await admin.ok("GET", f"/admin/v1/organizations/{reseller['id']}/credits", key=boss)
    assert left["available_usd"] == "7"  # 1 free + 10 - 4; the refused transfers moved nothing
    assert (
        moved["tier"] == "free"
        and (await admin.ok("POST", path, {"amount_usd": "1", "kind": "transfer"}, key=boss))["tier"] == "tier-1"
    )
    assert (await admin.ok("GET", f"/admin/v1/organizations/{reseller['id']}", key=boss))["tier"] == "tier-1"  # paid $10, gave $5
    books = await admin.deps.ledger.balances()
    assert sum(books.values()) == 0


# --- tenant isolation ----------------------------------------------------------------------------


def routes_on(org_id: str, member_id: str, key_id: str) -> list[tuple[str, str, dict | None]]:
    """Every admin route that names an organization (or something of one), aimed at ``org_id``."""
    path = f"/admin/v1/organizations/{org_id}"
    return [
        ("GET", path, None),
        ("PATCH", path, {"resale_percent": "1"}),
        ("PATCH", path, {"requests_per_minute": 1}),
        ("POST", path + "/suspend", {"reason": "x"}),
        ("POST", path + "/restore", None),
        ("POST", path + "/tier", {"tier": "tier-5"}),
        ("POST", path + "/members", {"email": "spy@evil.example", "role": "owner"}),
        ("GET", path + "/members", None),
        ("DELETE", f"{path}/members/{member_id}", None),
        ("POST", path + "/keys", {"kind": "admin"}),
        ("GET", path + "/keys", None),
        ("DELETE", f"/admin/v1/keys/{key_id}", None),
        ("POST", path + "/credits", {"amount_usd": "100", "kind": "top_up"}),
        ("POST", path + "/credits", {"amount_usd": "0.5", "kind": "transfer"}),
        ("GET", path + "/credits", None),
        ("POST", "/admin/v1/organizations", {"name": "planted", "parent_id": org_id}),
    ]


GLOBAL_ROUTES = [
    ("POST", "/admin/v1/generations/chatcmpl-x/refund", None),
    ("POST", "/admin/v1/prices", {"model": MODEL, "prompt": "0", "completion": "0"}),
    ("GET", "/admin/v1/prices", None),
    ("POST", "/admin/v1/margins", {"percent": "0"}),
    ("GET", "/admin/v1/margins", None),
]


async def test_an_admin_key_on_another_tenants_ids_gets_404_and_learns_nothing(admin):
    parent = await admin.org("parent-corp")
    a = await admin.org("tenant-a", parent_id=parent["id"])
    b = await admin.org("tenant-b", parent_id=parent["id"])
    a_admin = await admin.key(a["id"], "admin")
    targets = {}
    for target in (b, parent):
        member = await admin.ok(
            "POST", f"/admin/v1/organizations/{target['id']}/members", {"email": "owner@x.example", "role": "owner"}
        )
        key_id = (await admin.ok("POST", f"/admin/v1/organizations/{target['id']}/keys", {"label": "secret-label"}))["id"]
        targets[target["id"]] = (target, member["id"], key_id)
    for target, member_id, key_id in targets.values():
        for method, path, body in routes_on(target["id"], member_id, key_id):
            response = await admin.call(method, path, a_admin, body)
            assert response.status_code in (403, 404), (method, path, response.text)
            for secret in (target["id"], target["name"], member_id, key_id, "secret-label", "owner@x.example"):
                assert secret not in response.text, (method, path, response.text)
    for method, path, body in GLOBAL_ROUTES:
        error_of(await admin.call(method, path, a_admin, body), 403, "operator_key_required")
    listed = (await admin.ok("GET", "/admin/v1/organizations", key=a_admin))["data"]
    assert [o["name"] for o in listed] == ["tenant-a"] and listed[0]["parent_id"] is None  # its reseller is not named
    for target, member_id, _key_id in targets.values():  # and nothing of theirs changed
        seen = await admin.ok("GET", f"/admin/v1/organizations/{target['id']}")
        assert (
            not seen["suspended"]
            and seen["tier"] == "free"
            and seen["resale_percent"] == "0"
            and seen["balance_usd"] == target["balance_usd"]
        )
        assert [k["revoked_at"] for k in (await admin.ok("GET", f"/admin/v1/organizations/{target['id']}/keys"))["data"]] == [
            None
        ]
        assert [m["id"] for m in (await admin.ok("GET", f"/admin/v1/organizations/{target['id']}/members"))["data"]] == [
            member_id
        ]
    names = {o["name"] for o in (await admin.ok("GET", "/admin/v1/organizations"))["data"]}
    assert "planted" not in names


async def test_api_keys_get_403_on_every_admin_route(admin):
    org = await admin.org("plain")
    api = await admin.key(org["id"])
    member = await admin.ok("POST", f"/admin/v1/organizations/{org['id']}/members", {"email": "a@plain.example", "role": "owner"})
    key_id = (await admin.ok("GET", f"/admin/v1/organizations/{org['id']}/keys"))["data"][0]["id"]
    every = [*routes_on(org["id"], member["id"], key_id), ("GET", "/admin/v1/organizations", None), *GLOBAL_ROUTES]
    for method, path, body in every:
        error_of(await admin.call(method, path, api, body), 403, "admin_key_required")
    error_of(await admin.call("GET", "/admin/v1/organizations", "emp-not-a-key-at-all-000000"), 401, "invalid_api_key")
    error_of(await admin.client.get("/admin/v1/organizations"), 401, "missing_api_key")


# --- keys, suspension, tiers -------------------------------------------------------------------------


async def test_a_key_is_shown_once_and_stored_only_as_its_hash(admin):
    org = await admin.org("hashed")
    created = await admin.ok("POST", f"/admin/v1/organizations/{org['id']}/keys", {"label": "once"})
    plaintext = created["key"]
    listing = await admin.call("GET", f"/admin/v1/organizations/{org['id']}/keys", admin.operator)
    assert created["prefix"] in listing.text and plaintext not in listing.text and plaintext[8:] not in listing.text
    with sqlite3.connect(admin.data_dir / "emporion.db") as db:
        rows = db.execute("select key_hash, prefix from api_keys where id = ?", [created["id"]]).fetchall()
    assert rows == [(hash_key(plaintext), plaintext[:8])]
    database = b"".join(p.read_bytes() for p in admin.data_dir.glob("emporion.db*"))
    assert plaintext.encode() not in database
    assert (await admin.client.get("/v1/models", headers={"authorization": f"Bearer {plaintext}"})).status_code == 200


async def test_key_scopes_and_budgets_apply_on_the_request_path(admin):
    org = await admin.org("scoped")
    headers = {"authorization": f"Bearer {await admin.key(org['id'], allowed_models=[OTHER_MODEL])}"}
    response = await admin.client.post("/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": USER})
    error_of(response, 403, "model_not_allowed")
    headers = {"authorization": f"Bearer {await admin.key(org['id'], budget_usd='0')}"}
    response = await admin.client.post(
        "/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": USER, "max_tokens": 5}
    )
    error_of(response, 402, "budget_exceeded")
    error_of(
        await admin.call("POST", f"/admin/v1/organizations/{org['id']}/keys", admin.operator, {"allowed_models": ["nope"]}),
        404,
        "model_not_found",
    )


async def test_a_suspended_organizations_keys_get_403_until_restored(admin):
    org = await admin.org("naughty")
    headers = {"authorization": f"Bearer {await admin.key(org['id'])}"}
    await admin.ok("POST", f"/admin/v1/organizations/{org['id']}/suspend", {"reason": "abuse report"})
    error = error_of(await admin.client.get("/v1/models", headers=headers), 403, "account_suspended")
    assert "abuse report" in error["message"]
    await admin.ok("POST", f"/admin/v1/organizations/{org['id']}/restore")
    assert (await admin.client.get("/v1/models", headers=headers)).status_code == 200


async def test_tiers_set_by_hand_stay_and_paid_spend_moves_the_others(admin):
    pinned, floating = await admin.org("pinned"), await admin.org("floating")
    tier = await admin.ok("POST", f"/admin/v1/organizations/{pinned['id']}/tier", {"tier": "tier-3"})
    assert tier["tier"] == "tier-3" and tier["tier_pinned"]
    error_of(await admin.call("POST", f"/admin/v1/organizations/{pinned['id']}/tier", admin.operator, {"tier": "gold"}), 400)
    await admin.ok("POST", f"/admin/v1/organizations/{pinned['id']}/credits", {"amount_usd": "5", "kind": "top_up"})
    await admin.ok("POST", f"/admin/v1/organizations/{floating['id']}/credits", {"amount_usd": "4.99", "kind": "top_up"})
    assert (await admin.ok("GET", f"/admin/v1/organizations/{floating['id']}"))["tier"] == "free"
    await admin.ok("POST", f"/admin/v1/organizations/{floating['id']}/credits", {"amount_usd": "100", "kind": "grant"})
    assert (await admin.ok("GET", f"/admin/v1/organizations/{floating['id']}"))["tier"] == "free"  # grants do not count
    credit = await admin.ok("POST", f"/admin/v1/organizations/{floating['id']}/credits", {"amount_usd": "0.01", "kind": "top_up"})
    assert credit["tier"] == "tier-1"  # $5 paid
    assert (await admin.ok("GET", f"/admin/v1/organizations/{pinned['id']}"))["tier"] == "tier-3"
    unpinned = await admin.ok("POST", f"/admin/v1/organizations/{pinned['id']}/tier", {"tier": "free", "pinned": False})
    assert unpinned["tier"] == "tier-1" and not unpinned["tier_pinned"]  # floats up to what it has earned at once


async def test_bad_input_is_a_400_with_its_param_and_conflicts_are_409(admin):
    org = await admin.org("strict")
    path = f"/admin/v1/organizations/{org['id']}"
    cases = [
        ("POST", path + "/credits", {"amount_usd": "-5", "kind": "top_up"}, "amount_usd"),
        ("POST", path + "/credits", {"amount_usd": "0", "kind": "grant"}, "amount_usd"),
        ("POST", path + "/credits", {"amount_usd": "1.0000000001", "kind": "grant"}, "amount_usd"),
        ("POST", path + "/credits", {"amount_usd": "NaN", "kind": "grant"}, "amount_usd"),
        ("POST", path + "/credits", {"amount_usd": "5", "kind": "transfer"}, "kind"),
        ("POST", path + "/keys", {"budget_period": "day"}, "period_budget_usd"),
        ("POST", path + "/keys", {"budget_period": "year", "period_budget_usd": "1"}, "budget_period"),
        ("POST", path + "/keys", {"expires_at": 1000}, "expires_at"),
        ("POST", path + "/keys", {"secret": "x"}, "secret"),
        ("POST", path + "/members", {"email": "not-an-email"}, "email"),
        ("POST", path + "/members", {"email": "a@b.example", "role": "king"}, "role"),
        ("POST", path + "/tier", {"pinned": True}, "tier"),
        ("PATCH", path, {"resale_percent": None}, "resale_percent"),
        ("PATCH", path, {"max_concurrent": 0}, "max_concurrent"),
        ("POST", "/admin/v1/organizations", {"name": "  "}, "name"),
        ("POST", "/admin/v1/prices", {"model": MODEL, "prompt": "-1", "completion": "0"}, "prompt"),
        ("POST", "/admin/v1/prices", {"model": MODEL, "prompt": "0", "completion": "0", "upstream": "elsewhere"}, "upstream"),
        ("POST", "/admin/v1/margins", {"percent": "-3"}, "percent"),
    ]
    for method, url, body, param in cases:
        error = error_of(await admin.call(method, url, admin.operator, body), 400)
        assert error["param"] == param, (url, body, error)
    not_json = await admin.client.post(path + "/members", content=b"{", headers={"authorization": f"Bearer {admin.operator}"})
    error_of(not_json, 400)
    error_of(
        await admin.call("POST", "/admin/v1/prices", admin.operator, {"model": "nope", "prompt": "0", "completion": "0"}),
        404,
        "model_not_found",
    )
    error_of(await admin.call("POST", "/admin/v1/margins", admin.operator, {"model": "nope"}), 404, "model_not_found")
    error_of(await admin.call("GET", "/admin/v1/organizations/org_nope", admin.operator), 404, "organization_not_found")
    nul = [
        ("GET", "/admin/v1/organizations/org%00x"),
        ("DELETE", "/admin/v1/keys/key%00x"),
        ("GET", "/admin/v1/prices?model=a%00"),
        ("DELETE", path + "/members/m%00"),
    ]  # PostgreSQL refuses NUL in text
    for method, url in nul:
        error_of(await admin.call(method, url, admin.operator), 400, "invalid_value")
    error_of(await admin.call("POST", "/admin/v1/organizations", admin.operator, {"name": "nul\u0000"}), 400, "invalid_value")
    error_of(await admin.call("DELETE", "/admin/v1/keys/key_nope", admin.operator), 404, "key_not_found")
    error_of(await admin.call("DELETE", path + "/members/mem_nope", admin.operator), 404, "member_not_found")
    error_of(await admin.call("POST", "/admin/v1/organizations", admin.operator, {"name": "strict"}), 409, "organization_exists")
    owner = await admin.ok("POST", path + "/members", {"email": "only@strict.example", "role": "owner"})
    error_of(await admin.call("POST", path + "/members", admin.operator, {"email": "ONLY@strict.example"}), 409, "member_exists")
    error_of(await admin.call("DELETE", f"{path}/members/{owner['id']}", admin.operator), 409, "last_owner")
    error_of(await admin.call("POST", "/admin/v1/organizations/operator/suspend", admin.operator), 404)
    operator_org = next(o for o in (await admin.ok("GET", "/admin/v1/organizations"))["data"] if o["name"] == "operator")
    error_of(
        await admin.call("POST", f"/admin/v1/organizations/{operator_org['id']}/suspend", admin.operator), 403, "own_organization"
    )


# --- references and names --------------------------------------------------------------------------


async def test_a_reference_reused_with_another_amount_is_422_and_the_same_again_a_no_op(admin):
    org = await admin.org("payer")
    path = f"/admin/v1/organizations/{org['id']}/credits"
    first = await admin.ok("POST", path, {"amount_usd": "25", "kind": "top_up", "reference": "invoice-42"})
    assert first["applied"] and first["balance_usd"] == "26"
    same = await admin.ok("POST", path, {"amount_usd": "25", "kind": "top_up", "reference": "invoice-42"})
    assert not same["applied"] and same["balance_usd"] == "26"  # the same payment again: a no-op
    other = error_of(
        await admin.call("POST", path, admin.operator, {"amount_usd": "2500", "kind": "top_up", "reference": "invoice-42"}),
        422,
        "reference_reused",
    )
    assert other["param"] == "reference" and "$25" in other["message"] and "$2500" in other["message"]
    error_of(
        await admin.call("POST", path, admin.operator, {"amount_usd": "2", "kind": "grant", "reference": "welcome"}),
        422,
        "reference_reused",
    )
    assert (await admin.ok("POST", path, {"amount_usd": "3", "kind": "grant", "reference": "invoice-42"}))["applied"]  # per kind

    boss = await admin.key(org["id"], "admin")
    shop, mall = await admin.org("shop", key=boss), await admin.org("mall", key=boss)
    moved = await admin.ok(
        "POST",
        f"/admin/v1/organizations/{shop['id']}/credits",
        {"amount_usd": "4", "kind": "transfer", "reference": "t-1"},
        key=boss,
    )
    assert moved["applied"]
    for target, amount in ((shop, "5"), (mall, "4")):  # another amount, or the same reference to another customer
        error_of(
            await admin.call(
                "POST",
                f"/admin/v1/organizations/{target['id']}/credits",
                boss,
                {"amount_usd": amount, "kind": "transfer", "reference": "t-1"},
            ),
            422,
            "reference_reused",
        )
    assert not (
        await admin.ok(
            "POST",
            f"/admin/v1/organizations/{shop['id']}/credits",
            {"amount_usd": "4", "kind": "transfer", "reference": "t-1"},
            key=boss,
        )
    )["applied"]
    assert (await admin.ok("GET", path))["balance_usd"] == "25"  # 1 + 25 + 3 - 4: nothing else moved
    assert sum((await admin.deps.ledger.balances()).values()) == 0

    run = lambda *args: emporion(*args, data_dir=admin.data_dir, check=False)  # noqa: E731
    assert run("credits", "top-up", org["id"], "25", "--reference", "invoice-42").returncode == 1  # credited before: unchanged
    reused = run("credits", "top-up", org["id"], "30", "--reference", "invoice-42")
    assert reused.returncode == 1 and "already used for a top-up of $25" in reused.stderr and "$30" in reused.stderr
    assert (await admin.ok("GET", path))["balance_usd"] == "25"


async def test_names_are_unique_within_a_parent_so_no_admin_learns_another_tenants_names(admin):
    alpha, beta = await admin.org("alpha-resale"), await admin.org("beta-resale")
    a_boss, b_boss = await admin.key(alpha["id"], "admin"), await admin.key(beta["id"], "admin")
    mine = await admin.org("acme-customer", key=a_boss)
    theirs = await admin.org("acme-customer", key=b_boss)  # another tenant's name: no 409 that would tell it exists
    assert mine["id"] != theirs["id"] and theirs["parent_id"] == beta["id"]
    assert (await admin.org("alpha-resale", key=b_boss))["parent_id"] == beta["id"]  # even a top-level organization's name
    again = error_of(
        await admin.call("POST", "/admin/v1/organizations", b_boss, {"name": "acme-customer"}), 409, "organization_exists"
    )
    assert alpha["id"] not in str(again) and mine["id"] not in str(again)  # a conflict within its own parent stays a 409
    nested = await admin.org("acme-customer", parent_id=theirs["id"], key=b_boss)  # one level down is another parent
    assert nested["parent_id"] == theirs["id"]
    error_of(
        await admin.call("POST", "/admin/v1/organizations", admin.operator, {"name": "alpha-resale"}), 409, "organization_exists"
    )
    assert (await admin.org("acme-customer"))["parent_id"] is None  # top-level names are unique among top-level ones
    error_of(
        await admin.call("POST", "/admin/v1/organizations", admin.operator, {"name": "acme-customer"}), 409, "organization_exists"
    )
    b_names = sorted(o["name"] for o in (await admin.ok("GET", "/admin/v1/organizations", key=b_boss))["data"])
    assert b_names == ["acme-customer", "acme-customer", "alpha-resale", "beta-resale"]

    run = lambda *args: emporion(*args, data_dir=admin.data_dir, check=False)  # noqa: E731
    shown = run("orgs", "show", "acme-customer")
    assert shown.returncode == 0 and "reseller: -" in shown.stdout  # the top-level one is preferred
    assert run("orgs", "create", "dup", "--parent", alpha["id"]).returncode == 0
    assert run("orgs", "create", "dup", "--parent", beta["id"]).returncode == 0
    exists = run("orgs", "create", "dup", "--parent", beta["id"])
    assert exists.returncode == 1 and "already exists under" in exists.stderr
    ambiguous = run("credits", "balance", "dup")
    assert ambiguous.returncode == 1 and "2 sub-organizations are named 'dup'" in ambiguous.stderr
    assert "under 'alpha-resale'" in ambiguous.stderr and "under 'beta-resale'" in ambiguous.stderr
    only = run("orgs", "show", "alpha-resale")  # a top-level name, also a sub-organization's: the top-level one
    assert only.returncode == 0 and alpha["id"] in only.stdout
    assert run("orgs", "create", "solo", "--parent", "alpha-resale").returncode == 0  # the parent by its (top-level) name
    solo = run("orgs", "show", "solo")  # a name only one sub-organization has
    assert solo.returncode == 0 and "reseller: alpha-resale" in solo.stdout
    async with admin.deps.db.session() as session:
        assert (await repos.get_or_create_org(session, "alpha-resale")).id == alpha[
            "id"
        ]  # top-level, as `keys create --org` finds it
        assert (await orgs.org_named(session, "dup", beta["id"])).parent_id == beta["id"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    return request.getfixturevalue("postgres_url")


async def test_migration_0005_keeps_every_row_and_scopes_names_to_their_parent(database_url):
    """From 0004 (names globally unique) with organizations, keys and accounts in it: every row
    stays, foreign keys still hold, and names become unique per parent (NULL parents included)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from emporion.store.session import MIGRATIONS, Database

    def upgrade(revision: str):
        def run(connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(upgrade("0004"))
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "insert into organizations (id, name, created_at, parent_id) values ('o1', 'acme', 1, null), ('o2', 'shop', 1, 'o1')"
                )
            )
            await conn.execute(
                text(
                    "insert into api_keys (id, org_id, key_hash, prefix, label, created_at) values ('k1', 'o1', 'h1', 'p', '', 1), ('k2', 'o2', 'h2', 'p', '', 1)"
                )
            )
            await conn.execute(
                text(
                    "insert into accounts (id, kind, org_id, balance_nanos, held_nanos) values ('customer:o2', 'customer', 'o2', 5, 0)"
                )
            )
        await db.migrate()  # to head
        async with db.engine.begin() as conn:
            assert (await conn.execute(text("select id, name, parent_id from organizations order by id"))).all() == [
                ("o1", "acme", None),
                ("o2", "shop", "o1"),
            ]
            assert (await conn.execute(text("select id, org_id from api_keys order by id"))).all() == [("k1", "o1"), ("k2", "o2")]
            await conn.execute(
                text(
                    "insert into organizations (id, name, created_at, parent_id) values ('o3', 'shop', 1, null), ('o4', 'shop', 1, 'o3')"
                )
            )
        refused = [
            "insert into organizations (id, name, created_at, parent_id) values ('o5', 'acme', 1, null)",  # a top-level name
            "insert into organizations (id, name, created_at, parent_id) values ('o6', 'shop', 1, 'o1')",  # within one parent
            "insert into api_keys (id, org_id, key_hash, prefix, label, created_at) values ('k9', 'nope', 'h9', 'p', '', 1)",  # foreign keys
        ]
        for statement in refused:
            with pytest.raises(IntegrityError):
                async with db.engine.begin() as conn:
                    await conn.execute(text(statement))
    finally:
        await db.close()


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_manages_accounts_end_to_end(tmp_path):
    def run(*args: str, check: bool = True):
        return emporion(*args, data_dir=tmp_path, check=check)

    org_id = run("orgs", "create", "acme").stdout.strip()
    assert re.fullmatch(r"org_[0-9a-f]{24}", org_id)
    child_id = run("orgs", "create", "acme-shop", "--parent", "acme").stdout.strip()
    listing = run("orgs", "list").stdout
    assert "acme" in listing and child_id in listing and "$1" in listing
    assert run("orgs", "create", "acme", check=False).returncode == 1

    run("credits", "top-up", "acme", "4.5", "--reference", "inv-1")
    assert run("credits", "top-up", "acme", "4.5", "--reference", "inv-1", check=False).returncode == 1  # credited once
    run("credits", "grant", org_id, "0.5")
    assert run("credits", "balance", "acme").stdout.splitlines() == ["balance: $6", "held: $0", "available: $6"]
    assert "tier: free" in run("orgs", "show", "acme").stdout  # $4.50 paid: not yet tier-1
    run("credits", "top-up", "acme", "0.5")
    assert "tier: tier-1" in run("orgs", "show", "acme").stdout
    run("credits", "transfer", "acme-shop", "2.5")  # from its reseller, acme
    assert (
        run("credits", "balance", "acme-shop").stdout.splitlines()[0] == "balance: $2.5"
    )  # a sub-organization has no free credit
    assert run("credits", "balance", "acme").stdout.splitlines()[0] == "balance: $4"
    short = run("credits", "transfer", "acme-shop", "4.01", check=False)
    assert short.returncode == 1 and "Insufficient credits" in short.stderr
    assert run("credits", "transfer", "acme", "1", check=False).returncode == 1  # acme has no reseller
    run("orgs", "set-tier", "acme-shop", "tier-4")
    assert "tier: tier-4 (pinned)" in run("orgs", "show", "acme-shop").stdout
    assert run("orgs", "set-tier", "acme-shop", "gold", check=False).returncode == 2

    run("prices", "set", "gemma-3-270m", "--prompt", "0.000001", "--completion", "2e-6")
    prices = run("prices", "list").stdout
    assert "gemma-3-270m" in prices and "0.000002" in prices
    assert run("prices", "set", "nope", "--prompt", "0", "--completion", "0", check=False).returncode == 2
    run("margins", "set", "--percent", "15", "--fixed", "0.0001")
    assert "15" in run("margins", "list").stdout
    run("orgs", "set-markup", "acme", "--percent", "20")
    run("orgs", "set-limits", "acme", "--requests-per-minute", "60")
    shown = run("orgs", "show", "acme").stdout
    assert "resale markup: 20% + $0" in shown and "60/tier/tier" in shown

    member_id = run("members", "add", "acme", "Boss@Acme.example", "--role", "owner").stdout.strip()
    assert member_id in run("members", "list", "acme").stdout
    assert run("members", "remove", "acme", member_id, check=False).returncode == 1  # the last owner stays

    key = run(
        "keys",
        "create",
        "--org",
        "new-co",
        "--label",
        "capped",
        "--budget",
        "3",
        "--period",
        "day",
        "--period-budget",
        "0.25",
        "--models",
        "gemma-3-270m",
        "--expires-in-days",
        "7",
    ).stdout.strip()
    assert key.startswith("emp-") and "\n" not in key
    with sqlite3.connect(tmp_path / "emporion.db") as db:
        row = db.execute(
            "select budget_nanos, budget_period, period_budget_nanos, allowed_models, expires_at, kind, label "
            "from api_keys where key_hash = ?",
            [hash_key(key)],
        ).fetchone()
    assert row[:4] == (3 * 10**9, "day", 250_000_000, '["gemma-3-270m"]') and row[4] > time.time() + 6 * 86_400
    assert row[5:] == ("api", "capped")
    assert run("credits", "balance", "new-co").stdout.startswith("balance: $1")  # a new organization's free credit
    assert run("keys", "create", "--org", "x", "--kind", "root", check=False).returncode == 2
    assert run("keys", "create", "--org", "x", "--budget", "-1", check=False).returncode == 2

    run("orgs", "suspend", "acme", "--reason", "audit")
    assert "suspended: audit" in run("orgs", "show", "acme").stdout
    run("orgs", "restore", "acme")
    assert "status: active" in run("orgs", "show", "acme").stdout
    assert run("orgs", "show", "nope", check=False).returncode == 1
