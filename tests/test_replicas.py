"""Money and limits across replicas and crashes, with real processes: two gateways sharing
PostgreSQL and Redis never admit more than a balance covers nor more than a rate limit allows;
a gateway killed with SIGKILL under load leaves balanced books that charge nobody twice."""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from emporion.metering.ledger import Ledger, customer
from emporion.store.session import open_database
from emporion.store.tables import Account, Entry, Hold, Posting, RequestRecord
from tests.conftest import emporion, start_gateway, stop_gateway
from tests.fakes.script import Script

REDIS = "redis://127.0.0.1:6379/0"
BODY = {"model": "race", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
# The worst case of BODY: 28 prompt bytes at 1,000 nanos and 100 output tokens at 10,000 nanos.
HOLD = 28 * 1_000 + 100 * 10_000
COST = 7 * 1_000 + 5 * 10_000  # what the fake upstream's usage (7 prompt, 5 completion tokens) costs


def config(fake_url: str, database_url: str | None = None, redis_url: str | None = None, **metering: object) -> str:
    lines = [
        "[engine]\nenabled = false\n[embeddings]\nenabled = false",
        f'[[upstreams]]\nname = "fake"\nbase_url = "{fake_url}/v1"',
        '[models."race"]\nupstream = "fake"\ncontext_length = 8192\npricing = { prompt = "0.000001", completion = "0.00001" }',
        "[tiers.free]\nrequests_per_minute = 1000000\ntokens_per_minute = 1000000000\nmax_concurrent = 10000",
        '[metering]\nfree_credit_usd = "0"\n' + "\n".join(f"{k} = {v}" for k, v in metering.items()),
    ]
    if database_url:
        lines.append(f'[database]\nurl = "{database_url}"')
    if redis_url:
        lines.append(f'[limits]\nredis_url = "{redis_url}"\nreplicas = 2')
    return "\n\n".join(lines) + "\n"


@pytest.fixture
def fake(fake_openai):
    fake_openai.scripts.clear()
    yield fake_openai
    fake_openai.scripts.clear()


def two_replicas(tmp_path: Path, text: str, org: str):
    """Two gateways over one config (one database, one Redis), and a key of a new organization."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for data_dir in dirs:
        data_dir.mkdir()
        (data_dir / "config.toml").write_text(text)
    key = emporion("keys", "create", "--org", org, data_dir=dirs[0]).stdout.strip()
    return [start_gateway(data_dir, key) for data_dir in dirs], key


def post(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}, timeout=60).status_code


async def with_db(url: str, work):
    db = await open_database(url)
    try:
        return await work(db)
    finally:
        await db.close()


async def top_up(db, org_name: str, amount: int) -> str:
    from emporion.store import repos

    async with db.session() as session:
        org = await repos.get_or_create_org(session, org_name)
    ledger = Ledger(db)
    await ledger.top_up(org.id, amount, reference="race-" + secrets.token_hex(4))
    await ledger.aclose()
    return org.id


async def books(db) -> dict:
    """What must hold of any ledger, whatever happened to the processes writing it."""
    async with db.engine.connect() as conn:
        balances = dict((await conn.execute(select(Account.id, Account.balance_nanos))).all())
        held = dict((await conn.execute(select(Account.id, Account.held_nanos))).all())
        entry_sums = dict(
            (await conn.execute(select(Entry.account_id, func.sum(Entry.amount_nanos)).group_by(Entry.account_id))).all()
        )
        holds = (await conn.execute(select(Hold.request_id, Hold.state))).all()
        charges = (await conn.execute(select(Posting.request_id).where(Posting.kind == "charge"))).scalars().all()
        records = dict((await conn.execute(select(RequestRecord.id, RequestRecord.cost_nanos))).all())
    return {
        "sum": sum(balances.values()),
        "balances": balances,
        "held": held,
        "entries_match": all(int(entry_sums.get(a, 0)) == b for a, b in balances.items()),
        "holds": dict(holds),
        "charges": charges,
        "records": records,
    }


def test_budget_race_two_replicas_admit_at_most_what_the_balance_covers(tmp_path, fake, postgres_url):
    """A balance worth exactly N worst-case requests; 10N at once through 2 gateways."""
    n = 10
    fake.enqueue(*[Script(delay_s=3) for _ in range(n * 10)])  # admitted requests stay in flight together
    gateways, key = two_replicas(tmp_path, config(fake.url, postgres_url, REDIS), "race")
    try:
        org_id = asyncio.run(with_db(postgres_url, lambda db: top_up(db, "race", n * HOLD)))
        with ThreadPoolExecutor(n * 10) as pool:
            statuses = list(pool.map(lambda i: post(gateways[i % 2].url, key), range(n * 10)))
    finally:
        for gateway in gateways:
            stop_gateway(gateway.process)
    assert sorted(set(statuses)) == [200, 402]
    assert statuses.count(200) == n
    state = asyncio.run(with_db(postgres_url, books))
    assert state["sum"] == 0 and state["entries_match"]
    assert state["balances"][customer(org_id)] == n * HOLD - n * COST >= 0
    assert state["held"][customer(org_id)] == 0 and "open" not in state["holds"].values()
    assert len(state["charges"]) == len(set(state["charges"])) == n


def test_rate_limit_is_shared_exactly_by_two_replicas_through_redis(tmp_path, fake, postgres_url):
    limit = 60
    gateways, key = two_replicas(tmp_path, config(fake.url, postgres_url, REDIS), "limited")

    async def set_limit(db):
        await top_up(db, "limited", 10**12)
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(f"UPDATE organizations SET requests_per_minute = {limit} WHERE name = 'limited'")

    try:
        asyncio.run(with_db(postgres_url, set_limit))
        began = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: post(gateways[i % 2].url, key), range(4 * limit)))
        elapsed = time.monotonic() - began
    finally:
        for gateway in gateways:
            stop_gateway(gateway.process)
    admitted = statuses.count(200)
    refilled = limit * elapsed / 60  # GCRA: a minute's burst, then one request every second
    assert set(statuses) == {200, 429}
    assert limit <= admitted <= (limit + refilled) * 1.01 + 1


def test_kill_9_under_load_leaves_balanced_books_and_no_double_charge(tmp_path, fake):
    data_dir = tmp_path / "crash"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text(config(fake.url, hold_ttl_s=2, sweep_interval_s=0.5))
    key = emporion("keys", "create", "--org", "crash", data_dir=data_dir).stdout.strip()
    url = f"sqlite+aiosqlite:///{data_dir / 'emporion.db'}"
    org_id = asyncio.run(with_db(url, lambda db: top_up(db, "crash", 10**12)))
    fake.chaos = [Script(text=" ".join(["tok"] * 20), chunk_delay_s=0.01), Script(delay_s=0.1)]
    fake.chaos_rate = 1.0
    answered = 0

    def load(base: str, stop_at: float) -> int:
        done = 0
        with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
            while time.monotonic() < stop_at:
                try:
                    if random.random() < 0.5:
                        client.post(f"{base}/v1/chat/completions", json=BODY).raise_for_status()
                    else:
                        with client.stream("POST", f"{base}/v1/chat/completions", json={**BODY, "stream": True}) as response:
                            for _ in response.iter_bytes():
                                pass
                    done += 1
                except httpx.HTTPError:
                    return done  # the gateway died under us
        return done

    try:
        for _ in range(3):
            gateway = start_gateway(data_dir, key, log_name="crash.log")
            kill_at = time.monotonic() + random.uniform(0.5, 1.5)
            with ThreadPoolExecutor(8) as pool:
                loads = [pool.submit(load, gateway.url, kill_at + 5) for _ in range(8)]
                time.sleep(max(0.0, kill_at - time.monotonic()))
                gateway.process.send_signal(signal.SIGKILL)
                gateway.process.wait(timeout=10)
                answered += sum(f.result() for f in loads)
        gateway = start_gateway(data_dir, key, log_name="crash.log")  # its sweeper frees the dead holds
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = asyncio.run(with_db(url, books))
            if "open" not in state["holds"].values():
                break
            time.sleep(0.5)
        stop_gateway(gateway.process)
    finally:
        fake.chaos, fake.chaos_rate = [], 0.0
    assert answered > 0
    assert state["sum"] == 0 and state["entries_match"]
    assert "open" not in state["holds"].values() and state["held"][customer(org_id)] == 0
    assert len(state["charges"]) == len(set(state["charges"]))  # nobody charged twice
    settled = {request_id for request_id, s in state["holds"].items() if s == "settled"}
    assert set(state["charges"]) <= settled  # every charge is a settled hold; the rest were released or expired
    assert settled == set(state["records"])  # every settled request has its record, and only those
    charged = sum(state["records"].values())
    assert state["balances"][customer(org_id)] == 10**12 - charged


def test_replicas_starting_together_migrate_one_at_a_time(postgres_url):
    """Four processes opening an empty PostgreSQL database at once: one migrates, the others wait
    for it and find the schema done (without the lock, concurrent CREATE TABLEs collide)."""

    async def scenario():
        dbs = await asyncio.wait_for(asyncio.gather(*(open_database(postgres_url) for _ in range(4))), 60)
        try:
            async with dbs[0].engine.connect() as conn:
                return (await conn.exec_driver_sql("SELECT count(*) FROM alembic_version")).scalar_one()
        finally:
            for db in dbs:
                await db.close()

    assert asyncio.run(scenario()) == 1


def test_a_burst_through_two_replicas_admits_exactly_the_rate_limit(tmp_path, fake, postgres_url):
    """300 requests at once, 150 at each gateway, for 60 a minute: a busy Redis connection pool
    is waited for, never taken for an outage that the in-process fallback admits on top of."""
    limit, burst = 60, 300
    gateways, key = two_replicas(tmp_path, config(fake.url, postgres_url, REDIS), "burst")

    async def set_limit(db):
        await top_up(db, "burst", 10**12)
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(f"UPDATE organizations SET requests_per_minute = {limit} WHERE name = 'burst'")

    async def at_once() -> list[int]:
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:

            async def one(i: int) -> int:
                url = f"{gateways[i % 2].url}/v1/chat/completions"
                return (await client.post(url, json=BODY, headers=headers)).status_code

            return await asyncio.gather(*(one(i) for i in range(burst)))

    try:
        asyncio.run(with_db(postgres_url, set_limit))
        began = time.monotonic()
        statuses = asyncio.run(at_once())
        elapsed = time.monotonic() - began
    finally:
        for gateway in gateways:
            stop_gateway(gateway.process)
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert limit <= admitted <= limit + limit * elapsed / 60 + 1, (admitted, elapsed)
    for gateway in gateways:
        assert "fall back" not in gateway.log.read_text()
