"""Idempotency-Key on the generation routes: replays of a request (sequential, concurrent,
streamed, embeddings) run once and are charged once, through the real gateway and the official
SDK; another body under the same key is a 422; a request still running is a 409; failures are
not stored; keys are per organization; rows expire and are purged; SQLite and PostgreSQL.

The gateway tests use the session's real server (tests/conftest.py); the others run the app
in-process against the same fake upstream, or the store directly."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import event, func, select

from emporion.accounts.keys import issue_key
from emporion.app import build_app
from emporion.core.money import NANOS_PER_USD
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
from emporion.store.tables import RequestRecord
from tests.conftest import emporion
from tests.fakes.script import Script

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]
MINILM = "all-minilm-l6-v2"
REPLAYED = "idempotent-replayed"


def idem() -> dict[str, str]:
    return {"Idempotency-Key": "test-" + secrets.token_hex(8)}


def nanos(usd: str) -> int:
    return int(Decimal(usd) * NANOS_PER_USD)


# --- through the real gateway, with the official SDK ------------------------------------------------


@dataclass
class Tenant:
    """An organization of the session's gateway, with one API key, read back from its database."""

    gateway: object
    key: str
    org_id: str

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.key, max_retries=0, **kwargs)

    def aclient(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.key, **{"max_retries": 0, **kwargs})

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.gateway.data_dir / "emporion.db")

    def balance(self) -> int:
        with self._db() as db:
            return db.execute("select balance_nanos from accounts where id = ?", [f"customer:{self.org_id}"]).fetchone()[0]

    def records(self) -> int:
        with self._db() as db:
            return db.execute("select count(*) from requests where org_id = ?", [self.org_id]).fetchone()[0]


def tenant(gateway, name: str) -> Tenant:
    key = emporion("keys", "create", "--org", f"{name}-{secrets.token_hex(3)}", data_dir=gateway.data_dir).stdout.strip()
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org_id = db.execute("select org_id from api_keys where prefix = ?", [key[:8]]).fetchone()[0]
    return Tenant(gateway, key, org_id)


def test_sequential_replays_are_answered_once_and_charged_once(gateway, fake_openai):
    acme = tenant(gateway, "idem-seq")
    before, calls, headers = acme.balance(), fake_openai.count(), idem()
    raws = [
        acme.client().chat.completions.with_raw_response.create(
            model="luxury", messages=USER, max_tokens=10, extra_headers=headers
        )
        for _ in range(3)
    ]
    first, *replays = [raw.parse() for raw in raws]
    assert fake_openai.count() == calls + 1  # one upstream call
    assert all(replay.model_dump() == first.model_dump() for replay in replays)  # the same id, text, usage and cost
    assert REPLAYED not in raws[0].headers and all(raw.headers[REPLAYED] == "true" for raw in raws[1:])
    for name in ("x-request-id", "x-emporion-cost", "x-emporion-model", "x-emporion-upstream", "content-type"):
        assert {raw.headers[name] for raw in raws} == {raws[0].headers[name]}, name
    cost = nanos(raws[0].headers["x-emporion-cost"])
    assert cost > 0 and before - acme.balance() == cost  # charged once
    assert acme.records() == 1


def test_the_same_key_with_another_body_is_422_and_another_organization_is_independent(gateway, fake_openai):
    acme, globex = tenant(gateway, "idem-a"), tenant(gateway, "idem-b")
    headers = idem()
    first = acme.client().chat.completions.create(model="luxury", messages=USER, max_tokens=10, extra_headers=headers)
    calls = fake_openai.count()
    with pytest.raises(openai.UnprocessableEntityError) as info:
        acme.client().chat.completions.create(model="luxury", messages=USER, max_tokens=11, extra_headers=headers)
    assert info.value.code == "idempotency_key_reused" and fake_openai.count() == calls
    with pytest.raises(openai.UnprocessableEntityError):  # another route is another request
        acme.client().completions.create(model="luxury", prompt="hello", max_tokens=10, extra_headers=headers)
    before = globex.balance()
    theirs = globex.client().chat.completions.create(model="luxury", messages=USER, max_tokens=10, extra_headers=headers)
    assert theirs.id != first.id and fake_openai.count() == calls + 1  # the same key in another organization: its own request
    assert before - globex.balance() > 0 and globex.records() == 1 and acme.records() == 1


async def test_concurrent_replays_run_once_and_the_others_get_409(gateway, fake_openai):
    acme = tenant(gateway, "idem-conc")
    before, calls, headers = acme.balance(), fake_openai.count(), idem()
    fake_openai.enqueue(Script(delay_s=1.5))  # the first is still upstream while the others arrive

    async def call(client: openai.AsyncOpenAI):
        try:
            return await client.chat.completions.with_raw_response.create(
                model="luxury", messages=USER, max_tokens=10, extra_headers=headers
            )
        except openai.ConflictError as exc:
            return exc

    async with acme.aclient() as client:
        results = await asyncio.gather(*(call(client) for _ in range(3)))
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.ConflictError)]
    assert len(served) == 1 and len(refused) == 2, results
    assert all(r.code == "idempotency_request_in_progress" and r.response.headers["retry-after"] == "1" for r in refused)
    assert fake_openai.count() == calls + 1
    replay = acme.client().chat.completions.with_raw_response.create(
        model="luxury", messages=USER, max_tokens=10, extra_headers=headers
    )
    assert replay.headers[REPLAYED] == "true" and replay.parse().id == served[0].parse().id
    cost = nanos(served[0].headers["x-emporion-cost"])
    assert before - acme.balance() == cost and acme.records() == 1

    # With the SDK's own retries (it retries a 409 after Retry-After), every caller gets the one answer.
    headers = idem()
    fake_openai.enqueue(Script(delay_s=1.5))
    async with acme.aclient(max_retries=4) as client:
        answers = await asyncio.gather(
            *(
                client.chat.completions.create(model="luxury", messages=USER, max_tokens=10, extra_headers=headers)
                for _ in range(3)
            )
        )
    assert len({answer.id for answer in answers}) == 1 and fake_openai.count() == calls + 2
    assert before - acme.balance() == 2 * cost and acme.records() == 2  # six calls, two requests, two charges


def test_a_completed_stream_is_replayed_whole_and_charged_once(gateway, fake_openai):
    acme = tenant(gateway, "idem-stream")
    before, calls, headers = acme.balance(), fake_openai.count(), idem()

    def stream():
        raw = acme.client().chat.completions.with_raw_response.create(
            model="luxury",
            messages=USER,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        return raw.headers, [chunk.model_dump() for chunk in raw.parse()]

    (first_headers, first), (replay_headers, replayed) = stream(), stream()
    assert replayed == first and "".join(c["choices"][0]["delta"]["content"] or "" for c in first if c["choices"])
    assert first[-1]["usage"]["completion_tokens"] == 5  # the usage chunk is part of the replay
    assert REPLAYED not in first_headers and replay_headers[REPLAYED] == "true"
    assert replay_headers["content-type"].startswith("text/event-stream") and replay_headers["x-request-id"] == first[0]["id"]
    assert fake_openai.count() == calls + 1
    assert before - acme.balance() == nanos(str(first[-1]["usage"]["cost"])) and acme.records() == 1


def test_embeddings_carry_their_cost_like_every_generation(gateway):
    acme = tenant(gateway, "emb-cost")
    before = acme.balance()
    raw = acme.client().embeddings.with_raw_response.create(model=MINILM, input=["a cat", "a dog"])
    cost = raw.headers["x-emporion-cost"]
    assert Decimal(cost) == Decimal(str(raw.parse().usage.model_extra["cost"])) and before - acme.balance() == nanos(cost)


def test_embeddings_and_completions_replay(gateway, fake_openai):
    acme = tenant(gateway, "idem-emb")
    before, headers = acme.balance(), idem()
    raws = [
        acme.client().embeddings.with_raw_response.create(model=MINILM, input=["a cat", "a dog"], extra_headers=headers)
        for _ in range(2)
    ]
    first, replay = (raw.parse() for raw in raws)
    assert [d.embedding for d in replay.data] == [d.embedding for d in first.data] and raws[1].headers[REPLAYED] == "true"
    cost = Decimal(str(first.usage.model_extra["cost"]))
    assert before - acme.balance() == nanos(str(cost)) and acme.records() == 1

    calls, headers = fake_openai.count(), idem()
    texts = [
        acme.client().completions.create(model="luxury", prompt="Say hi", max_tokens=10, extra_headers=headers).id
        for _ in range(2)
    ]
    assert texts[0] == texts[1] and fake_openai.count() == calls + 1 and acme.records() == 2


# --- in-process: failures, validation, the database round trips -----------------------------------


@dataclass
class App:
    client: httpx.AsyncClient
    deps: Deps
    keys: dict[str, str]  # org name -> API key
    org_ids: dict[str, str]

    def sdk(self, org: str = "acme", **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://emporion/v1", api_key=self.keys[org], http_client=self.client, max_retries=0, **kwargs
        )

    async def post(self, path: str, body: dict, org: str = "acme", **headers: str) -> httpx.Response:
        return await self.client.post(path, json=body, headers={"authorization": f"Bearer {self.keys[org]}", **headers})

    async def records(self, org: str = "acme", status: str | None = "completed") -> int:
        """The organization's request records (``status`` None: all of them)."""
        query = select(func.count()).select_from(RequestRecord).where(RequestRecord.org_id == self.org_ids[org])
        if status is not None:
            query = query.where(RequestRecord.status == status)
        async with self.deps.db.session() as session:
            return await session.scalar(query) or 0


@pytest.fixture
async def app(tmp_path: Path, fake_openai):
    settings = Settings(
        data_dir=tmp_path,
        server=ServerSettings(auth_cache_s=0),
        engine=EngineSettings(enabled=False),
        embeddings=EmbeddingSettings(enabled=False),
        upstreams=[UpstreamConfig(name="fake", base_url=f"{fake_openai.url}/v1")],
        models={
            "fake-gpt": ModelConfig(upstream="fake", pricing=Pricing(prompt=Decimal("0.000001"), completion=Decimal("0.000002")))
        },
        metering=MeteringSettings(free_credit_usd=Decimal(0)),
    )
    db = await open_database(settings.database_url)
    keys, org_ids = {}, {}
    async with db.session() as session, session.begin():
        for name in ("acme", "globex"):
            org = await repos.create_org(session, name)
            new, _ = await issue_key(session, org, orgs.KeyColumns())
            keys[name], org_ids[name] = new.plaintext, org.id
    await db.close()
    application = build_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://emporion") as client,
    ):
        deps: Deps = application.state.deps
        for org_id in org_ids.values():
            await deps.ledger.top_up(org_id, 5 * NANOS_PER_USD)
        yield App(client, deps, keys, org_ids)


CHAT = {"model": "fake-gpt", "messages": USER, "max_tokens": 10}


async def test_a_failed_request_is_not_stored_and_a_retry_with_its_key_runs(app, fake_openai):
    headers = idem()
    fake_openai.enqueue(*[Script(status=500) for _ in range(3)])  # every attempt fails: 502
    failed = await app.post("/v1/chat/completions", CHAT, **headers)
    assert failed.status_code == 502 and REPLAYED not in failed.headers
    fake_openai.scripts.clear()
    calls = fake_openai.count()
    retried = await app.post("/v1/chat/completions", CHAT, **headers)
    assert retried.status_code == 200 and REPLAYED not in retried.headers and fake_openai.count() == calls + 1
    replayed = await app.post("/v1/chat/completions", CHAT, **headers)
    assert replayed.headers[REPLAYED] == "true" and replayed.json() == retried.json() and fake_openai.count() == calls + 1
    assert await app.records() == 1 and await app.records(status=None) == 2  # the failure: recorded, charged nothing, not stored

    for _ in range(2):  # refused by the pipeline: not stored either
        refused = await app.post("/v1/chat/completions", {**CHAT, "model": "nope"}, **{"Idempotency-Key": "unknown-model"})
        assert refused.status_code == 404 and REPLAYED not in refused.headers
    fake_openai.enqueue(
        Script(status=400, error={"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": None}})
    )
    upstream_refused = await app.post("/v1/chat/completions", CHAT, **{"Idempotency-Key": "refused-upstream"})
    assert upstream_refused.status_code >= 400
    again = await app.post("/v1/chat/completions", CHAT, **{"Idempotency-Key": "refused-upstream"})
    assert again.status_code == 200 and REPLAYED not in again.headers


async def test_a_stream_cut_short_is_not_stored(app, fake_openai):
    headers = idem()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    fake_openai.enqueue(Script(text="one two three four", reset_after_chunks=2))  # the upstream fails mid-stream
    cut = await app.post("/v1/chat/completions", body, **headers)
    assert cut.status_code == 200 and "[DONE]" not in cut.text and '"finish_reason":"error"' in cut.text
    whole = await app.post("/v1/chat/completions", body, **headers)
    assert whole.text.endswith("data: [DONE]\n\n") and REPLAYED not in whole.headers  # generated again
    replay = await app.post("/v1/chat/completions", body, **headers)
    assert replay.text == whole.text and replay.headers[REPLAYED] == "true"
    assert await app.records() == 1 and await app.records(status=None) == 2  # the cut one billed what it made; the replay nothing


async def test_bad_keys_are_400_and_a_key_is_checked_only_after_the_api_key(app):
    for bad in ("", "x" * 256, "tab\there"):
        response = await app.post("/v1/chat/completions", CHAT, **{"Idempotency-Key": bad})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_idempotency_key", (bad, response.text)
    anonymous = await app.client.post("/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "k"})
    assert anonymous.status_code == 401
    spaced = b'{"max_tokens": 10, "model": "fake-gpt",\n "messages": [{"content": "hello", "role": "user"}]}'
    auth = {"authorization": f"Bearer {app.keys['acme']}", "content-type": "application/json", "Idempotency-Key": "same-json"}
    first = await app.client.post("/v1/chat/completions", content=spaced, headers=auth)
    second = await app.post("/v1/chat/completions", CHAT, **{"Idempotency-Key": "same-json"})
    assert second.headers[REPLAYED] == "true" and second.json()["id"] == first.json()["id"]  # the same JSON, written otherwise


async def test_requests_without_the_header_never_touch_the_idempotency_table(app):
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(app.deps.db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        plain = await app.sdk().chat.completions.create(**CHAT)
        assert plain.id and not [s for s in statements if "idempotency_keys" in s]
        await app.sdk().chat.completions.create(**CHAT, extra_headers=idem())
        assert len([s for s in statements if "idempotency_keys" in s]) == 2  # a new key: its claim, then its response
    finally:
        event.remove(app.deps.db.engine.sync_engine, "before_cursor_execute", seen)


# --- the store, on SQLite and PostgreSQL ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'idem.db'}"
    else:
        url = await asyncio.to_thread(request.getfixturevalue, "postgres_url")
    database = await open_database(url)
    yield database
    await database.close()


async def test_claims_replays_conflicts_takeovers_and_purge(db):
    from emporion.store import idempotency as store

    now = time.time()
    held = await store.claim(db, "org_a", "k1", "f1", lock_s=60, now=now)
    assert isinstance(held, store.Claim)
    assert await store.claim(db, "org_a", "k1", "f1", lock_s=60, now=now + 1) == "in_progress"
    assert await store.claim(db, "org_a", "k1", "f2", lock_s=60, now=now + 1) == "reused"
    assert isinstance(await store.claim(db, "org_b", "k1", "f2", lock_s=60, now=now), store.Claim)  # per organization
    assert await store.complete(db, held, 200, {"x-request-id": "r1"}, b"{}")
    stored = await store.claim(db, "org_a", "k1", "f1", lock_s=60, now=now + 2)
    assert stored == store.Stored(200, {"x-request-id": "r1"}, b"{}")
    assert await store.claim(db, "org_a", "k1", "f2", lock_s=60, now=now + 2) == "reused"

    dead = await store.claim(db, "org_a", "k2", "f1", lock_s=60, now=now)  # its process dies
    assert isinstance(dead, store.Claim)
    assert await store.claim(db, "org_a", "k2", "f2", lock_s=60, now=now + 61) == "reused"
    taken = await store.claim(db, "org_a", "k2", "f1", lock_s=60, now=now + 61)
    assert isinstance(taken, store.Claim) and taken.token != dead.token
    assert not await store.complete(db, dead, 200, {}, b"late") and not await store.release(db, dead)  # no longer its key
    assert await store.release(db, taken)
    assert isinstance(await store.claim(db, "org_a", "k2", "f2", lock_s=60, now=now + 62), store.Claim)  # released: free

    day = store.TTL_S
    assert isinstance(await store.claim(db, "org_a", "k1", "f9", lock_s=60, now=now + day), store.Claim)  # expired: anew
    assert await store.purge_expired(db, now=now + day) == 1  # org_b's k1
    assert await store.purge_expired(db, now=now + 2 * day) == 2  # org_a's k1 (claimed anew) and k2 (after its release)
    assert await store.purge_expired(db, now=now + 2 * day) == 0


async def test_concurrent_claims_of_one_key_let_exactly_one_run(db):
    from emporion.store import idempotency as store

    outcomes = await asyncio.gather(*(store.claim(db, "org_a", "same", "f", lock_s=60) for _ in range(12)))
    assert sum(isinstance(o, store.Claim) for o in outcomes) == 1 and outcomes.count("in_progress") == 11
