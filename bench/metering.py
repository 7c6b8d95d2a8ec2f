"""Metering on the request path: how many request lifecycles (reserve, then settle with the
request's record) the ledger commits per second, on SQLite and on PostgreSQL, with its writes
grouped many to a transaction (store/group_commit.py) against the same ledger with grouping off
(``MAX_BATCH = 1``: one transaction per write), measured in the same run. SQLite runs twice side
by side: with ``synchronous=FULL`` as shipped (the WAL synced at every commit) and with
``synchronous=NORMAL`` (``[database] sqlite_synchronous = "normal"``: synced at checkpoints only).

Each cell runs C concurrent coroutines for a fixed time over 50 organizations topped up
generously, on freshly emptied books; then the books are checked (they sum to zero, no hold is
left open, one charge posting and one request record per settled request) and the bench fails
loudly if they are not.

    python -m bench.metering            # concurrency 1, 16, 64, 256; 5 s per cell (~3 minutes)
    python -m bench.metering --quick    # concurrency 1, 64; 2 s per cell (~1 minute)

Writes bench/results/metering.md. Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust
auth); a throwaway database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import secrets
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select

from emporion.core.prices import Margin, Price, charge
from emporion.core.usage import Usage
from emporion.metering.ledger import Ledger
from emporion.settings import SqliteSynchronous
from emporion.store import group_commit, repos
from emporion.store.session import Database, open_database
from emporion.store.tables import Account, Hold, Posting, RequestRecord

RESULTS = Path(__file__).parent / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ORGS = 50
TOP_UP_NANOS = 10**12  # $1,000 per organization: never the limit
MAX_TOKENS = 1024
PRICE = Price(prompt=Decimal("0.000001"), completion=Decimal("0.000004"))
MARGIN = Margin(percent=Decimal(20))
STORES = {  # the report's keys, and how the table names them
    "sqlite": "sqlite, synchronous=FULL (as shipped)",
    "sqlite-normal": "sqlite, synchronous=NORMAL",
    "postgresql": "postgresql",
}


@dataclass
class Cell:
    settled: int
    elapsed_s: float
    reserve_ms: list[float]
    settle_ms: list[float]
    ops: int  # writes applied by the writer during the run
    batches: int  # transactions it took
    failed_batches: int  # transactions rolled back (then retried write by write)

    @property
    def rps(self) -> float:
        return self.settled / self.elapsed_s

    @property
    def mean_batch(self) -> float:
        return self.ops / max(1, self.batches)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


async def lifecycle(ledger: Ledger, org: str, request_id: str, cell: Cell, rng: random.Random) -> None:
    """One request as the pipeline meters it: the worst case held, the real usage settled."""
    prompt = rng.randint(20, 2000)
    hold = charge(Usage(input_tokens=prompt, output_tokens=MAX_TOKENS), PRICE, MARGIN).total
    began = time.perf_counter()
    await ledger.reserve(org, request_id, hold)
    reserved = time.perf_counter()
    usage = Usage(input_tokens=prompt, output_tokens=rng.randint(1, MAX_TOKENS))
    record: dict[str, Any] = {
        "org_id": org,
        "key_id": "key_bench",
        "model": "bench-model",
        "upstream": "bench",
        "upstream_model": "bench-model",
        "provider": "openai_compat",
        "endpoint": "chat",
        "streamed": False,
        "status": "completed",
        "finish_reason": "stop",
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": usage.output_tokens,
        "usage_source": "upstream",
        "price_id": None,
        "margin_id": None,
        "attempts": 1,
        "latency_ms": int((reserved - began) * 1000),
        "created_at": int(time.time()),
    }
    settled = await ledger.settle(request_id, charge(usage, PRICE, MARGIN), upstream="bench", record=record)
    done = time.perf_counter()
    if settled is None:
        raise AssertionError(f"{request_id} was reserved but did not settle")
    cell.reserve_ms.append((reserved - began) * 1000)
    cell.settle_ms.append((done - reserved) * 1000)
    cell.settled += 1


async def run_cell(db: Database, orgs: list[str], concurrency: int, duration_s: float, grouped: bool) -> Cell:
    """``concurrency`` coroutines doing lifecycles back to back for ``duration_s``, on empty books."""
    await empty(db)
    saved = group_commit.MAX_BATCH
    group_commit.MAX_BATCH = saved if grouped else 1  # GroupCommit._run reads it at each batch
    ledger = Ledger(db)
    failed = 0
    apply = ledger.writer.apply

    async def counted(conn, ops):  # counts transactions that roll back as a whole
        nonlocal failed
        try:
            return await apply(conn, ops)
        except Exception:
            failed += 1
            raise

    ledger.writer.apply = counted
    try:
        await asyncio.gather(*(ledger.top_up(org, TOP_UP_NANOS) for org in orgs))
        ops0, batches0 = ledger.writer.ops, ledger.writer.batches
        cell = Cell(0, 0.0, [], [], 0, 0, 0)
        tag = secrets.token_hex(3)
        deadline = time.perf_counter() + duration_s

        async def worker(number: int) -> None:
            rng = random.Random(number)
            sequence = 0
            while time.perf_counter() < deadline:
                sequence += 1
                await lifecycle(ledger, orgs[(number + sequence) % len(orgs)], f"req_{tag}_{number}_{sequence}", cell, rng)

        began = time.perf_counter()
        await asyncio.gather(*(worker(number) for number in range(concurrency)))
        cell.elapsed_s = time.perf_counter() - began
        cell.ops, cell.batches = ledger.writer.ops - ops0, ledger.writer.batches - batches0
        cell.failed_batches = failed
    finally:
        await ledger.aclose()
        group_commit.MAX_BATCH = saved
    if not grouped and cell.ops != cell.batches:
        raise SystemExit(f"MAX_BATCH = 1 did not take: {cell.ops} writes in {cell.batches} transactions")
    await check_books(db, cell.settled, len(orgs))
    return cell


async def empty_transactions_per_s(db: Database, duration_s: float) -> float:
    """What one transaction costs through SQLAlchemy's async driver with nothing in it (BEGIN,
    SELECT 1, COMMIT): the ceiling of a ledger that commits every write alone is half of this."""
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < duration_s:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("SELECT 1")
        count += 1
    return count / (time.perf_counter() - began)


def fsync_ms(directory: Path, count: int = 200) -> float:
    """What one fsync of a small write costs on the disk holding the SQLite files: the price of
    synchronous=FULL at each commit (next to nothing on tmpfs or behind a write cache)."""
    probe = directory / "fsync-probe"
    with probe.open("wb") as file:
        began = time.perf_counter()
        for _ in range(count):
            file.write(b"x" * 128)
            file.flush()
            os.fsync(file.fileno())
        elapsed = time.perf_counter() - began
    probe.unlink()
    return elapsed / count * 1000


async def empty(db: Database) -> None:
    async with db.engine.begin() as conn:
        for table in ("entries", "holds", "postings", "accounts", "budgets", "requests"):
            await conn.exec_driver_sql(f"DELETE FROM {table}")


async def check_books(db: Database, settled: int, orgs: int) -> None:
    """The books after a run, or SystemExit: they sum to zero, nothing is held, every settled
    request has exactly one charge posting and one record, and nothing else was charged."""
    async with db.engine.connect() as conn:
        total = (await conn.execute(select(func.coalesce(func.sum(Account.balance_nanos), 0)))).scalar_one()
        held = (await conn.execute(select(func.coalesce(func.sum(Account.held_nanos), 0)))).scalar_one()
        open_holds = (await conn.execute(select(func.count()).select_from(Hold).where(Hold.state == "open"))).scalar_one()
        holds = (await conn.execute(select(func.count()).select_from(Hold))).scalar_one()
        charges = (await conn.execute(select(func.count()).select_from(Posting).where(Posting.kind == "charge"))).scalar_one()
        records = (await conn.execute(select(func.count()).select_from(RequestRecord))).scalar_one()
        topups = (await conn.execute(select(func.count()).select_from(Posting).where(Posting.kind == "topup"))).scalar_one()
    found = {
        "sum of balances": total,
        "held": held,
        "open holds": open_holds,
        "holds": holds,
        "charge postings": charges,
        "records": records,
        "top-ups": topups,
    }
    wanted = {
        "sum of balances": 0,
        "held": 0,
        "open holds": 0,
        "holds": settled,
        "charge postings": settled,
        "records": settled,
        "top-ups": orgs,
    }
    if found != wanted:
        raise SystemExit(f"the books do not balance after {settled} settled requests: found {found}, wanted {wanted}")


async def make_orgs(db: Database) -> list[str]:
    async with db.session() as session, session.begin():
        return [(await repos.get_or_create_org(session, f"bench-{i}")).id for i in range(ORGS)]


Stores = dict[str, tuple[str, SqliteSynchronous]]  # name in the report -> (URL, synchronous)


async def bench_stores(urls: Stores, levels: tuple[int, ...], duration_s: float, report: dict) -> None:
    """The stores side by side: at each concurrency every store in turn, grouped and single, the
    orders reversed from one concurrency to the next against drift."""
    dbs = {store: await open_database(url, synchronous) for store, (url, synchronous) in urls.items()}
    try:
        orgs = {store: await make_orgs(db) for store, db in dbs.items()}
        for store, db in dbs.items():
            report[(store, "floor")] = await empty_transactions_per_s(db, min(duration_s, 2.0))
        for index, level in enumerate(levels):
            stores = list(dbs) if index % 2 == 0 else list(reversed(dbs))
            modes = (True, False) if index % 2 == 0 else (False, True)
            for store in stores:
                for grouped in modes:
                    cell = await run_cell(dbs[store], orgs[store], level, duration_s, grouped)
                    report[(store, level, grouped)] = cell
                    print(
                        f"{store:13} c={level:<3} {'grouped' if grouped else 'single ':8} {cell.rps:8.0f} req/s  "
                        f"reserve p50 {pct(cell.reserve_ms, 50):6.2f} p99 {pct(cell.reserve_ms, 99):7.2f} ms  "
                        f"settle p50 {pct(cell.settle_ms, 50):6.2f} p99 {pct(cell.settle_ms, 99):7.2f} ms  "
                        f"batch {cell.mean_batch:5.1f}  rolled back {cell.failed_batches}  books ✓",
                        flush=True,
                    )
    finally:
        for db in dbs.values():
            await db.close()


async def postgres_database() -> tuple[str, str]:
    name = "emporion_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def bench(levels: tuple[int, ...], duration_s: float) -> dict:
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="emporion-bench-metering-") as tmp:
        report[("sqlite", "fsync")] = fsync_ms(Path(tmp))
        sqlite: Stores = {
            "sqlite": (f"sqlite+aiosqlite:///{tmp}/full.db", "full"),
            "sqlite-normal": (f"sqlite+aiosqlite:///{tmp}/normal.db", "normal"),
        }
        await bench_stores(sqlite, levels, duration_s, report)
    name, url = await postgres_database()
    try:
        await bench_stores({"postgresql": (url, "full")}, levels, duration_s, report)  # synchronous: SQLite only
    finally:
        await drop_postgres_database(name)
    return report


def render(report: dict, levels: tuple[int, ...], duration_s: float) -> str:
    title = (
        f"# Metering: request lifecycles per second ({time.strftime('%Y-%m-%d')}, 2 cores, {duration_s:g} s "
        f"per cell, {ORGS} organizations)"
    )
    intro = (
        "One lifecycle: `ledger.reserve` (the worst-case hold), then `ledger.settle` (the charge split between provider "
        "and operator, and the request's record, in the same transaction). *grouped*: the group-commit writer as shipped "
        f"(up to {group_commit.MAX_BATCH} writes a transaction); *single*: the same ledger with `MAX_BATCH = 1`, one "
        "transaction per write. Latencies are the grouped ledger's (single's in brackets). SQLite runs in WAL mode, "
        "twice side by side: with `synchronous=FULL` as shipped (the WAL synced to disk at every commit, so a committed "
        'write survives a power loss) and with `synchronous=NORMAL` (`[database] sqlite_synchronous = "normal"`: synced '
        f"at checkpoints only); one fsync of a small write costs {report[('sqlite', 'fsync')]:.2f} ms on the disk holding "
        "the files."
    )
    header = (
        "| store | concurrency | grouped req/s | single req/s | grouped / single | reserve p50 / p99 ms | "
        "settle p50 / p99 ms | mean batch | rolled back | books |"
    )
    lines = [
        title,
        "",
        intro,
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for store, label in STORES.items():
        for level in levels:
            g, s = report[(store, level, True)], report[(store, level, False)]
            lines.append(
                f"| {label} | {level} | {g.rps:,.0f} | {s.rps:,.0f} | {g.rps / s.rps:.2f}x | "
                f"{pct(g.reserve_ms, 50):.2f} / {pct(g.reserve_ms, 99):.2f} ({pct(s.reserve_ms, 50):.2f} / {pct(s.reserve_ms, 99):.2f}) | "
                f"{pct(g.settle_ms, 50):.2f} / {pct(g.settle_ms, 99):.2f} ({pct(s.settle_ms, 50):.2f} / {pct(s.settle_ms, 99):.2f}) | "
                f"{g.mean_batch:.1f} | {g.failed_batches + s.failed_batches} | ✓ |"
            )
    lines += ["", *meaning(report, levels)]
    return "\n".join(lines) + "\n"


def meaning(report: dict, levels: tuple[int, ...]) -> list[str]:
    """The paragraph under the table, from this run's numbers."""
    top = levels[-1]
    ratios = [
        report[(store, level, True)].rps / report[(store, level, False)].rps for store in STORES for level in levels if level > 1
    ]
    one = [report[(store, 1, True)].rps / report[(store, 1, False)].rps for store in STORES]
    single = {store: max(report[(store, level, False)].rps for level in levels) for store in STORES}
    grouped = {store: report[(store, top, True)] for store in STORES}
    slower = all(
        pct(report[(store, level, True)].reserve_ms, 50) > pct(report[(store, level, True)].settle_ms, 50)
        for store in STORES
        for level in levels
        if level > 1
    )
    lockstep = all(abs(report[(store, level, True)].mean_batch - level) < 0.5 * level for store in STORES for level in levels)
    per_write = {store: 1000 / (2 * single[store]) for store in single}
    rolled_back = sum(cell.failed_batches for key, cell in report.items() if len(key) == 3)
    text = (
        f"What it means: committing every write alone caps the ledger at about {single['sqlite']:,.0f} (SQLite, FULL) and "
        f"{single['postgresql']:,.0f} (PostgreSQL) requests/s whatever the load, and latency grows with the queue: two "
        f"transactions a request, {per_write['sqlite']:.1f} ms and {per_write['postgresql']:.1f} ms each, where an empty "
        f"one (BEGIN, SELECT 1, COMMIT) costs {1000 / report[('sqlite', 'floor')]:.2f} ms and "
        f"{1000 / report[('postgresql', 'floor')]:.2f} ms through the async drivers. "
        f"Grouped, throughput grows with load: {min(ratios):.1f}x to {max(ratios):.1f}x the single-write ledger from "
        f"concurrency {min(level for level in levels if level > 1)} up, {grouped['sqlite'].rps:,.0f} (SQLite, FULL) and "
        f"{grouped['postgresql'].rps:,.0f} (PostgreSQL) settled requests/s at concurrency {top}, at no cost at "
        f"concurrency 1 ({min(one):.2f}x to {max(one):.2f}x)."
    )
    full, normal = "sqlite", "sqlite-normal"
    alone = report[(full, 1, True)].rps, report[(normal, 1, True)].rps
    text += (
        f" Durability's price on SQLite (FULL against NORMAL, an fsync of {report[('sqlite', 'fsync')]:.2f} ms here): a "
        f"write committed alone costs {per_write[full]:.1f} ms against {per_write[normal]:.1f} ms; grouped, "
        f"{grouped[full].rps:,.0f} against {grouped[normal].rps:,.0f} settled requests/s at concurrency {top} "
        f"({grouped[full].rps / grouped[normal].rps:.2f}x), {alone[0]:,.0f} against {alone[1]:,.0f} at concurrency 1 "
        f"({alone[0] / alone[1]:.2f}x): "
        "a batch pays one fsync, whatever the number of writes in it."
    )
    if lockstep:
        text += (
            " The mean batch is about the concurrency: the clients move in lockstep, all reservations in one "
            "transaction, all settlements in the next."
        )
    if slower:
        text += (
            " Under load a reservation waits longer than a settlement: reservations are applied one conditional "
            "UPDATE each (they must be refused one by one), settlements in bulk statements."
        )
    text += (
        " Every cell ended with balanced books: balances sum to zero, no hold open, one charge posting and one "
        f"request record per settled request. Transactions rolled back (then retried write by write): {rolled_back}."
    )
    return [text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 64, 2 s per cell")
    args = parser.parse_args()
    levels, duration_s = ((1, 64), 2.0) if args.quick else ((1, 16, 64, 256), 5.0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = asyncio.run(bench(levels, duration_s))
    text = render(report, levels, duration_s)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metering.md").write_text(text)


if __name__ == "__main__":
    main()
