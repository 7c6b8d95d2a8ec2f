"""The price book: each model's price and the operator's margin at any moment, versioned.

Prices set with the admin API or CLI are rows with an ``effective_at``: a new price never changes
what a past request cost, and every request record names the price and margin rows it was
charged under, so any charge can be explained and re-rated. Without a row, the config file's
``pricing`` applies (price id null). Lookups are in memory; ``load`` re-reads the rows (each
replica does so every few seconds, and at once after a change it made itself).

Every request looks its deployments' prices up several times (routing, the hold, the settlement),
so the answer for now is kept per deployment until the next version of any row it was chosen
from takes effect (or the next ``load``): a cached answer is always the one a fresh lookup gives.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from emporion.catalog.models import Deployment, Model
from emporion.core.prices import ZERO, Margin, Price, seen_by
from emporion.store.session import Database
from emporion.store.tables import MarginRow, PriceRow

MAX_MARKUP_CHAINS = 1024  # customers' prices kept per deployment (one per chain of reseller markups)
GLOBAL = ""  # the model id of the global margin, and the upstream of a model-wide price


@dataclass(frozen=True, slots=True)
class Priced:
    price: Price
    price_id: int | None  # the PriceRow charged under; None: the config file's pricing
    margin: Margin
    margin_id: int | None


class _Versions:
    """Values by effective time, ascending."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[tuple[int, object]] = []

    def add(self, at: int, row_id: int, value: object) -> None:
        index = bisect.bisect_right(self.times, at)
        self.times.insert(index, at)
        self.values.insert(index, (row_id, value))

    def at(self, moment: float) -> tuple[int, object] | None:
        index = bisect.bisect_right(self.times, moment)
        return self.values[index - 1] if index else None

    def window(self, moment: float) -> tuple[float, float]:
        """The span around ``moment`` in which ``at`` gives the same answer."""
        index = bisect.bisect_right(self.times, moment)
        return (self.times[index - 1] if index else -math.inf), (self.times[index] if index < len(self.times) else math.inf)


@dataclass(slots=True)
class _Kept:
    model: Model  # the catalog's objects it was computed from (a catalog refresh makes new ones)
    deployment: Deployment
    since: float
    until: float
    priced: Priced
    paid: dict[tuple[Margin, ...], Price]  # by the customer's markups
    dearest: Priced | None = None


class PriceBook:
    def __init__(self, db: Database, default_margin: Margin = Margin()) -> None:
        self.db = db
        self.default_margin = default_margin
        self._prices: dict[tuple[str, str], _Versions] = {}
        self._margins: dict[str, _Versions] = {}
        self._kept: dict[tuple[str, str], _Kept] = {}  # by (model, upstream): the answer for now

    async def load(self) -> None:
        prices: dict[tuple[str, str], _Versions] = defaultdict(_Versions)
        margins: dict[str, _Versions] = defaultdict(_Versions)
        async with self.db.engine.connect() as conn:
            for price_row in await conn.execute(select(PriceRow)):
                prices[(price_row.model_id, price_row.upstream)].add(price_row.effective_at, price_row.id, _price(price_row))
            for row in await conn.execute(select(MarginRow)):
                margins[row.model_id].add(row.effective_at, row.id, Margin(Decimal(row.percent), Decimal(row.fixed)))
        self._prices, self._margins, self._kept = dict(prices), dict(margins), {}

    def priced(self, model: Model, deployment: Deployment, at: float | None = None) -> Priced:
        """What a request to ``model`` served by ``deployment`` costs at ``at`` (default now)."""
        if at is not None:
            return self._lookup(model, deployment, at)
        return self._now(model, deployment).priced

    def _lookup(self, model: Model, deployment: Deployment, at: float) -> Priced:
        price, price_id = self.price(model, deployment, at)
        margin, margin_id = self.margin(model.id, at)
        return Priced(price, price_id, margin, margin_id)

    def _now(self, model: Model, deployment: Deployment) -> _Kept:
        now = time.time()
        key = (model.id, deployment.upstream)
        kept = self._kept.get(key)
        if kept is not None and kept.since <= now < kept.until and kept.model is model and kept.deployment is deployment:
            return kept
        since, until = -math.inf, math.inf
        for versions in (
            self._prices.get((model.id, deployment.upstream)),
            self._prices.get((model.id, GLOBAL)),
            self._margins.get(model.id),
            self._margins.get(GLOBAL),
        ):
            if versions is not None:
                start, end = versions.window(now)
                since, until = max(since, start), min(until, end)
        kept = _Kept(model, deployment, since, until, self._lookup(model, deployment, now), {})
        self._kept[key] = kept
        return kept

    def dearest(self, model: Model, deployment: Deployment) -> Priced:
        """``priced`` now, with every input token at the dearest of the input prices (prompt,
        cached, cache write): what a request's worst case is held at."""
        kept = self._now(model, deployment)
        if kept.dearest is None:
            price = kept.priced.price
            highest = max(price.prompt, price.cached_prompt or ZERO, price.cache_write or ZERO)
            kept.dearest = replace(kept.priced, price=replace(price, prompt=highest, cached_prompt=None, cache_write=None))
        return kept.dearest

    def list_price(self, model: Model, markups: Sequence[Margin] = ()) -> Price:
        """What a customer under ``markups`` pays for the model now (its first deployment), the
        operator's margin included: the price ``/v1/models`` shows that customer."""
        return self.paid(model, model.deployments[0], markups)

    def paid(self, model: Model, deployment: Deployment, markups: Sequence[Margin] = ()) -> Price:
        """What a customer under ``markups`` pays per token for ``model`` on ``deployment`` now:
        what routing compares (``sort=price``, ``:floor``, ``max_price``)."""
        kept = self._now(model, deployment)
        key = tuple(markups)
        paid = kept.paid.get(key)
        if paid is None:
            if len(kept.paid) >= MAX_MARKUP_CHAINS:
                kept.paid.clear()
            paid = kept.paid[key] = seen_by(kept.priced.price, kept.priced.margin, markups)
        return paid

    def price(self, model: Model, deployment: Deployment, at: float) -> tuple[Price, int | None]:
        for key in ((model.id, deployment.upstream), (model.id, GLOBAL)):
            found = self._prices.get(key)
            version = found.at(at) if found else None
            if version is not None:
                return version[1], version[0]  # type: ignore[return-value]
        pricing = deployment.pricing or model.pricing
        price = Price(pricing.prompt, pricing.completion, cached_prompt=pricing.cached_prompt, cache_write=pricing.cache_write)
        return price, None

    def margin(self, model_id: str, at: float) -> tuple[Margin, int | None]:
        for key in (model_id, GLOBAL):
            found = self._margins.get(key)
            version = found.at(at) if found else None
            if version is not None:
                return version[1], version[0]  # type: ignore[return-value]
        return self.default_margin, None

    async def set_price(self, model_id: str, price: Price, upstream: str = GLOBAL, effective_at: float | None = None) -> int:
        """A new price version (``upstream``: one deployment's price; "" the model's)."""
        async with self.db.engine.begin() as conn:
            row_id = await insert_price(conn, model_id, price, upstream, effective_at)
        await self.load()
        return row_id

    async def set_margin(self, margin: Margin, model_id: str = GLOBAL, effective_at: float | None = None) -> int:
        """A new margin version for one model, or the global one (``model_id`` "")."""
        async with self.db.engine.begin() as conn:
            row_id = await insert_margin(conn, margin, model_id, effective_at)
        await self.load()
        return row_id


async def insert_price(
    conn: AsyncConnection, model_id: str, price: Price, upstream: str = GLOBAL, effective_at: float | None = None
) -> int:
    """A price version's row, in the caller's transaction: ``PriceBook.load`` sees it once committed."""
    now = int(time.time())
    row = {
        "model_id": model_id,
        "upstream": upstream,
        "prompt": str(price.prompt),
        "completion": str(price.completion),
        "cached_prompt": None if price.cached_prompt is None else str(price.cached_prompt),
        "cache_write": None if price.cache_write is None else str(price.cache_write),
        "request": str(price.request),
        "effective_at": now if effective_at is None else int(effective_at),
        "created_at": now,
    }
    return (await conn.execute(insert(PriceRow).values(**row).returning(PriceRow.id))).scalar_one()


async def insert_margin(conn: AsyncConnection, margin: Margin, model_id: str = GLOBAL, effective_at: float | None = None) -> int:
    """A margin version's row, in the caller's transaction: ``PriceBook.load`` sees it once committed."""
    now = int(time.time())
    row = {
        "model_id": model_id,
        "percent": str(margin.percent),
        "fixed": str(margin.fixed),
        "effective_at": now if effective_at is None else int(effective_at),
        "created_at": now,
    }
    return (await conn.execute(insert(MarginRow).values(**row).returning(MarginRow.id))).scalar_one()


class _PriceColumns(Protocol):
    """The columns of a ``prices`` row that make its price: a PriceRow, or the Row that
    ``select(PriceRow)`` yields on a connection (columns by name, not an ORM object)."""

    @property
    def prompt(self) -> str: ...
    @property
    def completion(self) -> str: ...
    @property
    def cached_prompt(self) -> str | None: ...
    @property
    def cache_write(self) -> str | None: ...
    @property
    def request(self) -> str: ...


def _price(row: _PriceColumns) -> Price:
    return Price(
        prompt=Decimal(row.prompt),
        completion=Decimal(row.completion),
        cached_prompt=None if row.cached_prompt is None else Decimal(row.cached_prompt),
        cache_write=None if row.cache_write is None else Decimal(row.cache_write),
        request=Decimal(row.request),
    )
