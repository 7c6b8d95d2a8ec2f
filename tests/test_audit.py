"""The audit trail of the accounts service: every change through the admin API or the CLI is one
event with the object before and after, written in the change's transaction; a refused or idle
operation writes none; admin keys see only their tree's events (and never who their reseller is);
``GET /admin/v1/audit`` pages newest first; the database itself refuses to change or delete an
event; no event holds a key or its hash.

The app runs in-process (its lifespan driven by hand) on a fresh SQLite file or a fresh PostgreSQL
database per test; the CLI runs as a real subprocess."""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from emporion.accounts.audit import event_object
from emporion.accounts.keys import issue_key
from emporion.app import build_app
from emporion.auth.keys import hash_key
from emporion.cli.main import _first_start
from emporion.core.prices import Charge
from emporion.metering.ledger import Ledger
from emporion.settings import DatabaseSettings, Settings
from emporion.store import orgs, repos
from emporion.store.session import Database, open_database
from emporion.store.tables import AuditEvent
from tests.conftest import emporion
from tests.test_admin import MODEL, Admin, error_of, settings_for


@dataclass
class Trail:
    """The admin API with an operator key, and the events it has not looked at yet."""

    admin: Admin
    db: Database
    operator_key_id: str
    operator_org_id: str
    seen: int = 0
    plaintexts: list[str] = field(default_factory=list)  # every key made, to look for in the trail

    async def new(self) -> list[dict[str, Any]]:
        """The events written since the last call, oldest first, as the operator sees them."""
        rows = await all_events(self.db)
        fresh, self.seen = rows[self.seen :], len(rows)
        return fresh

    async def one(self, action: str, object_id: str, org_id: str | None) -> dict[str, Any]:
        fresh = await self.new()
        assert [(e["action"], e["object_id"], e["org_id"]) for e in fresh] == [(action, object_id, org_id)], fresh
        return fresh[0]

    async def none(self) -> None:
        assert await self.new() == []


async def all_events(db: Database) -> list[dict[str, Any]]:
    async with db.session() as session:
        return [event_object(row, None) for row in (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()]


async def operator_key(url: str) -> tuple[str, str, str]:
    """An operator key made straight in the store (no event): its plaintext, id and organization."""
    db = await open_database(url)
    try:
        async with db.session() as session, session.begin():
            org = await repos.create_org(session, "operator")
            new, row = await issue_key(session, org, orgs.KeyColumns(kind="operator", label="ops"))
    finally:
        await db.close()
    return new.plaintext, row.id, org.id


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    base = settings_for(tmp_path)
    if request.param == "sqlite":
        return base
    return base.model_copy(update={"database": DatabaseSettings(url=request.getfixturevalue("postgres_url"))})


@pytest.fixture
async def trail(settings):
    plaintext, key_id, org_id = await operator_key(settings.database_url)
    app = build_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://emporion") as client:
        deps = app.state.deps
        yield Trail(Admin(client, deps, plaintext, settings.data_dir), deps.db, key_id, org_id, plaintexts=[plaintext])


# --- one event per change ----------------------------------------------------------------------


async def test_each_operation_through_the_api_records_one_event_with_its_before_and_after(trail):
    a = trail.admin
    org = await a.org("acme")
    event = await trail.one("organization.create", org["id"], org["id"])
    assert event["actor"] == {"kind": "key", "key_id": trail.operator_key_id, "org_id": trail.operator_org_id, "name": None}
    assert event["object_type"] == "organization" and event["before"] is None
    assert event["after"]["name"] == "acme" and event["after"]["tier"] == "free" and event["after"]["balance_nanos"] == 10**9
    assert abs(event["created_at_ms"] / 1000 - time.time()) < 60 and event["created_at"] == event["created_at_ms"] // 1000
    path = f"/admin/v1/organizations/{org['id']}"

    await a.ok("PATCH", path, {"resale_percent": "12.5", "resale_fixed_usd": "0.001", "max_concurrent": 3})
    event = await trail.one("organization.update", org["id"], org["id"])
    assert (event["before"]["resale_percent"], event["before"]["resale_fixed_nanos"], event["before"]["max_concurrent"]) == (
        "0",
        0,
        None,
    )
    assert (event["after"]["resale_percent"], event["after"]["resale_fixed_usd"], event["after"]["resale_fixed_nanos"]) == (
        "12.5",
        "0.001",
        10**6,
    )
    assert event["after"]["max_concurrent"] == 3
    await a.ok("POST", path + "/suspend", {"reason": "unpaid"})
    event = await trail.one("organization.suspend", org["id"], org["id"])
    assert (
        event["before"]["suspended_at"] is None
        and event["after"]["suspended_reason"] == "unpaid"
        and event["after"]["suspended_by_operator"]
    )
    await a.ok("POST", path + "/restore")
    event = await trail.one("organization.restore", org["id"], org["id"])
    assert event["before"]["suspended_reason"] == "unpaid" and event["after"]["suspended_at"] is None
    await a.ok("POST", path + "/tier", {"tier": "tier-2"})
    event = await trail.one("organization.set_tier", org["id"], org["id"])
    assert (event["before"]["tier"], event["before"]["tier_pinned"], event["after"]["tier"], event["after"]["tier_pinned"]) == (
        "free",
        False,
        "tier-2",
        True,
    )

    member = await a.ok("POST", path + "/members", {"email": "dev@acme.example", "role": "admin"})
    event = await trail.one("member.add", member["id"], org["id"])
    assert (
        event["object_type"] == "organization.member"
        and event["before"] is None
        and event["after"]["email"] == "dev@acme.example"
    )
    await a.ok("DELETE", f"{path}/members/{member['id']}")
    event = await trail.one("member.remove", member["id"], org["id"])
    assert event["before"]["role"] == "admin" and event["after"] is None

    created = await a.ok("POST", path + "/keys", {"label": "ci", "budget_usd": "5", "allowed_models": [MODEL]})
    trail.plaintexts.append(created["key"])
    event = await trail.one("key.create", created["id"], org["id"])
    assert (
        event["object_type"] == "api_key"
        and event["after"]["prefix"] == created["prefix"]
        and event["after"]["budget_nanos"] == 5 * 10**9
    )
    assert event["after"]["allowed_models"] == [MODEL] and event["after"]["budget_usd"] == "5"
    await a.ok("DELETE", f"/admin/v1/keys/{created['id']}")
    event = await trail.one("key.revoke", created["id"], org["id"])
    assert event["before"]["revoked_at"] is None and event["after"]["revoked_at"] is not None

    await a.ok("POST", path + "/credits", {"amount_usd": "10.25", "kind": "top_up", "reference": "pay-1"})
    event = await trail.one("credit.top_up", org["id"], org["id"])
    assert (event["before"]["balance_nanos"], event["after"]["balance_nanos"]) == (10**9, 11_250_000_000)
    assert (event["after"]["amount_usd"], event["after"]["amount_nanos"], event["after"]["reference"]) == (
        "10.25",
        10_250_000_000,
        "pay-1",
    )
    await a.ok("POST", path + "/credits", {"amount_usd": "0.5", "kind": "grant"})
    event = await trail.one("credit.grant", org["id"], org["id"])
    assert event["after"]["balance_usd"] == "11.75" and event["after"]["reference"] is None
    shop = await a.org("acme-shop", parent_id=org["id"])
    await trail.one("organization.create", shop["id"], shop["id"])
    await a.ok("POST", f"/admin/v1/organizations/{shop['id']}/credits", {"amount_usd": "2", "kind": "transfer"})
    event = await trail.one("credit.transfer", shop["id"], shop["id"])
    assert (event["before"]["balance_nanos"], event["after"]["balance_nanos"], event["after"]["source_org_id"]) == (
        0,
        2 * 10**9,
        org["id"],
    )

    ledger = a.deps.ledger
    await ledger.reserve(org["id"], "chatcmpl-audited", 500_000)
    await ledger.settle("chatcmpl-audited", Charge(provider=300_000, operator=100_000, resellers=(), total=400_000), "fake")
    await trail.none()  # requests are the ledger's and the request log's, not the audit trail's
    await a.ok("POST", "/admin/v1/generations/chatcmpl-audited/refund")
    event = await trail.one("generation.refund", "chatcmpl-audited", org["id"])
    assert event["before"] == {"refunded": False} and event["after"] == {
        "refunded": True,
        "amount_usd": "0.0004",
        "amount_nanos": 400_000,
    }

    price = await a.ok(
        "POST", "/admin/v1/prices", {"model": MODEL, "prompt": "0.000003", "completion": "1.5e-7", "upstream": "fake"}
    )
    event = await trail.one("price.set", str(price["id"]), None)
    assert event["before"] is None and event["after"]["completion"] == "0.00000015" and event["after"]["upstream"] == "fake"
    margin = await a.ok("POST", "/admin/v1/margins", {"percent": "5", "fixed_usd": "0.0001"})
    event = await trail.one("margin.set", str(margin["id"]), None)
    assert event["after"] == {
        "id": margin["id"],
        "model": None,
        "percent": "5",
        "fixed_usd": "0.0001",
        "fixed_nanos": 100_000,
        "effective_at": margin["effective_at"],
    }

    for method, url in (
        ("GET", path),
        ("GET", path + "/keys"),
        ("GET", path + "/members"),
        ("GET", path + "/credits"),
        ("GET", "/admin/v1/organizations"),
        ("GET", "/admin/v1/prices"),
        ("GET", "/admin/v1/audit"),
    ):
        await a.ok(method, url)
    await trail.none()  # reading changes nothing


async def test_a_refused_or_idle_operation_records_nothing(trail):
    a = trail.admin
    org = await a.org("strict")
    boss = await a.key(org["id"], "admin")
    await trail.new()
    path = f"/admin/v1/organizations/{org['id']}"
    owner = await a.ok("POST", path + "/members", {"email": "only@strict.example", "role": "owner"})
    await a.ok("POST", path + "/credits", {"amount_usd": "5", "kind": "top_up", "reference": "inv-1"})
    await trail.new()
    refused = [
        ("POST", "/admin/v1/organizations", a.operator, {"name": "strict"}, 409),  # the name is taken
        ("POST", "/admin/v1/organizations", a.operator, {"name": "x", "tier": "gold"}, 400),
        ("POST", "/admin/v1/organizations", boss, {"name": "x", "tier": "tier-5"}, 403),
        ("POST", "/admin/v1/organizations", a.operator, {"name": "x", "parent_id": "org_nope"}, 404),
        ("PATCH", path, boss, {"max_concurrent": 1}, 403),
        ("POST", path + "/suspend", boss, {"reason": "self"}, 403),  # its own organization
        ("POST", path + "/tier", a.operator, {"tier": "gold"}, 400),
        ("POST", path + "/members", a.operator, {"email": "ONLY@strict.example"}, 409),
        ("DELETE", f"{path}/members/{owner['id']}", a.operator, None, 409),  # the last owner
        ("POST", path + "/keys", boss, {"kind": "operator"}, 403),
        ("POST", path + "/keys", a.operator, {"allowed_models": ["nope"]}, 404),
        ("DELETE", "/admin/v1/keys/key_nope", a.operator, None, 404),
        ("POST", path + "/credits", a.operator, {"amount_usd": "6", "kind": "top_up", "reference": "inv-1"}, 422),
        ("POST", path + "/credits", a.operator, {"amount_usd": "1", "kind": "transfer"}, 400),  # no reseller
        ("POST", path + "/credits", boss, {"amount_usd": "1", "kind": "grant"}, 403),
        ("POST", "/admin/v1/generations/chatcmpl-none/refund", a.operator, None, 404),
        ("POST", "/admin/v1/prices", a.operator, {"model": "nope", "prompt": "0", "completion": "0"}, 404),
        (
            "POST",
            "/admin/v1/prices",
            a.operator,
            {"model": MODEL, "prompt": "0", "completion": "0", "upstream": "elsewhere"},
            400,
        ),
        ("POST", "/admin/v1/margins", boss, {"percent": "1"}, 403),
        ("POST", path + "/members", a.operator, {"email": "not-an-email"}, 400),
    ]
    for method, url, key, body, status in refused:
        error_of(await a.call(method, url, key, body), status)
    await trail.none()

    shop = await a.org("shop", key=boss)
    await trail.one("organization.create", shop["id"], shop["id"])
    short = await a.call("POST", f"/admin/v1/organizations/{shop['id']}/credits", boss, {"amount_usd": "100", "kind": "transfer"})
    error_of(short, 402, "insufficient_credits")  # the money refused rolls back with its event
    again = await a.ok("POST", path + "/credits", {"amount_usd": "5", "kind": "top_up", "reference": "inv-1"})
    assert not again["applied"]  # the same payment again: nothing changed, nothing recorded
    key = await a.ok("POST", path + "/keys", {"label": "twice"})
    await trail.one("key.create", key["id"], org["id"])
    await a.ok("DELETE", f"/admin/v1/keys/{key['id']}")
    await trail.one("key.revoke", key["id"], org["id"])
    await a.ok("DELETE", f"/admin/v1/keys/{key['id']}")  # revoked already
    await a.ok("PATCH", path, {})
    await trail.none()
    assert sum((await a.deps.ledger.balances()).values()) == 0


# --- who sees what --------------------------------------------------------------------------------


async def test_an_admin_key_sees_only_its_trees_events_and_never_its_reseller(trail):
    a = trail.admin
    reseller, other = await a.org("reseller"), await a.org("other-tenant")
    boss, stranger = await a.key(reseller["id"], "admin"), await a.key(other["id"], "admin")
    customer = await a.org("customer", key=boss)
    await a.ok("POST", f"/admin/v1/organizations/{reseller['id']}/credits", {"amount_usd": "10", "kind": "top_up"})
    await a.ok("POST", f"/admin/v1/organizations/{customer['id']}/credits", {"amount_usd": "3", "kind": "transfer"}, key=boss)
    cto = await a.key(customer["id"], "admin", key=boss)
    await a.ok("POST", f"/admin/v1/organizations/{other['id']}/members", {"email": "secret@other.example"})

    mine = (await a.ok("GET", "/admin/v1/audit?limit=500", key=boss))["data"]
    assert {e["org_id"] for e in mine} == {reseller["id"], customer["id"]}
    theirs = await a.call("GET", "/admin/v1/audit?limit=500", stranger)
    assert theirs.status_code == 200 and {e["org_id"] for e in theirs.json()["data"]} == {other["id"]}
    for secret in (reseller["id"], customer["id"], "customer", "reseller"):
        assert secret not in theirs.text
    error_of(await a.call("GET", f"/admin/v1/audit?org_id={reseller['id']}", stranger), 404, "organization_not_found")
    api = await a.key(other["id"])
    error_of(await a.call("GET", "/admin/v1/audit", api), 403, "admin_key_required")

    seen_below = await a.call("GET", "/admin/v1/audit?limit=500", cto)  # the customer's own trail
    events = seen_below.json()["data"]
    assert {e["org_id"] for e in events} == {customer["id"]} and {e["action"] for e in events} >= {
        "organization.create",
        "credit.transfer",
    }
    assert reseller["id"] not in seen_below.text and "reseller" not in seen_below.text  # nor who acted, nor whose money came in
    transfer = next(e for e in events if e["action"] == "credit.transfer")
    assert (
        transfer["actor"] == {"kind": "key", "key_id": None, "org_id": None, "name": None}
        and transfer["after"]["source_org_id"] is None
    )
    created = next(e for e in events if e["action"] == "organization.create")
    assert created["after"]["parent_id"] is None
    seen_above = next(e for e in mine if e["action"] == "credit.transfer")  # the reseller sees it in full
    assert seen_above["after"]["source_org_id"] == reseller["id"] and seen_above["actor"]["org_id"] == reseller["id"]
    everything = (await a.ok("GET", "/admin/v1/audit?limit=500"))["data"]
    assert {other["id"], reseller["id"], customer["id"]} <= {e["org_id"] for e in everything}


async def test_the_audit_list_pages_newest_first_and_filters(trail):
    a = trail.admin
    org = await a.org("paged")
    path = f"/admin/v1/organizations/{org['id']}"
    for n in range(5):
        await a.ok("POST", path + "/members", {"email": f"m{n}@paged.example"})
    key = await a.ok("POST", path + "/keys", {"label": "paged"})
    total = len(await trail.new())

    pages, after = [], None
    while True:
        page = await a.ok("GET", "/admin/v1/audit?limit=2" + (f"&after={after}" if after else ""))
        assert page["object"] == "list" and len(page["data"]) <= 2
        pages.append(page)
        if not page["has_more"]:
            break
        after = page["last_id"]
    ids = [e["id"] for page in pages for e in page["data"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids)) == total
    assert pages[0]["first_id"] == ids[0] and pages[-1]["last_id"] == ids[-1]
    last = await a.ok("GET", f"/admin/v1/audit?after={ids[-1]}")
    assert last == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    members = await a.ok("GET", f"/admin/v1/audit?action=member.add&org_id={org['id']}")
    assert [e["after"]["email"] for e in members["data"]] == [f"m{n}@paged.example" for n in reversed(range(5))]
    assert [e["action"] for e in (await a.ok("GET", f"/admin/v1/audit?object_id={key['id']}"))["data"]] == ["key.create"]
    newest = max(ids)
    at = (await a.ok("GET", "/admin/v1/audit?limit=1"))["data"][0]["created_at_ms"] / 1000
    assert (await a.ok("GET", f"/admin/v1/audit?since={at + 60}"))["data"] == []
    assert newest in [e["id"] for e in (await a.ok("GET", f"/admin/v1/audit?since={at - 60}&until={at + 60}"))["data"]]
    assert (await a.ok("GET", f"/admin/v1/audit?until={at - 3600}"))["data"] == []
    for query, param in (
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("after=-1", "after"),
        ("since=NaN", "since"),
        ("until=1e400", "until"),
        ("action=" + "a" * 41, "action"),
    ):
        assert error_of(await a.call("GET", f"/admin/v1/audit?{query}", a.operator), 400)["param"] == param
    error_of(await a.call("GET", "/admin/v1/audit?object_id=a%00b", a.operator), 400, "invalid_value")
    error_of(await a.call("GET", "/admin/v1/audit?org_id=org_nope", a.operator), 404, "organization_not_found")


# --- append-only, and no secrets -------------------------------------------------------------------


async def test_the_database_refuses_to_change_or_delete_an_event(trail):
    await trail.admin.org("kept")
    [event] = await trail.new()
    engine = trail.db.engine
    statements = [
        f"UPDATE audit_events SET action = 'organization.nothing' WHERE id = {event['id']}",
        f"DELETE FROM audit_events WHERE id = {event['id']}",
        "DELETE FROM audit_events",
    ]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    assert await all_events(trail.db) == [event]


async def test_no_event_holds_a_key_or_its_hash(trail):
    a = trail.admin
    org = await a.org("keyed")
    for kind in ("api", "admin"):
        created = await a.ok("POST", f"/admin/v1/organizations/{org['id']}/keys", {"kind": kind, "label": kind})
        trail.plaintexts.append(created["key"])
        await a.ok("DELETE", f"/admin/v1/keys/{created['id']}")
    trail.plaintexts.append(await a.key(org["id"]))
    shown = json.dumps(await all_events(trail.db)) + (await a.call("GET", "/admin/v1/audit?limit=500", a.operator)).text
    for plaintext in trail.plaintexts:
        for secret in (plaintext, plaintext[8:], hash_key(plaintext)):
            assert secret not in shown
    async with trail.db.engine.connect() as conn:
        stored = " ".join(str(value) for row in (await conn.execute(text("SELECT * FROM audit_events"))).all() for value in row)
    assert all(plaintext[8:] not in stored and hash_key(plaintext) not in stored for plaintext in trail.plaintexts)


# --- the CLI and the first start ---------------------------------------------------------------------


def cli_events(data_dir: Path) -> list[tuple[str, str, str | None, str, str | None]]:
    """(action, object id, org id, actor kind, actor name) of every event, oldest first."""
    with sqlite3.connect(data_dir / "emporion.db") as db:
        return db.execute("select action, object_id, org_id, actor_kind, actor_name from audit_events order by id").fetchall()


def test_the_cli_records_each_operation_as_the_operator_at_the_command_line(tmp_path):
    def run(*args: str, check: bool = True):
        return emporion(*args, data_dir=tmp_path, check=check)

    seen = 0

    def one(action: str, object_id: str | None = None) -> tuple:
        nonlocal seen
        events = cli_events(tmp_path)
        fresh, seen = events[seen:], len(events)
        assert [e[0] for e in fresh] == [action], fresh
        assert fresh[0][3:] == ("cli", f"cli:{getpass.getuser()}")
        assert object_id is None or fresh[0][1] == object_id
        return fresh[0]

    def none() -> None:
        assert len(cli_events(tmp_path)) == seen

    org_id = run("orgs", "create", "acme").stdout.strip()
    assert one("organization.create", org_id)[2] == org_id
    shop_id = run("orgs", "create", "acme-shop", "--parent", "acme").stdout.strip()
    one("organization.create", shop_id)
    assert run("orgs", "create", "acme", check=False).returncode == 1
    assert run("orgs", "create", "x", "--tier", "gold", check=False).returncode == 2
    none()
    run("orgs", "set-markup", "acme", "--percent", "20")
    one("organization.update", org_id)
    run("orgs", "set-limits", "acme", "--requests-per-minute", "60")
    one("organization.update", org_id)
    run("orgs", "suspend", "acme", "--reason", "audit")
    one("organization.suspend", org_id)
    run("orgs", "restore", "acme")
    one("organization.restore", org_id)
    run("orgs", "set-tier", "acme-shop", "tier-4")
    one("organization.set_tier", shop_id)
    member_id = run("members", "add", "acme", "boss@acme.example", "--role", "owner").stdout.strip()
    one("member.add", member_id)
    assert run("members", "remove", "acme", member_id, check=False).returncode == 1  # the last owner
    none()
    other = run("members", "add", "acme", "dev@acme.example").stdout.strip()
    one("member.add", other)
    run("members", "remove", "acme", "dev@acme.example")
    one("member.remove", other)

    run("credits", "top-up", "acme", "4.5", "--reference", "inv-1")
    one("credit.top_up", org_id)
    assert run("credits", "top-up", "acme", "4.5", "--reference", "inv-1", check=False).returncode == 1  # credited once
    assert run("credits", "top-up", "acme", "9", "--reference", "inv-1", check=False).returncode == 1  # reused
    none()
    run("credits", "grant", "acme", "0.5")
    one("credit.grant", org_id)
    run("credits", "transfer", "acme-shop", "2.5")
    one("credit.transfer", shop_id)
    assert run("credits", "transfer", "acme-shop", "100", check=False).returncode == 1  # more than acme has
    none()

    key = run("keys", "create", "--org", "new-co", "--label", "cli").stdout.strip()
    new_co, created = cli_events(tmp_path)[seen:]
    assert (new_co[0], created[0]) == ("organization.create", "key.create") and created[2] == new_co[1]
    seen += 2
    assert run("keys", "create", "--org", "acme", "--models", "nope", check=False).returncode == 2
    none()
    with sqlite3.connect(tmp_path / "emporion.db") as db:
        key_id = db.execute("select id from api_keys where key_hash = ?", [hash_key(key)]).fetchone()[0]
    run("keys", "revoke", key_id)
    one("key.revoke", key_id)
    assert run("keys", "revoke", key_id, check=False).returncode == 1  # no active key matches
    none()

    run("prices", "set", "gemma-3-270m", "--prompt", "0.000001", "--completion", "2e-6")
    one("price.set")
    run("margins", "set", "--percent", "15")
    one("margin.set")
    assert run("prices", "set", "nope", "--prompt", "0", "--completion", "0", check=False).returncode == 2
    none()
    with sqlite3.connect(tmp_path / "emporion.db") as db:
        stored = " ".join(str(v) for row in db.execute("select * from audit_events").fetchall() for v in row)
    assert key[8:] not in stored and hash_key(key) not in stored

    listed = json.loads(run("audit", "list", "--json", "--limit", "3").stdout)
    assert listed["object"] == "list" and len(listed["data"]) == 3 and listed["has_more"]
    assert [e["action"] for e in listed["data"]] == ["margin.set", "price.set", "key.revoke"] and listed["last_id"] == listed[
        "data"
    ][-1]["id"]
    older = json.loads(
        run("audit", "list", "--json", "--after", str(listed["last_id"]), "--org", "acme", "--action", "credit.top_up").stdout
    )
    assert [(e["action"], e["before"]["balance_usd"], e["after"]["balance_usd"]) for e in older["data"]] == [
        ("credit.top_up", "1", "5.5")
    ]
    table = run("audit", "list", "--org", "acme-shop").stdout
    assert "credit.transfer" in table and "organization.set_tier" in table and "tier: free -> tier-4" in table
    assert run("audit", "list", "--limit", "0", check=False).returncode == 2
    assert run("audit", "list", "--org", "nobody", check=False).returncode == 1


async def test_the_first_start_records_the_system_making_the_default_organization_and_its_key(tmp_path):
    settings = settings_for(tmp_path)
    await _first_start(settings)
    await _first_start(settings)  # a second start makes nothing, records nothing
    db = await open_database(settings.database_url)
    try:
        events = await all_events(db)
        ledger = Ledger(db)
        assert sum((await ledger.balances()).values()) == 0
        await ledger.aclose()
    finally:
        await db.close()
    assert [(e["action"], e["actor"]["kind"], e["actor"]["name"]) for e in events] == [
        ("organization.create", "system", "first start"),
        ("key.create", "system", "first start"),
    ]
    org, key = events
    assert org["after"]["name"] == "default" and org["after"]["tier"] == "operator" and org["after"]["balance_nanos"] == 10**9
    assert key["org_id"] == org["object_id"] and key["after"]["label"] == "first key" and key["after"]["kind"] == "api"
