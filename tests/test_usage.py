"""Usage reports and monthly statements: exact sums by day, model and key on SQLite and PostgreSQL,
statements that reconcile with the ledger, CSV and PDF renderings, the HTTP routes, tenant
isolation on them, and the ``emporion usage`` CLI.

The books are built directly: organizations and keys in the store, money and settled requests
through the real Ledger with a clock set by hand, so every request lands on a chosen second."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
import secrets
import sys
import threading
import time
import types
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from emporion.accounts.keys import issue_key
from emporion.app import build_app
from emporion.core.money import NANOS_PER_USD, Nanos
from emporion.core.prices import Charge, Margin, Price, charge
from emporion.core.usage import Usage
from emporion.metering import statements
from emporion.metering.ledger import Ledger, customer
from emporion.metering.usage import parse_range, totals, usage
from emporion.settings import (
    EmbeddingSettings,
    EngineSettings,
    ServerSettings,
    Settings,
)
from emporion.store import orgs, repos
from emporion.store.session import Database, open_database
from tests.conftest import emporion

PRICES = {
    "alpha": Price(prompt=Decimal("0.000001"), completion=Decimal("0.000004"), cached_prompt=Decimal("0.0000005")),
    "beta": Price(prompt=Decimal("0.0000031"), completion=Decimal("0.0000127"), request=Decimal("0.0001")),
}
MARGIN = Margin(percent=Decimal("12.5"), fixed=Decimal("0.000001"))
USD = NANOS_PER_USD


def at(text: str) -> int:
    """``2026-01-05 00:00:00`` (UTC) -> unix seconds."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Books:
    """What was put in, to compare the reports with."""

    db: Database
    ledger: Ledger
    clock: Clock
    org_ids: dict[str, str] = field(default_factory=dict)  # name -> id
    key_ids: dict[str, str] = field(default_factory=dict)  # name -> id
    keys: dict[str, str] = field(default_factory=dict)  # name -> plaintext
    charged: dict[str, tuple[str, str, str, int, Usage, int]] = field(
        default_factory=dict
    )  # id -> (org, key, model, created_at, usage, cost)

    async def org(self, name: str, parent: str | None = None) -> str:
        async with self.db.session() as session, session.begin():
            org = await repos.create_org(session, name, parent_id=self.org_ids.get(parent or ""))
        self.org_ids[name] = org.id
        return org.id

    async def key(self, name: str, org: str, kind: str = "api") -> str:
        async with self.db.session() as session, session.begin():
            found = await orgs.find_org(session, self.org_ids[org])
            new, row = await issue_key(session, found, orgs.KeyColumns(label=name))
            row.kind = kind
        self.key_ids[name], self.keys[name] = row.id, new.plaintext
        return row.id

    async def top_up(self, org: str, usd: str, when: int, grant: bool = False) -> None:
        self.clock.now = when
        move = self.ledger.grant if grant else self.ledger.top_up
        assert await move(self.org_ids[org], Nanos(int(Decimal(usd) * USD)))

    async def request(self, org: str, key: str, model: str, usage_: Usage, when: int) -> str:
        """One request, reserved and settled at ``when`` through the ledger, its record with it."""
        request_id = "req-" + secrets.token_hex(6)
        cost: Charge = charge(usage_, PRICES[model], MARGIN)
        self.clock.now = when
        await self.ledger.reserve(self.org_ids[org], request_id, Nanos(cost.total + 12_345))
        record = {
            "org_id": self.org_ids[org],
            "key_id": self.key_ids[key],
            "model": model,
            "upstream": "up",
            "upstream_model": model,
            "provider": "prov",
            "endpoint": "chat",
            "streamed": False,
            "status": "completed",
            "finish_reason": "stop",
            "input_tokens": usage_.input_tokens,
            "cached_input_tokens": usage_.cached_input_tokens,
            "cache_write_tokens": usage_.cache_write_tokens,
            "output_tokens": usage_.output_tokens,
            "usage_source": "upstream",
            "price_id": None,
            "margin_id": None,
            "attempts": 1,
            "latency_ms": 42,
            "created_at": when,
        }
        settled = await self.ledger.settle(request_id, cost, "up", record=record)
        assert settled is not None and settled.charged == cost.total
        self.charged[request_id] = (org, key, model, when, usage_, cost.total)
        return request_id

    async def refund(self, request_id: str, when: int) -> int:
        self.clock.now = when
        return await self.ledger.refund(request_id)


async def january_books(url: str) -> Books:
    """Two tenants. acme: credit and a request in December, a month of traffic in January (one
    request on the first second of a day, one refunded), a request on the first second of
    February. globex: traffic of its own on the same days."""
    db = await open_database(url)
    clock = Clock(at("2025-12-01 00:00:00"))
    books = Books(db, Ledger(db, clock=clock), clock)
    for name in ("acme", "globex"):
        await books.org(name)
    await books.key("acme-app", "acme")
    await books.key("acme-batch", "acme")
    await books.key("globex-app", "globex")
    await books.top_up("acme", "10", at("2025-12-20 10:00:00"))
    await books.top_up("globex", "3", at("2025-12-21 10:00:00"))
    await books.request("acme", "acme-app", "alpha", Usage(1000, 0, 0, 200), at("2025-12-28 12:00:00"))
    await books.top_up("acme", "2", at("2026-01-01 00:00:00"), grant=True)
    await books.request("acme", "acme-app", "alpha", Usage(1234, 100, 0, 567), at("2026-01-03 08:00:00"))
    refunded = await books.request("acme", "acme-batch", "beta", Usage(777, 0, 10, 333), at("2026-01-03 23:59:59"))
    await books.request("acme", "acme-batch", "alpha", Usage(5, 0, 0, 9999), at("2026-01-05 00:00:00"))
    await books.request("acme", "acme-app", "beta", Usage(31, 0, 0, 7), at("2026-01-31 23:59:59"))
    await books.request("globex", "globex-app", "alpha", Usage(999, 0, 0, 999), at("2026-01-03 09:00:00"))
    await books.request("globex", "globex-app", "beta", Usage(50, 0, 0, 50), at("2026-01-05 09:00:00"))
    assert await books.refund(refunded, at("2026-01-10 12:00:00")) > 0
    await books.top_up("acme", "5.25", at("2026-01-20 12:00:00"))
    await books.request("acme", "acme-app", "alpha", Usage(10, 0, 0, 10), at("2026-02-01 00:00:00"))
    return books


async def close(books: Books) -> None:
    await books.ledger.aclose()
    await books.db.close()


def expected(books: Books, org: str, start: int, end: int, group) -> dict[str, tuple[int, int, int, int, int, int]]:
    """The reference: (requests, input, cached, cache write, output, cost) per group, by hand."""
    sums: dict[str, list[int]] = {}
    for org_, key, model, when, used, cost in books.charged.values():
        if org_ != org or not start <= when < end:
            continue
        row = sums.setdefault(group(key, model, when), [0] * 6)
        for index, value in enumerate(
            (1, used.input_tokens, used.cached_input_tokens, used.cache_write_tokens, used.output_tokens, cost)
        ):
            row[index] += value
    return {name: tuple(row) for name, row in sums.items()}  # type: ignore[misc]


def as_dict(rows) -> dict[str, tuple[int, int, int, int, int, int]]:
    return {
        r.group: (r.requests, r.input_tokens, r.cached_input_tokens, r.cache_write_tokens, r.output_tokens, r.cost_nanos)
        for r in rows
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    return request.getfixturevalue("postgres_url")


# --- usage ---------------------------------------------------------------------------------------

JAN = (at("2026-01-01 00:00:00"), at("2026-02-01 00:00:00"))


async def test_usage_by_day_model_and_key_sums_exactly(url):
    books = await january_books(url)
    try:
        acme = books.org_ids["acme"]
        by_day = await usage(books.db, acme, *JAN, "day")

        def day(key: str, model: str, when: int) -> str:
            return dt.datetime.fromtimestamp(when, dt.UTC).date().isoformat()

        assert as_dict(by_day) == expected(books, "acme", *JAN, day)
        assert [r.group for r in by_day] == ["2026-01-03", "2026-01-05", "2026-01-31"]  # the first second of a day is that day's
        assert by_day[0].requests == 2 and by_day[0].input_tokens == 1234 + 777

        by_model = await usage(books.db, acme, *JAN, "model")
        assert as_dict(by_model) == expected(books, "acme", *JAN, lambda key, model, when: model)
        assert [r.cost_nanos for r in by_model] == sorted((r.cost_nanos for r in by_model), reverse=True)

        by_key = await usage(books.db, acme, *JAN, "key")
        assert as_dict(by_key) == expected(books, "acme", *JAN, lambda key, model, when: books.key_ids[key])
        assert {r.key_label for r in by_key} == {"acme-app", "acme-batch"} and all(r.key_prefix for r in by_key)

        only = await usage(books.db, acme, *JAN, "model", key_id=books.key_ids["acme-batch"])
        assert sum(r.requests for r in only) == 2
        assert (
            await usage(books.db, acme, *JAN, "model", key_id=books.key_ids["globex-app"]) == []
        )  # another tenant's key: nothing

        for rows in (by_day, by_model, by_key):
            total = totals(rows)
            assert total.requests == 4 and total.cost_nanos == sum(
                c[5] for c in books.charged.values() if c[0] == "acme" and JAN[0] <= c[3] < JAN[1]
            )
        assert totals(by_day) == totals(by_model) == totals(by_key)
        december = await usage(books.db, acme, at("2025-12-01 00:00:00"), JAN[0], "day")
        assert [r.group for r in december] == ["2025-12-28"]
        globex = as_dict(await usage(books.db, books.org_ids["globex"], *JAN, "day"))
        assert globex == expected(books, "globex", *JAN, day) and set(globex) == {"2026-01-03", "2026-01-05"}
    finally:
        await close(books)


def test_usage_range_defaults_to_the_last_30_days_and_refuses_bad_dates():
    today = dt.date(2026, 3, 10)
    assert parse_range(None, None, today) == (dt.date(2026, 2, 9), today)
    assert parse_range("2026-01-01", "2026-01-31") == (dt.date(2026, 1, 1), dt.date(2026, 1, 31))
    for start, end, param in (
        ("2026-13-01", None, "start"),
        ("2026-1-1", None, "start"),
        (None, "yesterday", "end"),
        ("2026-02-01", "2026-01-01", "start"),
        ("2000-01-01", "2026-01-01", "start"),
        (None, "0001-01-01", "end"),
        ("２０２６-０１-０１", None, "start"),
    ):
        with pytest.raises(Exception) as raised:
            parse_range(start, end, today)
        assert raised.value.status == 400 and raised.value.param == param  # type: ignore[attr-defined]


# --- statements ----------------------------------------------------------------------------------


async def test_statement_reconciles_with_the_ledger(url):
    books = await january_books(url)
    try:
        acme = books.org_ids["acme"]
        dec = await statements.statement(books.db, acme, "2025-12")
        jan = await statements.statement(books.db, acme, "2026-01")
        feb = await statements.statement(books.db, acme, "2026-02")
        charged = {rid: c for rid, c in books.charged.items() if c[0] == "acme"}
        december_charge = sum(c[5] for c in charged.values() if c[3] < JAN[0])
        assert dec.opening_nanos == 0 and dec.closing_nanos == 10 * USD - december_charge
        assert jan.opening_nanos == dec.closing_nanos and feb.opening_nanos == jan.closing_nanos  # months chain
        for done in (dec, jan, feb):
            movements = done.credits_nanos + done.charges_nanos + done.refunds_nanos + done.adjustments_nanos
            assert done.opening_nanos + movements == done.closing_nanos

        assert [(m.kind, m.count, m.amount_nanos) for m in jan.credits] == [("grant", 1, 2 * USD), ("topup", 1, 5_250_000_000)]
        in_jan = [c for c in charged.values() if JAN[0] <= c[3] < JAN[1]]
        refunded = next(rid for rid, c in charged.items() if c[2] == "beta" and c[3] == at("2026-01-03 23:59:59"))
        assert [(m.kind, m.count, m.amount_nanos) for m in jan.refunds] == [("refund", 1, charged[refunded][5])]
        by_model = {line.model: line for line in jan.charges}
        for model in ("alpha", "beta"):
            mine = [c for c in in_jan if c[2] == model]
            line = by_model[model]
            assert line.requests == len(mine) and line.amount_nanos == -sum(c[5] for c in mine)
            assert line.input_tokens == sum(c[4].input_tokens for c in mine) and line.output_tokens == sum(
                c[4].output_tokens for c in mine
            )
        assert jan.adjustments == ()
        assert (
            jan.closing_nanos
            == 10 * USD + 2 * USD + 5_250_000_000 - sum(c[5] for c in charged.values() if c[3] < JAN[1]) + charged[refunded][5]
        )

        balances = await books.ledger.balances()
        assert feb.closing_nanos == balances[customer(acme)] == await books.ledger.available(acme)  # no open holds
        later = await statements.statement(books.db, acme, "2026-07")
        assert later.opening_nanos == later.closing_nanos == balances[customer(acme)] and later.charges == ()
        globex = await statements.statement(books.db, books.org_ids["globex"], "2026-01")
        assert globex.closing_nanos == balances[customer(books.org_ids["globex"])] and {c.model for c in globex.charges} == {
            "alpha",
            "beta",
        }
    finally:
        await close(books)


async def test_statement_refuses_bad_months(tmp_path):
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        async with db.session() as session, session.begin():
            org = await repos.create_org(session, "m")
        for month in ("2026-13", "2026-1", "26-01", "2026-00", "January", "2026-01-01", "٢٠٢٦-٠١", "0000-01"):
            with pytest.raises(Exception) as raised:
                await statements.statement(db, org.id, month)
            assert raised.value.status == 400 and raised.value.param == "month"  # type: ignore[attr-defined]
        assert statements.month_bounds("2026-12") == (at("2026-12-01 00:00:00"), at("2027-01-01 00:00:00"))
    finally:
        await db.close()


def parse_csv(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    head, _, items = text.partition("\n\n")
    return dict(csv.reader(io.StringIO(head))), list(csv.DictReader(io.StringIO(items)))


def pdf_text(pdf: bytes) -> str:
    """The text shown on the pages: each content stream inflated, its literal strings joined."""
    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.DOTALL):
        try:
            stream = zlib.decompress(stream)
        except zlib.error:
            pass
        shown += [
            s.decode("latin-1").replace("\\(", "(").replace("\\)", ")")
            for s in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", stream)
        ]
    return "\n".join(shown)


async def test_statement_csv_parses_back_to_the_same_numbers_and_pdf_shows_them(tmp_path):
    books = await january_books(f"sqlite+aiosqlite:///{tmp_path / 'csv.db'}")
    try:
        jan = await statements.statement(books.db, books.org_ids["acme"], "2026-01")
    finally:
        await close(books)
    head, items = parse_csv(statements.to_csv(jan))

    def nanos(text: str) -> int:
        return int(Decimal(text) * USD)

    assert head["organization"] == "acme" and head["organization_id"] == jan.org_id and head["month"] == "2026-01"
    assert head["period_start"] == "2026-01-01" and head["period_end"] == "2026-01-31"
    for name, amount in jan.summary():
        assert nanos(head[f"{name}_usd"]) == amount
    assert nanos(head["opening_balance_usd"]) + sum(nanos(item["amount_usd"]) for item in items) == nanos(
        head["closing_balance_usd"]
    )
    charges = {item["description"]: item for item in items if item["section"] == "charge"}
    for line in jan.charges:
        item = charges[line.model]
        assert nanos(item["amount_usd"]) == line.amount_nanos and int(item["count"]) == line.requests
        assert (int(item["input_tokens"]), int(item["output_tokens"])) == (line.input_tokens, line.output_tokens)
    assert {(i["section"], i["description"]) for i in items if i["section"] != "charge"} == {
        ("credit", "grant"),
        ("credit", "topup"),
        ("refund", "refund"),
    }
    assert "e" not in "".join(i["amount_usd"] for i in items).lower()  # plain decimals, never an exponent

    pdf = statements.to_pdf(jan)
    assert pdf.startswith(b"%PDF")
    text = pdf_text(pdf)
    assert "acme" in text and f"${statements.usd(jan.closing_nanos)}" in text and "alpha" in text

    many = statements.Statement(
        jan.org_id,
        "Ünïcode ☃ GmbH",
        jan.month,
        jan.start,
        jan.end,
        jan.opening_nanos,
        jan.credits,
        tuple(statements.ChargeLine(f"model-{i}", 1, 1, 0, 0, 1, -1) for i in range(95)),
        (),
        (),
        jan.opening_nanos + jan.credits_nanos - 95,
    )
    long = pdf_text(statements.to_pdf(many))
    assert "page 3 of 3" in long and "model-94" in long and "Ünïcode ? GmbH" in long


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass
class Gateway:
    client: httpx.AsyncClient
    books: Books
    db: Database  # the app's

    async def get(self, path: str, key: str, **params) -> httpx.Response:
        return await self.client.get(path, params=params, headers={"authorization": f"Bearer {self.books.keys[key]}"})

    async def ok(self, path: str, key: str, **params) -> httpx.Response:
        response = await self.get(path, key, **params)
        assert response.status_code == 200, response.text
        return response


@pytest.fixture
async def gateway(tmp_path):
    """Two tenants with traffic today; acme has a sub-organization. Keys: api and admin for each,
    an operator's; the app is started after the books are written."""
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(enabled=False),
        embeddings=EmbeddingSettings(enabled=False),
        server=ServerSettings(auth_cache_s=0),
    )
    db = await open_database(settings.database_url)
    clock = Clock(time.time())
    books = Books(db, Ledger(db, clock=clock), clock)
    for name, parent in (("acme", None), ("acme-child", "acme"), ("globex-secret-name", None), ("ops", None)):
        await books.org(name, parent)
    for name, org, kind in (
        ("a-api", "acme", "api"),
        ("a-admin", "acme", "admin"),
        ("child-api", "acme-child", "api"),
        ("b-api", "globex-secret-name", "api"),
        ("b-admin", "globex-secret-name", "admin"),
        ("op", "ops", "operator"),
    ):
        await books.key(name, org, kind)
    now = int(time.time())
    for org, key in (("acme", "a-api"), ("acme-child", "child-api"), ("globex-secret-name", "b-api")):
        await books.top_up(org, "4", now - 3 * 86_400)
        await books.request(org, key, "alpha", Usage(100, 0, 0, 50), now - 86_400)
        await books.request(org, key, "beta", Usage(300, 0, 0, 70), now)
    await books.request("acme", "a-admin", "alpha", Usage(1, 0, 0, 2), now - 40 * 86_400)  # outside the default 30 days
    await books.ledger.aclose()
    await db.close()
    app = build_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield Gateway(client, books, app.state.deps.db)


def month_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


async def test_usage_route_reports_the_calling_keys_own_organization(gateway):
    books = gateway.books
    body = (await gateway.ok("/v1/usage", "a-api", group_by="model")).json()
    now = int(time.time())
    assert body["organization_id"] == books.org_ids["acme"] and body["group_by"] == "model"
    assert body["end"] == dt.datetime.now(dt.UTC).date().isoformat()
    want = expected(books, "acme", now - 29 * 86_400 - now % 86_400, now + 86_400, lambda key, model, when: model)
    assert {r["group"]: (r["requests"], r["input_tokens"], r["output_tokens"], r["cost_nanos"]) for r in body["data"]} == {
        model: (row[0], row[1], row[4], row[5]) for model, row in want.items()
    }
    assert body["total"]["cost_nanos"] == sum(row[5] for row in want.values()) and body["total"]["requests"] == 2
    assert Decimal(body["total"]["cost_usd"]) * USD == body["total"]["cost_nanos"]
    by_key = (await gateway.ok("/v1/usage", "a-admin", group_by="key", start="2000-01-01", end="2004-01-01")).json()
    assert by_key["data"] == [] and by_key["total"]["requests"] == 0
    wide = (
        await gateway.ok(
            "/v1/usage", "a-admin", group_by="key", start=dt.datetime.fromtimestamp(now - 50 * 86_400, dt.UTC).date().isoformat()
        )
    ).json()
    assert {r["key_label"] for r in wide["data"]} == {"a-api", "a-admin"}  # any kind of key; the child's usage is its own
    spied = (await gateway.ok("/v1/usage", "a-api", key_id=books.key_ids["b-api"])).json()
    assert spied["data"] == [] and "globex" not in str(spied)
    for params, param in (
        ({"group_by": "week"}, "group_by"),
        ({"start": "2026-02-30"}, "start"),
        ({"end": "soon"}, "end"),
        ({"start": "2026-02-02", "end": "2026-02-01"}, "start"),
    ):
        response = await gateway.get("/v1/usage", "a-api", **params)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert (await gateway.client.get("/v1/usage")).status_code == 401


async def test_statement_routes_render_json_csv_and_pdf(gateway):
    books = gateway.books
    month = month_now()
    body = (await gateway.ok(f"/v1/statements/{month}", "a-api")).json()
    assert body["object"] == "statement" and body["organization_name"] == "acme" and body["month"] == month
    mine = [c for c in books.charged.values() if c[0] == "acme" and c[3] >= statements.month_bounds(month)[0]]
    assert -sum(int(c["amount_nanos"]) for c in body["charges"]) == sum(c[5] for c in mine)
    assert (
        body["closing_balance_nanos"]
        == body["opening_balance_nanos"] + body["credits_nanos"] + body["charges_nanos"] + body["refunds_nanos"]
    )
    async with gateway.db.session() as session:
        assert body["closing_balance_nanos"] == (await orgs.balance_of(session, books.org_ids["acme"])).balance_nanos

    as_csv = await gateway.ok(f"/v1/statements/{month}", "a-api", format="csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"] == f'attachment; filename="statement-{month}-{books.org_ids["acme"]}.csv"'
    head, _ = parse_csv(as_csv.text)
    assert int(Decimal(head["closing_balance_usd"]) * USD) == body["closing_balance_nanos"]
    as_pdf = await gateway.ok(
        f"/admin/v1/organizations/{books.org_ids['acme-child']}/statements/{month}", "a-admin", format="pdf"
    )
    assert as_pdf.headers["content-type"] == "application/pdf" and as_pdf.headers["content-disposition"].startswith("attachment;")
    assert as_pdf.content.startswith(b"%PDF") and "acme-child" in pdf_text(as_pdf.content)

    for path, params, param in (
        (f"/v1/statements/{month}", {"format": "xml"}, "format"),
        ("/v1/statements/2026-13", {}, "month"),
    ):
        response = await gateway.get(path, "a-api", **params)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def tenant_routes(org_id: str) -> list[tuple[str, dict[str, str]]]:
    base = f"/admin/v1/organizations/{org_id}"
    month = month_now()
    return [
        (base + "/usage", {}),
        (base + "/usage", {"group_by": "key"}),
        (base + "/usage", {"group_by": "nonsense", "start": "bad"}),  # 404 before any parameter is judged
        (base + f"/statements/{month}", {}),
        (base + f"/statements/{month}", {"format": "csv"}),
        (base + f"/statements/{month}", {"format": "pdf"}),
        (base + "/statements/2026-13", {}),
    ]


async def test_tenant_isolation_on_usage_and_statement_routes(gateway):
    books = gateway.books
    b_id, b_name = books.org_ids["globex-secret-name"], "globex-secret-name"
    unknown = "org_" + secrets.token_hex(12)
    for path, params in tenant_routes(b_id):
        seen = await gateway.get(path, "a-admin", **params)
        assert seen.status_code == 404, (path, seen.text)
        assert b_id not in seen.text and b_name not in seen.text and "globex" not in seen.text
        assert seen.json()["error"]["code"] == "organization_not_found"
        nothing = await gateway.get(path.replace(b_id, unknown), "a-admin", **params)
        assert (nothing.status_code, nothing.text) == (seen.status_code, seen.text)  # as if it did not exist
        for key in ("a-api", "child-api", "b-api"):  # API keys never reach /admin, not even on their own organization
            refused = await gateway.get(path, key, **params)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required", refused.text
            assert b_id not in refused.text and b_name not in refused.text
    for path, params in tenant_routes(books.org_ids["acme"])[:2]:  # a sub-organization's admin key cannot look up
        assert (await gateway.get(path, "b-admin", **params)).status_code == 404
    child = (await gateway.ok(f"/admin/v1/organizations/{books.org_ids['acme-child']}/usage", "a-admin")).json()
    assert child["organization_id"] == books.org_ids["acme-child"] and child["total"]["requests"] == 2  # its reseller sees it
    assert (await gateway.get(f"/admin/v1/organizations/{books.org_ids['acme']}/usage", "a-admin")).status_code == 200
    operator = (await gateway.ok(f"/admin/v1/organizations/{b_id}/statements/{month_now()}", "op")).json()
    assert operator["organization_name"] == b_name
    own = (await gateway.ok(f"/v1/statements/{month_now()}", "b-api")).json()
    assert own["organization_id"] == b_id and "acme" not in str(own)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_shows_usage_and_writes_statements(tmp_path: Path):
    async def build() -> Books:
        books = await january_books(f"sqlite+aiosqlite:///{tmp_path / 'emporion.db'}")
        await close(books)
        return books

    books = asyncio.run(build())
    shown = emporion(
        "usage", "show", "--org", "acme", "--by", "model", "--start", "2026-01-01", "--end", "2026-01-31", data_dir=tmp_path
    )
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in shown.stdout.splitlines()
        if line.count("│") > 3
    }
    want = expected(books, "acme", *JAN, lambda key, model, when: model)
    for model, (requests, inp, cached, write, out, cost) in want.items():
        assert rows[model][:5] == [str(requests), str(inp), str(cached), str(write), str(out)]
        assert int(Decimal(rows[model][5]) * USD) == cost
    assert rows["total"][0] == "4"

    out = tmp_path / "jan.csv"
    emporion(
        "usage", "statement", "--org", "acme", "--month", "2026-01", "--format", "csv", "--output", str(out), data_dir=tmp_path
    )
    head, _ = parse_csv(out.read_text())
    assert head["organization"] == "acme" and head["month"] == "2026-01"
    pdf = tmp_path / "jan.pdf"
    emporion(
        "usage",
        "statement",
        "--org",
        books.org_ids["acme"],
        "--month",
        "2026-01",
        "--format",
        "pdf",
        "--output",
        str(pdf),
        data_dir=tmp_path,
    )
    assert pdf.read_bytes().startswith(b"%PDF") and head["closing_balance_usd"] in pdf_text(pdf.read_bytes())

    bad = emporion("usage", "show", "--org", "acme", "--start", "2026-02-31", data_dir=tmp_path, check=False)
    assert bad.returncode == 2 and "start" in bad.stderr
    missing = emporion(
        "usage", "statement", "--org", "nobody", "--month", "2026-01", "--output", str(out), data_dir=tmp_path, check=False
    )
    assert missing.returncode == 1 and "nobody" in missing.stderr


# --- PDF rendering off the event loop ------------------------------------------------------------


async def test_render_pdf_leaves_the_event_loop_serving_while_it_renders():
    """The renderer reads the organization's name; this one, when read, waits for the event loop
    to run a coroutine. On a worker thread that is answered at once; on the loop's own thread it
    would wait for itself, so there it does not wait and the test fails instead."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    seen: list[tuple[int, bool]] = []  # (the renderer's thread, whether the loop ran meanwhile)

    class Gate(str):
        def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
            here = threading.get_ident()
            ran = here != loop_thread and asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, result=True), loop).result(
                timeout=60
            )
            seen.append((here, ran))
            return super().encode(encoding, errors)

    done = statements.Statement(
        "org_gate", Gate("Gate GmbH"), "2026-01", *statements.month_bounds("2026-01"), 0, (), (), (), (), 0
    )
    pdf = await statements.render_pdf(done)
    assert seen and all(thread != loop_thread and ran for thread, ran in seen), seen
    assert "Gate GmbH" in pdf_text(pdf)


def fpdf_threads(stop: threading.Event, found: set[int]) -> None:
    """Until ``stop``: the threads seen running fpdf2's code, sampled from every thread's stack."""
    while not stop.is_set():
        for thread, frame in sys._current_frames().items():
            stack: types.FrameType | None = frame
            while stack is not None:
                if "fpdf" in Path(stack.f_code.co_filename).parts:
                    found.add(thread)
                    break
                stack = stack.f_back
        time.sleep(0.001)


async def test_statement_pdf_route_renders_off_the_event_loop_thread(gateway):
    """A statement of 2,000 models (50 pages, a few tenths of a second of fpdf2) over HTTP: fpdf2
    is seen running, and never on the thread of the event loop serving the request."""
    books, ledger = gateway.books, Ledger(gateway.db)
    acme = books.org_ids["acme"]

    async def one(number: int) -> None:
        request_id, cost = f"req-many-{number}", charge(Usage(1, 0, 0, 1), PRICES["alpha"], MARGIN)
        await ledger.reserve(acme, request_id, cost.total)
        record = {
            "org_id": acme,
            "key_id": books.key_ids["a-api"],
            "model": f"model-{number:04}",
            "upstream": "up",
            "upstream_model": "m",
            "provider": "prov",
            "endpoint": "chat",
            "streamed": False,
            "status": "completed",
            "finish_reason": "stop",
            "input_tokens": 1,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 1,
            "usage_source": "upstream",
            "price_id": None,
            "margin_id": None,
            "attempts": 1,
            "latency_ms": 1,
            "created_at": int(time.time()),
        }
        assert await ledger.settle(request_id, cost, "up", record=record) is not None

    try:
        for first in range(0, 2000, 250):
            await asyncio.gather(*(one(number) for number in range(first, first + 250)))
    finally:
        await ledger.aclose()
    stop = threading.Event()
    found: set[int] = set()
    sampler = threading.Thread(target=fpdf_threads, args=(stop, found), name="fpdf-sampler", daemon=True)
    sampler.start()
    try:
        pdf = await gateway.ok(f"/v1/statements/{month_now()}", "a-api", format="pdf")
    finally:
        stop.set()
        sampler.join()
    assert "model-1999" in pdf_text(pdf.content) and "page 51 of 51" in pdf_text(pdf.content)
    assert found and threading.get_ident() not in found, found
