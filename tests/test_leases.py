"""Balance leases (metering/leases.py) and settlements written behind (store/group_commit.py):
the ledger's guarantees hold when busy accounts are held and settled in memory.

A Hypothesis state machine drives a ledger with leases on every pool, on SQLite and on
PostgreSQL — top-ups, grants, reserve (against a budget too), settle (twice), release, refund,
transfer, idle leases given back, a crash of the process (losing what was not yet written),
expiry — and checks after every step that the books sum to zero, nothing is overdrawn, every
account's held amount is the sum of its open holds (leases included), no budget overshoots, no
request is charged twice; and, once flushed, that every settlement the callers were told of is in
the books to the nano. Then: two replicas' leases never admit more than a balance covers; the
group commit gathers deferred writes and retries them through a database outage."""

from __future__ import annotations

import asyncio
import secrets
import threading
from decimal import Decimal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from emporion.core.prices import Margin, charge
from emporion.core.usage import Usage
from emporion.metering.leases import IDLE_S, Leases
from emporion.metering.ledger import BudgetExceeded, InsufficientCredits, Ledger, customer
from emporion.store.group_commit import MAX_BACKLOG, MAX_BATCH, GroupCommit
from emporion.store.session import open_database
from emporion.store.tables import Entry, Hold, Posting
from tests.conftest import fresh_postgres
from tests.test_ledger import PRICE, Clock, _budget_spent, _charges_per_request, _empty, _held, _org


class LeasedBooks(RuleBasedStateMachine):
    url: str = ""
    requests = Bundle("requests")

    @initialize()
    def open_books(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.db = self.run(open_database(self.url))
        self.run(_empty(self.db))
        self.clock, self.mono = Clock(), Clock()
        self.ledger = self.new_ledger()
        self.orgs = [self.run(_org(self.db, f"org-{i}-{secrets.token_hex(3)}")) for i in range(2)]
        self.budget = ("budget:" + secrets.token_hex(4), 3 * 10**7)
        self.holds: dict[str, tuple[str, int]] = {}
        self.told: dict[str, int] = {}  # request id -> what settle said it charged
        self.refunded: set[str] = set()

    def new_ledger(self) -> Ledger:
        leases = Leases(min_rate=0, share=0.5, clock=self.mono)  # every pool busy: leases wherever they fit
        return Ledger(self.db, clock=self.clock, leases=leases, settle_flush_s=0.005)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def quiet(self) -> None:
        """Lets the takes queued in the background commit (as the event loop would, between requests)."""
        self.run(_all_done(self.ledger._background))

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.run(self.ledger.aclose())
            self.run(self.db.close())
            self.loop.close()

    @rule(org=st.integers(0, 1), amount=st.integers(1, 10**8), paid=st.booleans())
    def add_credit(self, org, amount, paid):
        self.run((self.ledger.top_up if paid else self.ledger.grant)(self.orgs[org], amount))

    @rule(target=requests, org=st.integers(0, 1), amount=st.integers(0, 5 * 10**6))
    def reserve(self, org, amount):
        request_id = "req_" + secrets.token_hex(8)
        before = self.run(self.ledger.available(self.orgs[org]))
        budgets = [self.budget] if org == 1 else []
        try:
            self.run(self.ledger.reserve(self.orgs[org], request_id, amount, ttl_s=60, budgets=budgets))
        except InsufficientCredits:
            assert before < amount  # refused only by the strict path, when the books cannot cover it
        except BudgetExceeded:
            assert budgets
        else:
            self.holds[request_id] = (self.orgs[org], amount)
        self.quiet()
        return request_id

    @rule(request_id=requests, prompt=st.integers(0, 2_000), output=st.integers(0, 2_000), margin=st.integers(0, 50))
    def settle(self, request_id, prompt, output, margin):
        c = charge(Usage(input_tokens=prompt, output_tokens=output), PRICE, Margin(percent=Decimal(margin)))
        settled = self.run(self.ledger.settle(request_id, c, upstream="openai"))
        if settled is not None:
            assert request_id in self.holds and request_id not in self.told
            hold = self.holds[request_id][1]
            assert settled.charged == min(c.total, hold) and settled.charged + settled.released == hold
            self.told[request_id] = settled.charged

    @rule(request_id=requests)
    def settle_again_changes_nothing(self, request_id):
        if request_id in self.told:
            assert self.run(self.ledger.settle(request_id, charge(Usage(output_tokens=5), PRICE), upstream="openai")) is None

    @rule(request_id=requests)
    def release(self, request_id):
        if request_id not in self.told:
            self.run(self.ledger.release(request_id))

    @rule(request_id=requests)
    def refund(self, request_id):
        refunded = self.run(self.ledger.refund(request_id))
        if self.told.get(request_id) and request_id not in self.refunded:
            assert refunded == self.told[request_id]
            self.refunded.add(request_id)
        else:
            assert refunded == 0

    @rule(source=st.integers(0, 1), amount=st.integers(1, 5 * 10**7))
    def transfer(self, source, amount):
        try:
            self.run(self.ledger.transfer(self.orgs[source], self.orgs[1 - source], amount))
        except InsufficientCredits:
            pass

    @rule()
    def idle_leases_go_back(self):
        self.mono.now += IDLE_S
        self.run(self.ledger.give_back_idle())

    @rule()
    def the_process_crashes_and_restarts(self):
        """kill -9: the settlements not yet written are lost with the process (those requests are
        not charged), its leases stay held until they expire."""
        for task in [self.ledger.writer._task, self.ledger._tending, *self.ledger._background]:
            if task is not None:
                task.cancel()
                self.run(_all_done({task}))
        self.run(self.db.close())
        self.db = self.run(open_database(self.url))
        self.ledger = self.new_ledger()
        charged = self.run(_charges_per_request(self.db))
        for request_id, amount in list(self.told.items()):
            if amount and request_id not in charged:
                del self.told[request_id]  # lost: never charged, and never refundable

    @rule(seconds=st.integers(0, 120))
    def time_passes_and_the_sweeper_runs(self, seconds):
        self.clock.now += seconds
        self.mono.now += seconds
        self.run(self.ledger.expire())

    @rule()
    def the_books_hold_every_settlement_told(self):
        self.run(self.ledger.flush())
        charged = self.run(_charged_per_request(self.db))
        assert {r: a for r, a in self.told.items() if a} == charged

    @invariant()
    def books_balance_and_nobody_is_overdrawn(self):
        if not hasattr(self, "ledger"):
            return
        balances = self.run(_raw_balances(self.db))
        assert sum(balances.values()) == 0
        for org in self.orgs:
            assert balances.get(customer(org), 0) >= 0
            assert self.run(self.ledger.available(org)) >= 0
        assert all(count == 1 for count in self.run(_charges_per_request(self.db)).values())
        held, open_holds = self.run(_held(self.db))
        assert held == open_holds
        assert self.run(_budget_spent(self.db, self.budget[0])) <= self.budget[1]


async def _all_done(tasks) -> None:
    await asyncio.gather(*list(tasks), return_exceptions=True)


async def _raw_balances(db) -> dict[str, int]:
    """The committed books, without flushing anything first."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(Entry.account_id, func.sum(Entry.amount_nanos)).group_by(Entry.account_id))
        return {account: int(total) for account, total in rows}


async def _charged_per_request(db) -> dict[str, int]:
    """What each request's charge took from its customer."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(Posting.request_id, Entry.amount_nanos)
            .join(Entry, Entry.posting_id == Posting.id)
            .where(Posting.kind == "charge", Entry.account_id.like("customer:%"))
        )
        return {request_id: -int(amount) for request_id, amount in rows}


@pytest.fixture(scope="module")
def postgres_url():
    with fresh_postgres() as url:
        yield url


def test_leased_books_on_sqlite(tmp_path):
    LeasedBooks.url = f"sqlite+aiosqlite:///{tmp_path / 'leased.db'}"
    LeasedBooks.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
    LeasedBooks.TestCase().runTest()


def test_leased_books_on_postgresql(postgres_url):
    LeasedBooks.url = postgres_url
    LeasedBooks.TestCase.settings = settings(max_examples=12, stateful_step_count=30, deadline=None)
    LeasedBooks.TestCase().runTest()


def test_two_replicas_leasing_one_balance_never_admit_more_than_it_covers(postgres_url):
    """A balance worth N holds, 10N reservations through two replicas that lease from it: at most
    N admitted (leases are holds in the books), most of them from memory; every one settled at
    its worst case leaves the balance at zero or above, and the books exact."""
    n, hold = 400, 10_000

    async def scenario():
        db = await open_database(postgres_url)
        await _empty(db)
        org = await _org(db, "leased-race-" + secrets.token_hex(3))
        bank = Ledger(db)
        await bank.top_up(org, n * hold)
        await bank.aclose()
        replicas = [Ledger(db, leases=Leases(min_rate=0, share=0.5), settle_flush_s=0.005) for _ in range(2)]

        async def one(i: int) -> bool:
            ledger = replicas[i % 2]
            try:
                await ledger.reserve(org, f"r{i}", hold)
            except InsufficientCredits:
                return False
            await asyncio.sleep(0.001 * (i % 7))
            await ledger.settle(f"r{i}", charge(Usage(output_tokens=hold // 4), PRICE), upstream="openai")
            return True

        outcomes = []
        for start in range(0, 10 * n, 250):  # waves, so leases are taken, used and refilled
            outcomes += await asyncio.gather(*(one(i) for i in range(start, start + 250)))
        for ledger in replicas:
            await ledger.aclose()
        strict = await _strict_holds(db)
        from_memory = sum(1 for i, admitted in enumerate(outcomes) if admitted and f"r{i}" not in strict)
        books = await _raw_balances(db)
        held, open_holds = await _held(db)
        await db.close()
        return outcomes.count(True), from_memory, books, held, open_holds, org

    admitted, from_memory, books, held, open_holds, org = asyncio.run(scenario())
    assert 0 < admitted <= n
    assert sum(books.values()) == 0 and books[customer(org)] == n * hold - admitted * hold >= 0
    assert held == open_holds == {}  # every lease went back at shutdown
    assert from_memory > 0


async def _strict_holds(db) -> set[str]:
    """Requests whose hold was its own row before it settled (created earlier than it settled)."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(Hold.request_id).where(Hold.created_at < Hold.expires_at))
        return set(rows.scalars())


def test_deferred_writes_gather_into_one_commit_and_flush_waits_for_them(tmp_path):
    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'gather.db'}")
        applied: list[list[int]] = []

        async def apply(conn, ops):
            applied.append(list(ops))
            return [None] * len(ops)

        writer: GroupCommit[int] = GroupCommit(db.engine, apply, flush_interval_s=0.05)
        for number in range(5):
            writer.defer(number)
            await asyncio.sleep(0.001)  # one at a time, as a lone client's requests come
        assert applied == []  # still gathering
        await writer.flush()
        after_flush = list(applied)
        await writer.aclose()
        await db.close()
        return after_flush, writer.deferred

    after_flush, left = asyncio.run(scenario())
    assert after_flush == [[0, 1, 2, 3, 4]] and left == 0


def test_a_deferred_write_is_tried_again_until_the_database_takes_it(tmp_path):
    """Fault injection: the database refuses the first three commits; the deferred write is
    neither lost nor applied twice."""

    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'outage.db'}")
        attempts, committed = [], []

        async def apply(conn, ops):
            attempts.append(list(ops))
            if len(attempts) <= 3:
                raise OperationalError("COMMIT", {}, Exception("database is locked"))
            committed.extend(ops)
            return [None] * len(ops)

        writer: GroupCommit[str] = GroupCommit(db.engine, apply, flush_interval_s=0.001)
        writer.defer("settle r1")
        for _ in range(200):
            await asyncio.sleep(0.02)
            if committed:
                break
        await writer.aclose()
        await db.close()
        return attempts, committed, writer.deferred

    attempts, committed, left = asyncio.run(scenario())
    assert committed == ["settle r1"] and len(attempts) == 4 and left == 0


def test_leases_start_only_on_a_busy_pool_and_stay_within_their_share(tmp_path):
    """A quiet account takes the strict path; a busy one is leased at most ``share`` of its
    available balance, and not at all when that is under LEAST_HOLDS holds."""

    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'share.db'}")
        mono = Clock()
        ledger = Ledger(db, leases=Leases(min_rate=10, share=0.1, clock=mono), settle_flush_s=0.005)
        rich, poor = await _org(db, "rich"), await _org(db, "poor")
        await ledger.top_up(rich, 10**9)
        await ledger.top_up(poor, 50 * 1000)  # a tenth of it is 5 holds: too little for a lease
        await ledger.reserve(rich, "quiet", 1000)  # the first request of a quiet pool: strict
        strict_first = "quiet" not in ledger._leased
        for i in range(40):  # 40 requests in 40 ms: busy
            mono.now += 0.001
            for org in (rich, poor):
                await ledger.reserve(org, f"{org}-{i}", 1000)
                await asyncio.gather(*list(ledger._background))
        leases = {org: key_lease for (org, _), pool in ledger.leases.pools.items() if (key_lease := pool.lease)}
        rich_lease = leases[rich].amount if rich in leases else 0
        poor_leased = sum(1 for i in range(40) if f"{poor}-{i}" in ledger._leased)
        await ledger.aclose()
        await db.close()
        return strict_first, rich_lease, poor_leased

    strict_first, rich_lease, poor_leased = asyncio.run(scenario())
    assert strict_first
    assert 0 < rich_lease <= 10**8  # at most a tenth of the balance
    assert poor_leased == 0  # every one of the poor account's holds was strict


def test_the_writer_commits_on_a_thread_of_its_own(tmp_path):
    """With ``writer_engine`` the transactions run on the writer's own thread and event loop (the
    gateway's busy loop is left two turns a batch), and the results come back to the caller."""

    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}")
        seen: list[str] = []

        async def apply(conn, ops):
            seen.append(threading.current_thread().name)
            await conn.exec_driver_sql("SELECT 1")
            return [op * 2 for op in ops]

        writer: GroupCommit[int] = GroupCommit(db.engine, apply, writer_engine=db.new_engine)
        results = await asyncio.gather(*(writer.submit(n) for n in range(5)))
        writer.defer(7)
        await writer.flush()
        thread = writer._thread
        await writer.aclose()
        await db.close()
        return results, seen, thread

    results, seen, thread = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8]
    assert seen and set(seen) == {"ledger-writer"}
    assert thread is not None and not thread.thread.is_alive()  # closed with the writer


def test_a_full_backlog_holds_callers_back_until_the_writer_catches_up(tmp_path):
    async def scenario():
        db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'backlog.db'}")
        gate = asyncio.Event()

        async def apply(conn, ops):
            await gate.wait()  # the database is slow
            return [None] * len(ops)

        writer: GroupCommit[int] = GroupCommit(db.engine, apply)
        for number in range(MAX_BACKLOG + MAX_BATCH + 10):
            writer.defer(number)
        waiting = asyncio.create_task(writer.room())
        await asyncio.sleep(0.05)
        held_back = not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, 5)
        await writer.aclose()
        await db.close()
        return held_back, writer.deferred

    held_back, left = asyncio.run(scenario())
    assert held_back and left == 0
