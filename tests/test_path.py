"""The request path (emporion/pipeline): a refusal of the plan touches no money, the hold prices
only the deployments the plan kept, a 402 gives its tokens back, and the stages seam sees every
call at its three points. In-process app with the engine off, the fake OpenAI upstream on a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from emporion.accounts.keys import issue_key
from emporion.core.prices import Price
from emporion.errors import PermissionDenied
from emporion.pipeline import Call, Stage
from emporion.providers.base import Chunk
from emporion.settings import DeploymentConfig, ModelConfig, OrgPolicy, Pricing, TierSettings, UpstreamConfig
from emporion.store import orgs, repos
from emporion.store.tables import Entry, Hold, Posting, RequestRecord
from tests import test_hardening
from tests.test_hardening import USER, App, settings_for, started

fake = test_hardening.fake  # the fixture: the fake OpenAI upstream, its scripts cleared

DEAR = Pricing(prompt=Decimal("0.001"), completion=Decimal("0.01"))  # 1,000 output tokens: $10
CHEAP = Pricing(prompt=Decimal("0.0000001"), completion=Decimal("0.0000002"))
TIGHT = TierSettings(requests_per_minute=1000, tokens_per_minute=2000, max_concurrent=10)


@pytest.fixture
async def app(tmp_path, fake) -> AsyncIterator[App]:
    base = settings_for(tmp_path, fake.url)
    upstreams = [
        *base.upstreams,
        UpstreamConfig(name="cheap-host", base_url=f"{fake.url}/v1"),
        UpstreamConfig(name="dear-host", base_url=f"{fake.url}/v1"),
    ]
    models = {
        **base.models,
        "two-prices": ModelConfig(
            context_length=100_000,
            deployments=[
                DeploymentConfig(upstream="dear-host", model="dear", pricing=DEAR),
                DeploymentConfig(upstream="cheap-host", model="cheap", pricing=CHEAP),
            ],
        ),
        "dear": ModelConfig(upstream="dear-host", context_length=100_000, pricing=DEAR),
        "small-context": ModelConfig(upstream="fake", context_length=1000),
    }
    settings = base.model_copy(
        update={
            "upstreams": upstreams,
            "models": models,
            "tiers": {"free": TIGHT},
            "policies": {"walled": OrgPolicy(data_policy="local-only")},
        }
    )
    async for started_app in started(settings):
        yield started_app


async def books(app: App) -> tuple[int, ...]:
    """Rows the money path writes: holds, postings, entries, request records."""
    async with app.deps.db.session() as session:
        return tuple(
            [
                (await session.execute(select(func.count()).select_from(table))).scalar_one()
                for table in (Hold, Posting, Entry, RequestRecord)
            ]
        )


REFUSED_BY_THE_PLAN = [
    pytest.param({"model": "no-such-model"}, 404, "model_not_found", id="unknown model"),
    pytest.param({"model": "small-context"}, 400, "context_length_exceeded", id="beyond the context"),
    pytest.param({"model": "big-context", "provider": {"only": ["nobody"]}}, 404, "no_endpoints", id="no deployment left"),
    pytest.param({"model": "big-context", "provider": {"sort": "cheapest"}}, 400, None, id="bad preferences"),
    pytest.param(
        {"model": "big-context", "provider": {"max_price": {"prompt": "NaN"}}}, 400, "invalid_value", id="bad max_price"
    ),
    pytest.param({"model": "big-context", "models": ["no-such-fallback"]}, 404, "model_not_found", id="unknown fallback"),
]


@pytest.mark.parametrize(("fields", "status", "code"), REFUSED_BY_THE_PLAN)
async def test_a_refusal_of_the_plan_holds_settles_and_records_nothing(app, fields, status, code):
    key = await app.key("planner")
    before = await books(app)
    for _ in range(3):  # each time with 1,900 tokens asked of a 2,000 tokens-per-minute bucket
        answer = await app.post("/v1/chat/completions", key, {"messages": USER, "max_tokens": 1900, **fields})
        assert answer.status_code == status, answer.text
        assert code is None or answer.json()["error"]["code"] == code
    assert await books(app) == before
    ordinary = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 1900})
    assert ordinary.status_code == 200, ordinary.text  # the refusals gave their tokens back


async def test_the_policy_and_the_keys_scope_refuse_before_any_hold(app):
    walled = await app.key("walled")  # data_policy local-only, and the engine is off
    async with app.deps.db.session() as session, session.begin():
        org = await repos.create_org(session, "scoped")
        new, _ = await issue_key(session, org, orgs.KeyColumns(label="scoped", allowed_models=["dear"]))
    await app.deps.ledger.grant(org.id, 10**9, reference=f"welcome:{org.id}")
    before = await books(app)
    policy = await app.post("/v1/chat/completions", walled, {"model": "big-context", "messages": USER})
    scope = await app.post("/v1/chat/completions", new.plaintext, {"model": "big-context", "messages": USER})
    assert (policy.status_code, policy.json()["error"]["code"]) == (403, "policy_forbids_model")
    assert (scope.status_code, scope.json()["error"]["code"]) == (403, "model_not_allowed")
    assert await books(app) == before


async def test_the_hold_prices_only_the_deployments_the_plan_kept(app, fake):
    key = await app.key("frugal")  # $1 of credit: the dear deployment's worst case ($10) is beyond it
    body = {"model": "two-prices", "messages": USER, "max_tokens": 1000}
    dear = await app.post("/v1/chat/completions", key, body)
    assert dear.status_code == 402, dear.text
    cheap = await app.post("/v1/chat/completions", key, {**body, "provider": {"only": ["cheap-host"]}})
    assert cheap.status_code == 200, cheap.text
    assert cheap.headers["x-emporion-upstream"] == "cheap-host"
    assert fake.received[-1]["model"] == "cheap"


async def test_a_402_gives_back_the_tokens_it_charged(app):
    key = await app.key("short")
    refused = await app.post("/v1/chat/completions", key, {"model": "dear", "messages": USER, "max_tokens": 1900})
    assert refused.status_code == 402, refused.text
    again = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 1900})
    assert again.status_code == 200, again.text


class Recorder(Stage):
    def __init__(self, refuse: bool = False, explode: bool = False) -> None:
        self.seen: list[tuple[str, object]] = []
        self.refuse, self.explode = refuse, explode

    async def screen(self, call: Call) -> None:
        self.seen.append(("screen", call.plan))
        if self.refuse:
            raise PermissionDenied("Refused by screening.", code="screened")

    def on_chunk(self, call: Call, chunk: Chunk) -> None:
        self.seen.append(("chunk", call.status))

    async def observe(self, call: Call) -> None:
        self.seen.append(
            ("observe", (call.status, call.cost, call.route.model.id if call.route else None, type(call.error).__name__))
        )
        if self.explode:
            raise RuntimeError("a broken observer")


async def test_a_stage_sees_a_whole_answer_screened_first_and_observed_after_settlement(app):
    recorder = Recorder()
    app.deps.stages.register(recorder)
    key = await app.key("staged")
    answer = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 5})
    assert answer.status_code == 200
    cost = answer.headers["x-emporion-cost"]
    assert [name for name, _ in recorder.seen] == ["screen", "observe"]
    assert recorder.seen[0][1] is None  # screened before anything was planned
    status, charged, model, error = recorder.seen[1][1]  # type: ignore[misc]
    assert (status, model, error) == ("completed", "big-context", "NoneType")
    assert Decimal(cost) == Decimal(charged) / 10**9


async def test_a_stage_sees_each_chunk_of_a_stream_and_observes_it_settled(app):
    recorder = Recorder()
    app.deps.stages.register(recorder)
    key = await app.key("streamed")
    stream = await app.client(key).chat.completions.create(
        model="big-context", messages=USER, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    names = [name for name, _ in recorder.seen]
    assert names[0] == "screen" and names[-1] == "observe" and names.count("chunk") >= 2
    assert all(status is None for name, status in recorder.seen if name == "chunk")  # not settled while each passes
    status, charged, _, _ = recorder.seen[-1][1]  # type: ignore[misc]
    assert status == "completed"
    assert chunks[-1].usage is not None and Decimal(str(chunks[-1].usage.cost)) == Decimal(charged) / 10**9  # type: ignore[attr-defined]


async def test_a_screen_refuses_for_free_and_a_broken_observer_fails_nobody(app, caplog):
    key = await app.key("screened")
    refusing = Recorder(refuse=True)
    app.deps.stages.register(refusing)
    before = await books(app)
    refused = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "screened")
    assert await books(app) == before
    assert refusing.seen[-1] == ("observe", (None, None, None, "PermissionDenied"))

    refusing.refuse, refusing.explode = False, True
    answer = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 5})
    assert answer.status_code == 200
    assert "failed to observe" in caplog.text


async def test_routing_compares_the_price_book_not_the_config(app):
    """The config says cheap-host is cheap; the operator's price book now says otherwise."""
    await app.deps.pricebook.set_price(
        "two-prices", Price(prompt=Decimal("0.01"), completion=Decimal("0.1")), upstream="cheap-host"
    )
    key = await app.key("comparing")
    floor = await app.post("/v1/chat/completions", key, {"model": "two-prices:floor", "messages": USER, "max_tokens": 5})
    assert floor.status_code == 200, floor.text
    assert floor.headers["x-emporion-upstream"] == "dear-host"  # now the cheaper of the two
    capped = {"model": "two-prices", "messages": USER, "max_tokens": 5, "provider": {"max_price": {"completion": 20_000}}}
    within = await app.post("/v1/chat/completions", key, capped)  # USD per million: 0.02 a token, below cheap-host's 0.1
    assert within.status_code == 200, within.text
    assert within.headers["x-emporion-upstream"] == "dear-host"


GENERATING = [
    ("/v1/chat/completions", {"model": "big-context", "messages": USER, "max_tokens": 5}),
    ("/v1/completions", {"model": "big-context", "prompt": "hi", "max_tokens": 5}),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hi"}),
    ("/v1/messages", {"model": "big-context", "messages": USER, "max_tokens": 5}),
]


@pytest.mark.parametrize("kind", ["admin", "operator"])
async def test_admin_and_operator_keys_cannot_generate_but_read_their_own_organization(app, kind):
    api_key = await app.key("kinds")
    async with app.deps.db.session() as session, session.begin():
        org = await repos.get_or_create_org(session, "kinds")
        new, _ = await issue_key(session, org, orgs.KeyColumns(kind=kind, label=kind))
    before = await books(app)
    for path, body in GENERATING:
        refused = await app.post(path, new.plaintext, body)
        assert refused.status_code == 403, (path, refused.text)
        envelope = refused.json()["error"]
        assert envelope["code" if path != "/v1/messages" else "type"] == (
            "api_key_required" if path != "/v1/messages" else "permission_error"
        )
    assert await books(app) == before
    for path in ("/v1/models", "/v1/usage"):
        assert (await app.http.get(path, headers={"authorization": f"Bearer {new.plaintext}"})).status_code == 200
    served = await app.post("/v1/chat/completions", api_key, GENERATING[0][1])
    assert served.status_code == 200, served.text
