"""The ledger under Hypothesis' stateful testing, on SQLite and on PostgreSQL: top-ups, grants,
reserve (against a budget too), settle (twice), release, refund, transfer, a crash and restart of
the process between any two steps, expiry of crashed requests;
after every step the books sum to zero, no balance or budget is overdrawn, every account's held
amount is the sum of its open holds, and no request is charged twice or more than its hold."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule
from sqlalchemy import func, select

from emporion.core.prices import Margin, Price, charge
from emporion.core.usage import Usage
from emporion.metering.ledger import BudgetExceeded, InsufficientCredits, Ledger, customer
from emporion.store import repos
from emporion.store.session import open_database
from emporion.store.tables import Account, Budget, Hold, Posting
from tests.conftest import fresh_postgres

PRICE = Price(prompt=Decimal("0.000001"), completion=Decimal("0.000004"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class LedgerMachine(RuleBasedStateMachine):
    url: str = ""
    requests = Bundle("requests")

    @initialize()
    def open_books(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.db = self.run(open_database(self.url))
        self.run(_empty(self.db))
        self.clock = Clock()
        self.ledger = Ledger(self.db, clock=self.clock)
        self.orgs = [self.run(_org(self.db, f"org-{i}-{secrets.token_hex(3)}")) for i in range(2)]
        self.holds: dict[str, tuple[str, int]] = {}
        self.charged: dict[str, int] = {}
        self.refunded: set[str] = set()
        self.budget = ("budget:" + secrets.token_hex(4), 3 * 10**7)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.run(self.ledger.aclose())
            self.run(self.db.close())
            self.loop.close()

    @rule(org=st.integers(0, 1), amount=st.integers(1, 10**8), paid=st.booleans())
    def add_credit(self, org, amount, paid):
        self.run((self.ledger.top_up if paid else self.ledger.grant)(self.orgs[org], amount))

    @rule(target=requests, org=st.integers(0, 1), amount=st.integers(0, 5 * 10**7))
    def reserve(self, org, amount):
        request_id = "req_" + secrets.token_hex(8)
        before = self.run(self.ledger.available(self.orgs[org]))
        budgets = [self.budget] if org == 1 else []
        try:
            self.run(self.ledger.reserve(self.orgs[org], request_id, amount, ttl_s=60, budgets=budgets))
        except InsufficientCredits:
            assert before < amount
            return request_id
        except BudgetExceeded:
            assert budgets and self.run(_budget_spent(self.db, self.budget[0])) + amount > self.budget[1]
            assert self.run(self.ledger.available(self.orgs[org])) == before  # refused: nothing held
            return request_id
        assert before >= amount
        self.holds[request_id] = (self.orgs[org], amount)
        return request_id

    @rule(request_id=requests, prompt=st.integers(0, 20_000), output=st.integers(0, 20_000), margin=st.integers(0, 50))
    def settle(self, request_id, prompt, output, margin):
        c = charge(Usage(input_tokens=prompt, output_tokens=output), PRICE, Margin(percent=Decimal(margin)))
        settled = self.run(self.ledger.settle(request_id, c, upstream="openai"))
        if settled is not None:
            assert request_id in self.holds and request_id not in self.charged
            hold = self.holds[request_id][1]
            assert settled.charged == min(c.total, hold) and settled.charged + settled.released == hold
            self.charged[request_id] = settled.charged

    @rule(request_id=requests)
    def settle_again_changes_nothing(self, request_id):
        if request_id not in self.charged:
            return
        before = self.run(self.ledger.balances())
        assert self.run(self.ledger.settle(request_id, charge(Usage(output_tokens=5), PRICE), upstream="openai")) is None
        assert self.run(self.ledger.balances()) == before

    @rule(request_id=consumes(requests))
    def release(self, request_id):
        self.run(self.ledger.release(request_id))

    @rule(request_id=requests)
    def refund(self, request_id):
        before = self.run(self.ledger.balances())
        refunded = self.run(self.ledger.refund(request_id))
        if request_id in self.charged and request_id not in self.refunded and self.charged[request_id]:
            org = self.holds[request_id][0]
            assert refunded == self.charged[request_id]
            assert self.run(self.ledger.balances())[customer(org)] == before[customer(org)] + refunded
            self.refunded.add(request_id)
        else:
            assert refunded == 0 and self.run(self.ledger.balances()) == before

    @rule(source=st.integers(0, 1), amount=st.integers(1, 5 * 10**7))
    def transfer(self, source, amount):
        """A reseller funding a customer: only from what the source has available."""
        before = self.run(self.ledger.available(self.orgs[source]))
        try:
            self.run(self.ledger.transfer(self.orgs[source], self.orgs[1 - source], amount))
        except InsufficientCredits:
            assert before < amount and self.run(self.ledger.available(self.orgs[source])) == before
            return
        assert before >= amount and self.run(self.ledger.available(self.orgs[source])) == before - amount

    @rule()
    def the_process_crashes_and_restarts(self):
        """kill -9 between steps: the writer and every connection are gone without a goodbye; a new
        process opens the same books. What was acknowledged stays; open holds wait for expiry."""
        before = self.run(self.ledger.balances())
        task = self.ledger.writer._task
        if task is not None:
            task.cancel()
            self.run(asyncio.gather(task, return_exceptions=True))
        self.run(self.db.close())
        self.db = self.run(open_database(self.url))
        self.ledger = Ledger(self.db, clock=self.clock)
        assert self.run(self.ledger.balances()) == before

    @rule(seconds=st.integers(0, 120))
    def time_passes_and_the_sweeper_runs(self, seconds):
        """Requests whose process crashed leave holds open: past their expiry they are freed."""
        self.clock.now += seconds
        self.run(self.ledger.expire())

    @invariant()
    def books_balance_and_nobody_is_overdrawn(self):
        if not hasattr(self, "ledger"):
            return
        balances = self.run(self.ledger.balances())
        assert sum(balances.values()) == 0
        for org in self.orgs:
            assert balances.get(customer(org), 0) >= 0
            assert self.run(self.ledger.available(org)) >= 0
        charges = self.run(_charges_per_request(self.db))
        assert all(count == 1 for count in charges.values())
        held, open_holds = self.run(_held(self.db))
        assert held == open_holds
        assert self.run(_budget_spent(self.db, self.budget[0])) <= self.budget[1]


async def _held(db) -> tuple[dict[str, int], dict[str, int]]:
    """Each account's held amount, and the sum of its open holds: always the same."""
    async with db.engine.connect() as conn:
        held = {a: int(h) for a, h in await conn.execute(select(Account.id, Account.held_nanos)) if h}
        rows = await conn.execute(
            select(Hold.account_id, func.sum(Hold.amount_nanos)).where(Hold.state == "open").group_by(Hold.account_id)
        )
        return held, {a: int(total) for a, total in rows if total}


async def _budget_spent(db, budget_id: str) -> int:
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(Budget.used_nanos, Budget.held_nanos).where(Budget.id == budget_id))).first()
        return 0 if row is None else int(row[0]) + int(row[1])


async def _org(db, name: str) -> str:
    async with db.session() as session, session.begin():
        return (await repos.get_or_create_org(session, name)).id


async def _empty(db) -> None:
    async with db.engine.begin() as conn:
        for table in ("entries", "holds", "postings", "accounts", "budgets", "requests"):
            await conn.exec_driver_sql(f"DELETE FROM {table}")


async def _charges_per_request(db) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(Posting.request_id, func.count()).where(Posting.kind == "charge").group_by(Posting.request_id)
        )
        return {request_id: count for request_id, count in rows}


@pytest.fixture(scope="module")
def postgres_url():
    with fresh_postgres() as url:
        yield url


def test_ledger_state_machine_on_sqlite(tmp_path):
    LedgerMachine.url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    LedgerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
    LedgerMachine.TestCase().runTest()


def test_ledger_state_machine_on_postgresql(postgres_url):
    LedgerMachine.url = postgres_url
    LedgerMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=25, deadline=None)
    LedgerMachine.TestCase().runTest()


def test_concurrent_reservations_never_overdraw(postgres_url):
    """A balance worth exactly N worst-case requests, 10N concurrent reservations: N admitted."""

    async def scenario():
        db = await open_database(postgres_url)
        try:
            await _empty(db)
            org = await _org(db, "race-" + secrets.token_hex(3))
            ledger = Ledger(db)
            await ledger.top_up(org, 10 * 1000)
            outcomes = await asyncio.gather(*(ledger.reserve(org, f"race-{i}", 1000) for i in range(100)), return_exceptions=True)
            admitted = [o for o in outcomes if o is None]
            refused = [o for o in outcomes if isinstance(o, InsufficientCredits)]
            return len(admitted), len(refused), await ledger.available(org)
        finally:
            await ledger.aclose()
            await db.close()

    admitted, refused, available = asyncio.run(scenario())
    assert (admitted, refused, available) == (10, 90, 0)


def test_one_batch_of_reservations_is_judged_write_by_write(tmp_path):
    """Reservations that arrive together are held in bulk where they fit, and one by one where
    an account or a budget cannot cover them all: each gets the answer it would get alone."""

    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'batch.db'}")
        ledger = Ledger(db)
        try:
            rich, poor, capped = [await _org(db, name) for name in ("rich", "poor", "capped")]
            for org in (rich, poor, capped):
                await ledger.top_up(org, 10**9)  # poor: worth 5 of its 2e8 asks
            budget = ("budget:capped-key", 4 * 10**8)  # capped: worth 4 of its 1e8 asks within a balance worth 10
            asks = [(rich, 10**8, ())] * 8 + [(poor, 2 * 10**8, ())] * 8 + [(capped, 10**8, (budget,))] * 8
            before = ledger.writer.batches
            outcomes = await asyncio.gather(
                *(ledger.reserve(org, f"r{i}", amount, budgets=b) for i, (org, amount, b) in enumerate(asks)),
                return_exceptions=True,
            )
            batches = ledger.writer.batches - before
            kinds = [type(o).__name__ for o in outcomes]
            available = [await ledger.available(org) for org in (rich, poor, capped)]
            return kinds, available, await _held(db), await _budget_spent(db, budget[0]), batches
        finally:
            await ledger.aclose()
            await db.close()

    kinds, available, (held, open_holds), budget_spent, batches = asyncio.run(scenario())
    assert kinds[:8] == ["NoneType"] * 8  # rich: all fit, held in bulk
    assert kinds[8:16] == ["NoneType"] * 5 + ["InsufficientCredits"] * 3  # poor: first come, first held
    assert kinds[16:] == ["NoneType"] * 4 + ["BudgetExceeded"] * 4  # capped: refused by the budget, not the balance
    assert available == [2 * 10**8, 0, 6 * 10**8]
    assert held == open_holds and budget_spent == 4 * 10**8  # what was undone for the refused is not held
    assert batches == 1  # the 24 reservations were applied together, in one transaction


def test_a_running_requests_hold_outlives_its_ttl_but_a_dead_processs_expires(tmp_path):
    """The sweeper pushes back the expiry of holds of requests still running in its process (a
    stream longer than the ttl is charged in full), and frees those of a process that died."""

    async def scenario():
        url = f"sqlite+aiosqlite:///{tmp_path / 'ttl.db'}"
        db = await open_database(url)
        clock = Clock()
        alive, other = Ledger(db, clock=clock), Ledger(db, clock=clock)  # two processes on one database
        try:
            org = await _org(db, "streamer")
            await alive.top_up(org, 10**9)
            await alive.reserve(org, "long-stream", 10**8, ttl_s=60)
            await alive.reserve(org, "orphan", 10**8, ttl_s=60)
            await alive.release("orphan")
            await other.reserve(org, "dies-with-its-process", 10**8, ttl_s=60)
            for _ in range(10):  # ten minutes, each process sweeping every 50 s
                clock.now += 50
                assert await alive.expire() == 0
                await other.expire()
            other._live.clear()  # the other process is killed: what it knew of its requests is gone
            clock.now += 61
            expired = await alive.expire()
            settled = await alive.settle("long-stream", charge(Usage(output_tokens=5), PRICE), upstream="openai")
            return expired, settled, await alive.available(org)
        finally:
            await alive.aclose()
            await other.aclose()
            await db.close()

    expired, settled, available = asyncio.run(scenario())
    assert expired == 1  # the dead process's hold, and only it
    assert settled is not None and settled.charged == charge(Usage(output_tokens=5), PRICE).total
    assert available == 10**9 - settled.charged


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'books.db'}"
    return request.getfixturevalue("postgres_url")


def test_a_batch_that_fails_is_undone_whole_and_each_write_then_applies_once(any_url):
    """A write that fails (here a reservation reusing a request id) rolls its whole batch back:
    the top-up, the new organization's grant and the transfer batched with it apply once, when
    retried alone, and the failed write gets a clean 503."""

    async def scenario():
        db = await open_database(any_url)
        ledger = Ledger(db)
        try:
            await _empty(db)
            old, new = await _org(db, "old-" + secrets.token_hex(3)), await _org(db, "new-" + secrets.token_hex(3))
            await ledger.top_up(old, 10**9)
            outcomes = await asyncio.gather(
                ledger.top_up(old, 777, reference="pay-1"),
                ledger.grant(new, 500, reference="welcome"),
                ledger.transfer(old, new, 100),
                ledger.reserve(old, "dup", 10),
                ledger.reserve(old, "dup", 10),
                return_exceptions=True,
            )
            again = await ledger.grant(new, 500, reference="welcome")
            return outcomes, again, await ledger.balances(), await _held(db)
        finally:
            await ledger.aclose()
            await db.close()

    outcomes, again, balances, (held, open_holds) = asyncio.run(scenario())
    assert outcomes[:4] == [True, True, True, None] and type(outcomes[4]).__name__ == "ServiceUnavailable"
    assert again is False  # the grant was applied once, and is remembered
    assert sum(balances.values()) == 0 and held == open_holds
    assert sorted(v for k, v in balances.items() if k.startswith("customer:")) == [600, 10**9 + 777 - 100]


def test_closing_the_writer_commits_what_is_queued(any_url):
    async def scenario():
        db = await open_database(any_url)
        ledger = Ledger(db)
        try:
            await _empty(db)
            org = await _org(db, "drain-" + secrets.token_hex(3))
            writes = [asyncio.create_task(ledger.top_up(org, 1)) for _ in range(300)]
            await asyncio.sleep(0)  # queued, and the first batch started
            await ledger.aclose()
            available = await ledger.available(org)  # committed before aclose returned
            return all(await asyncio.gather(*writes)), available
        finally:
            await db.close()

    assert asyncio.run(scenario()) == (True, 300)


def test_two_processes_crossing_batches_on_postgresql_never_fail(postgres_url):
    """Two writers (two replicas) reserving and settling across the same accounts in opposite
    orders: rows are locked in one order, so neither deadlocks into a failed request."""

    async def replica(url: str, orgs: list[str], flip: bool) -> list[object]:
        db = await open_database(url)
        ledger = Ledger(db)
        order = orgs[::-1] if flip else orgs

        async def lifecycle(number: int) -> None:
            org = order[number % len(order)]
            request_id = f"x-{flip}-{number}"
            await ledger.reserve(org, request_id, 1000)
            await ledger.settle(request_id, charge(Usage(output_tokens=10), PRICE), upstream="openai")

        try:
            return await asyncio.gather(*(lifecycle(n) for n in range(400)), return_exceptions=True)
        finally:
            await ledger.aclose()
            await db.close()

    async def scenario():
        db = await open_database(postgres_url)
        ledger = Ledger(db)
        await _empty(db)
        orgs = [await _org(db, f"cross-{i}-{secrets.token_hex(2)}") for i in range(4)]
        for org in orgs:
            await ledger.top_up(org, 10**9)
        await ledger.aclose()
        results = await asyncio.gather(replica(postgres_url, orgs, False), replica(postgres_url, orgs, True))
        balances, held = await Ledger(db).balances(), await _held(db)
        await db.close()
        return [r for rs in results for r in rs], balances, held

    outcomes, balances, (held, open_holds) = asyncio.run(scenario())
    assert [o for o in outcomes if o is not None] == []
    assert sum(balances.values()) == 0 and held == open_holds == {}
