"""The worst case a request may cost, the prompt bound, key budget periods, and versioned prices."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from emporion.auth.principal import Principal
from emporion.catalog.models import Deployment, Model
from emporion.core.prices import Margin, Price, charge, seen_by
from emporion.core.usage import Usage
from emporion.metering import pricebook as pricebook_module
from emporion.metering.estimate import prompt_bound
from emporion.metering.meter import budgets_of, worst_case
from emporion.metering.pricebook import PriceBook
from emporion.settings import Pricing
from emporion.store.session import open_database

per_token = st.decimals(min_value=0, max_value=Decimal("0.001"), places=9)


def model(deployments: list[tuple[str, Pricing | None]], pricing: Pricing = Pricing()) -> Model:
    return Model(
        id="m",
        name="m",
        kind="chat",
        deployments=tuple(Deployment(u, "m", 1, p) for u, p in deployments),
        context_length=1000,
        pricing=pricing,
        release="closed",
        license="x",
        provider="p",
        owned_by="p",
        created=0,
    )


class NoRows(PriceBook):
    """The config file's prices only (no database rows)."""

    def __init__(self, margin: Margin) -> None:
        super().__init__(db=None, default_margin=margin)  # type: ignore[arg-type]


@given(
    prompt=per_token,
    completion=per_token,
    percent=st.integers(0, 100),
    fixed=per_token,
    markup=st.integers(0, 50),
    bound=st.integers(1, 5000),
    max_out=st.integers(0, 5000),
    data=st.data(),
)
def test_no_usage_within_the_bounds_costs_more_than_the_worst_case(
    prompt, completion, percent, fixed, markup, bound, max_out, data
):
    book = NoRows(Margin(Decimal(percent), fixed))
    dear = Pricing(prompt=prompt * 2, completion=completion)
    m = model([("a", None), ("b", dear)], Pricing(prompt=prompt, completion=completion))
    principal = Principal("org", "org", "key", resellers=(("reseller", Margin(Decimal(markup))),))
    worst = worst_case(principal, book, [(m, d) for d in m.deployments], bound, max_out)
    cached = data.draw(st.integers(0, bound))
    usage = Usage(input_tokens=bound - cached, cached_input_tokens=cached, output_tokens=data.draw(st.integers(0, max_out)))
    for deployment in m.deployments:
        price = book.price(m, deployment, 0)[0]
        assert charge(usage, price, book.default_margin, [Margin(Decimal(markup))]).total <= worst


@given(st.text(max_size=300), st.integers(0, 4))
def test_the_prompt_bound_counts_every_byte_and_each_image(text, images):
    content = [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
    ] * images
    bound = prompt_bound({"messages": [{"role": "user", "content": content}]}, image_tokens=2000)
    assert bound >= len(text.encode("utf-8", "surrogatepass")) + 2000 * images
    assert bound < len(text.encode("utf-8", "surrogatepass")) + 2000 * images + 100  # images are not counted by their bytes


def test_key_budgets_have_a_total_and_one_row_per_period():
    principal = Principal("org", "org", "k1", budget_nanos=10, budget_period="week", period_budget_nanos=5)
    at = 1_795_000_000  # 2026-11-18 (Wednesday), UTC
    assert budgets_of(principal, at) == [("key:k1", 10), ("key:k1:week:2026-W47", 5)]
    monthly = Principal("org", "org", "k1", budget_period="month", period_budget_nanos=7)
    assert budgets_of(monthly, at) == [("key:k1:month:2026-11", 7)]
    assert budgets_of(Principal("org", "org", "k1"), at) == []


def test_prices_and_margins_are_versioned_by_effective_time(tmp_path):
    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'prices.db'}")
        try:
            book = PriceBook(db)
            m = model([("a", None), ("b", None)], Pricing(prompt=Decimal("0.1"), completion=Decimal("0.2")))
            a, b = m.deployments
            assert book.priced(m, a, at=50).price_id is None  # no row: the config's price
            old = await book.set_price("m", Price(prompt=Decimal("0.000001"), completion=Decimal("0.000002")), effective_at=100)
            new = await book.set_price("m", Price(prompt=Decimal("0.000003"), completion=Decimal("0.000004")), effective_at=200)
            only_b = await book.set_price(
                "m", Price(prompt=Decimal("0.5"), completion=Decimal("0.5")), upstream="b", effective_at=100
            )
            glob = await book.set_margin(Margin(Decimal(10)), effective_at=100)
            mine = await book.set_margin(Margin(Decimal(20), Decimal("0.01")), model_id="m", effective_at=150)
            assert [book.priced(m, a, at=t).price_id for t in (99, 100, 199, 200, 10**10)] == [None, old, old, new, new]
            assert book.priced(m, b, at=150).price_id == only_b
            assert [book.priced(m, a, at=t).margin_id for t in (99, 120, 150)] == [None, glob, mine]
            assert book.priced(m, a, at=199).price == Price(prompt=Decimal("0.000001"), completion=Decimal("0.000002"))
            fresh = PriceBook(db)  # another replica reads the same versions
            await fresh.load()
            assert fresh.priced(m, a, at=150) == book.priced(m, a, at=150)
        finally:
            await db.close()

    asyncio.run(scenario())


def test_the_price_for_now_is_kept_only_while_a_fresh_lookup_would_give_it(tmp_path, monkeypatch):
    clock = [50.0]
    monkeypatch.setattr(pricebook_module, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))

    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'prices.db'}")
        try:
            book = PriceBook(db)
            m = model([("a", None)], Pricing(prompt=Decimal("0.1"), completion=Decimal("0.2")))
            (a,) = m.deployments
            markups = [Margin(Decimal(5))]

            def agrees() -> bool:
                fresh = book.priced(m, a, at=clock[0])
                dearest = replace(fresh.price, prompt=max(fresh.price.prompt, fresh.price.cached_prompt or 0), cached_prompt=None)
                return (
                    book.priced(m, a) == fresh
                    and book.paid(m, a, markups) == seen_by(fresh.price, fresh.margin, markups)
                    and book.dearest(m, a).price == replace(dearest, cache_write=None)
                )

            assert agrees() and book.priced(m, a).price_id is None
            repriced = model([("a", None)], Pricing(prompt=Decimal("0.9")))  # the live catalog made new objects
            assert book.priced(repriced, repriced.deployments[0]).price.prompt == Decimal("0.9")
            await book.set_price("m", Price(prompt=Decimal("0.000001"), completion=Decimal("0.000002")), effective_at=100)
            await book.set_price(
                "m", Price(Decimal("0.000003"), Decimal("0.000004"), cached_prompt=Decimal("0.00001")), effective_at=200
            )
            await book.set_margin(Margin(Decimal(10)), effective_at=150)
            for now in (50, 99, 100, 149.5, 150, 199, 200, 10**10, 120, 99):  # forwards across each version, then back
                clock[0] = now
                assert agrees(), now
            clock[0] = 300
            assert book.priced(m, a).price.prompt == Decimal("0.000003")
            await book.set_price(
                "m", Price(prompt=Decimal("0.7"), completion=Decimal("0.7")), effective_at=250
            )  # a change: load()
            assert agrees() and book.priced(m, a).price.prompt == Decimal("0.7")
        finally:
            await db.close()

    asyncio.run(scenario())
