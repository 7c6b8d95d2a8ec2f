"""Regressions from trying Emporion as a new user would: requests without max_tokens on a new
account, the operator's own organization, upstream errors that carried secrets or tripped the
breaker for everyone, bad provider preferences, disabled engines still listed, markups shown,
token-id inputs, streams cut mid-way.

The app runs in-process with the local engine off, in front of the fake OpenAI upstream on a
real socket; each test gets a fresh SQLite data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emporion.accounts.keys import issue_key
from emporion.app import build_app
from emporion.cli.main import _first_start
from emporion.core.prices import Margin, Price, charge
from emporion.core.usage import Usage
from emporion.metering.meter import affordable_output
from emporion.pipeline import Deps
from emporion.providers.base import Upstream
from emporion.providers.redaction import upstream_text
from emporion.settings import (
    OPERATOR_TIER,
    DeploymentConfig,
    EmbeddingSettings,
    EngineSettings,
    MeteringSettings,
    ModelConfig,
    Pricing,
    RoutingSettings,
    ServerSettings,
    Settings,
    TierSettings,
    UpstreamConfig,
)
from emporion.store import orgs, repos
from tests.fakes.script import Script

SECRET = "sk-upstream-secret-0123456789"
USER = [{"role": "user", "content": "hello"}]
FREE = TierSettings(requests_per_minute=20, tokens_per_minute=40_000, max_concurrent=4)


def settings_for(data_dir: Path, fake_url: str, **changes) -> Settings:
    upstream = UpstreamConfig(name="fake", base_url=f"{fake_url}/v1", api_key_env="HARDENING_UPSTREAM_KEY")
    models = {
        "big-context": ModelConfig(
            upstream="fake",
            context_length=128_000,
            pricing=Pricing(prompt=Decimal("0.00000015"), completion=Decimal("0.0000006")),
        ),
        "luxury": ModelConfig(
            upstream="fake", context_length=1_000_000, pricing=Pricing(prompt=Decimal("0.000001"), completion=Decimal("0.001"))
        ),
        "flaky": ModelConfig(deployments=[DeploymentConfig(upstream="fake", model="flaky-upstream")]),
    }
    fields = {
        "data_dir": data_dir,
        "server": ServerSettings(auth_cache_s=0),
        "engine": EngineSettings(enabled=False),
        "embeddings": EmbeddingSettings(enabled=False),
        "upstreams": [upstream],
        "models": models,
        "metering": MeteringSettings(free_credit_usd=Decimal(1)),
        "routing": RoutingSettings(breaker_threshold=2, breaker_cooldown_s=30),
        "tiers": {"free": FREE},
    }
    return Settings(**{**fields, **changes})


@dataclass
class App:
    deps: Deps
    http: httpx.AsyncClient

    async def key(self, org_name: str, parent: str | None = None, **org_fields) -> str:
        """An API key of a new organization (with the free credit)."""
        async with self.deps.db.session() as session, session.begin():
            parent_id = (await repos.get_or_create_org(session, parent)).id if parent else None
            org = await repos.create_org(session, org_name, parent_id=parent_id)
            for name, value in org_fields.items():
                setattr(org, name, value)
            new, _ = await issue_key(session, org, orgs.KeyColumns(label="test"))
        if parent is None:
            await self.deps.ledger.grant(org.id, 10**9, reference=f"welcome:{org.id}")
        self.deps.auth.forget()
        return new.plaintext

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://emporion/v1", api_key=key, http_client=self.http, max_retries=0)

    async def post(self, path: str, key: str, body: dict) -> httpx.Response:
        return await self.http.post(path, json=body, headers={"authorization": f"Bearer {key}"})


@pytest.fixture
def fake(fake_openai, monkeypatch):
    monkeypatch.setenv("HARDENING_UPSTREAM_KEY", SECRET)
    fake_openai.scripts.clear()
    fake_openai.received.clear()
    yield fake_openai
    fake_openai.scripts.clear()


async def started(settings: Settings) -> AsyncIterator[App]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emporion", timeout=30) as http:
            yield App(app.state.deps, http)


@pytest.fixture
async def gateway(tmp_path, fake) -> AsyncIterator[App]:
    async for app in started(settings_for(tmp_path, fake.url)):
        yield app


# --- requests without max_tokens ----------------------------------------------------------------


async def test_a_call_without_max_tokens_succeeds_on_the_free_tier_and_counts_its_real_tokens(gateway, fake):
    key = await gateway.key("newcomer")
    fake.enqueue(Script(text="one two three", prompt_tokens=5000))
    reply = await gateway.client(key).chat.completions.with_raw_response.create(model="big-context", messages=USER)
    assert reply.parse().usage.completion_tokens == 3
    assert "max_tokens" not in fake.received[-1]  # the upstream's own limit applies: nothing to cap
    # the tokens-per-minute bucket holds what was used (5,003), not the estimate (a few tokens)
    second = await gateway.client(key).chat.completions.with_raw_response.create(model="big-context", messages=USER, max_tokens=1)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 40_000 - 5003 - 10 <= remaining < 40_000 - 4000, remaining  # (it refills at 667 tokens a second)


async def test_without_max_tokens_the_hold_is_what_the_credit_covers_and_the_generation_stops_there(gateway, fake):
    key = await gateway.key("thrifty")  # $1 of credit; luxury's output costs $0.001 a token
    reply = await gateway.client(key).chat.completions.create(model="luxury", messages=USER)
    cap = fake.received[-1]["max_tokens"]
    assert 900 < cap < 1000  # what $1 pays for, after the prompt's worst case
    assert reply.usage.cost > 0
    available = await gateway.deps.ledger.available((await principal_of(gateway, key)).org_id)
    assert available >= 0
    with pytest.raises(openai.APIStatusError) as refused:  # an explicit max_tokens is never lowered
        await gateway.client(key).chat.completions.create(model="luxury", messages=USER, max_tokens=5000)
    assert refused.value.status_code == 402


async def test_a_request_that_can_never_fit_the_limit_says_so_without_retry_after(tmp_path, fake):
    small = TierSettings(requests_per_minute=100, tokens_per_minute=100, max_concurrent=4)
    async for app in started(settings_for(tmp_path, fake.url, tiers={"free": small})):
        key = await app.key("small")
        never = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 500})
        assert never.status_code == 429 and "retry-after" not in never.headers
        assert "Request too large" in never.json()["error"]["message"]
        fake.enqueue(Script(prompt_tokens=70))  # 75 tokens used of 100
        assert (
            await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 60})
        ).status_code == 200
        later = await app.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 60})
        assert later.status_code == 429 and int(later.headers["retry-after"]) >= 1


# --- the operator's own organization -------------------------------------------------------------


async def test_the_first_organization_is_the_operators_and_has_no_tier_limits(tmp_path, fake):
    settings = settings_for(tmp_path, fake.url)
    await _first_start(settings)
    async for app in started(settings):
        async with app.deps.db.session() as session, session.begin():
            default = await repos.get_or_create_org(session, repos.DEFAULT_ORG)
            assert (default.tier, default.tier_pinned) == (OPERATOR_TIER, True)
            new, _ = await issue_key(session, default, orgs.KeyColumns(label="more"))
        for _ in range(FREE.requests_per_minute + 5):
            response = await app.post(
                "/v1/chat/completions", new.plaintext, {"model": "big-context", "messages": USER, "max_tokens": 5}
            )
            assert response.status_code == 200, response.text
        newcomer = await app.key("newcomer")  # everyone else starts on the first tier
        statuses = [
            (
                await app.post("/v1/chat/completions", newcomer, {"model": "big-context", "messages": USER, "max_tokens": 5})
            ).status_code
            for _ in range(FREE.requests_per_minute + 1)
        ]
        assert statuses.count(429) == 1


# --- upstream errors -----------------------------------------------------------------------------


async def test_an_upstream_error_reaches_the_client_without_credentials_or_urls(gateway, fake):
    key = await gateway.key("curious")
    echoed = (
        f"proxy rejected: headers were {{'Authorization': 'Bearer {SECRET}', 'x-api-key': 'abc123secret'}} "
        f"for {fake.url}/v1/chat/completions (internal http://10.0.0.7:8000/v1)"
    )
    for status in (400, 404, 500):  # (the 500s open the breaker: last)
        fake.scripts.clear()
        fake.enqueue(*[Script(status=status, error={"error": {"message": echoed, "type": "x", "param": None, "code": None}})] * 4)
        response = await gateway.post("/v1/chat/completions", key, {"model": "big-context", "messages": USER, "max_tokens": 5})
        text = response.text
        assert response.status_code == (status if status != 500 else 502), text
        for leak in (SECRET, "abc123secret", fake.url, "10.0.0.7"):
            assert leak not in text, (status, text)
        assert "proxy rejected" in text  # the rest of the message is still there


async def test_an_upstream_404_is_a_client_error_and_opens_no_breaker_for_others(gateway, fake):
    mine, theirs = await gateway.key("mistaken"), await gateway.key("bystander")
    for _ in range(4):  # the breaker opens after 2 failures of the upstream itself
        fake.enqueue(
            Script(
                status=404,
                error={"error": {"message": "The model `flaky-upstream` does not exist", "type": "invalid_request_error"}},
            )
        )
        response = await gateway.post("/v1/chat/completions", mine, {"model": "flaky", "messages": USER, "max_tokens": 5})
        assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error", response.text
    response = await gateway.post("/v1/chat/completions", theirs, {"model": "flaky", "messages": USER, "max_tokens": 5})
    assert response.status_code == 200, response.text


async def test_an_upstream_400_opens_no_breaker_either(gateway, fake):
    mine, theirs = await gateway.key("bad-input"), await gateway.key("good-input")
    for _ in range(4):
        fake.enqueue(
            Script(status=400, error={"error": {"message": "image input is not supported", "type": "invalid_request_error"}})
        )
        response = await gateway.post("/v1/chat/completions", mine, {"model": "flaky", "messages": USER, "max_tokens": 5})
        assert response.status_code == 400, response.text
    assert (
        await gateway.post("/v1/chat/completions", theirs, {"model": "flaky", "messages": USER, "max_tokens": 5})
    ).status_code == 200


# --- bad provider preferences --------------------------------------------------------------------


@pytest.mark.parametrize("price", ["NaN", "sNaN", "1e999999999", "-1", "Infinity", "ten", True, [1], {"a": 1}])
async def test_a_max_price_that_is_not_a_price_is_a_400(gateway, price):
    key = await gateway.key("haggler")
    body = {"model": "big-context", "messages": USER, "max_tokens": 5, "provider": {"max_price": {"prompt": price}}}
    response = await gateway.post("/v1/chat/completions", key, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "provider.max_price.prompt"


# --- the catalog ---------------------------------------------------------------------------------


async def test_a_disabled_engine_lists_no_local_model_and_routes_none_there(gateway):
    key = await gateway.key("browser")
    ids = {model.id async for model in gateway.client(key).models.list()}
    assert "gemma-3-270m" not in ids and "all-minilm-l6-v2" not in ids and "big-context" in ids
    response = await gateway.post("/v1/chat/completions", key, {"model": "gemma-3-270m", "messages": USER})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


async def test_a_price_override_of_a_disabled_local_model_starts_and_a_hybrid_model_keeps_its_remote_deployment(tmp_path, fake):
    settings = settings_for(tmp_path, fake.url)
    models = {
        **settings.models,
        "gemma-3-270m": ModelConfig(pricing=Pricing(prompt=Decimal("0.00000002"), completion=Decimal("0.00000004"))),
        "hybrid": ModelConfig(
            deployments=[
                DeploymentConfig(upstream="local:gemma-3-270m"),
                DeploymentConfig(upstream="fake", model="hybrid-remote"),
            ]
        ),
    }
    async for app in started(settings.model_copy(update={"models": models})):
        key = await app.key("hybrid-user")
        assert not app.deps.catalog.has("gemma-3-270m")
        response = await app.post("/v1/chat/completions", key, {"model": "hybrid", "messages": USER, "max_tokens": 5})
        assert response.status_code == 200 and response.headers["x-emporion-deployment"] == "fake/hybrid-remote"


async def test_models_show_each_customer_the_price_it_pays_markups_included(gateway):
    reseller = await gateway.key("reseller", resale_percent="50", resale_fixed="0.001")
    customer = await gateway.key("customer", parent="reseller")
    await gateway.deps.pricebook.set_margin(Margin(Decimal(10)))
    seen = {}
    for name, key in (("reseller", reseller), ("customer", customer)):
        listed = {m.id: m.model_dump() for m in (await gateway.client(key).models.list()).data}
        one = (await gateway.client(key).models.retrieve("big-context")).model_dump()
        assert listed["big-context"]["pricing"] == one["pricing"]
        seen[name] = one["pricing"]
    assert seen["reseller"] == {"prompt": "0.000000165", "completion": "0.00000066"}  # the operator's 10% margin
    assert seen["customer"] == {"prompt": "0.0000002475", "completion": "0.00000099", "request": "0.001"}  # and the reseller's


# --- inputs as token ids -------------------------------------------------------------------------


async def test_completion_prompts_given_as_token_ids_are_passed_on(gateway, fake):
    key = await gateway.key("tokenizer")
    single = await gateway.client(key).completions.create(model="big-context", prompt=[15339, 1917], max_tokens=3)
    assert len(single.choices) == 1 and fake.received[-1]["prompt"] == [15339, 1917]
    several = await gateway.client(key).completions.create(model="big-context", prompt=[[1, 2], [3, 4, 5]], max_tokens=3)
    assert [choice.index for choice in several.choices] == [0, 1]
    assert sorted(map(str, (body["prompt"] for body in fake.received[-2:]))) == ["[1, 2]", "[3, 4, 5]"]
    for bad in ([], [[]], [-1], [2**31], [1.5], [[1], "a"]):
        response = await gateway.post("/v1/completions", key, {"model": "big-context", "prompt": bad, "max_tokens": 3})
        assert response.status_code == 400, (bad, response.text)
        assert "constrained" not in response.text and "[int]" not in response.text


# --- streams -------------------------------------------------------------------------------------


async def test_a_stream_cut_mid_way_is_recorded_as_partial_with_its_finish_reason(gateway, fake):
    key = await gateway.key("unlucky")
    fake.enqueue(Script(text="a b c d e f", reset_after_chunks=3))
    stream = await gateway.client(key).chat.completions.create(model="big-context", messages=USER, stream=True, max_tokens=20)
    pieces, request_id = [], None
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            request_id = chunk.id
            pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(pieces) == "a b c"
    record = (
        await gateway.http.get("/v1/generation", params={"id": request_id}, headers={"authorization": f"Bearer {key}"})
    ).json()["data"]
    assert record["status"] == "partial" and record["finish_reason"] == "error"
    assert record["tokens_completion"] == 3 and record["usage_source"] == "counted"


# --- helpers -------------------------------------------------------------------------------------


async def principal_of(app: App, key: str):
    return await app.deps.auth.authenticate(f"Bearer {key}")


# --- redaction, as a property --------------------------------------------------------------------

_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=16, max_size=48)
_WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    before=_WORDS,
    after=_WORDS,
    key=_KEY,
    shape=st.sampled_from(["{}", "Bearer {}", "sk-{}", "api_key={}", '"x-api-key": "{}"', "https://h.example/v1?key={}"]),
)
def test_no_credential_or_operator_key_survives_redaction(before: str, after: str, key: str, shape: str) -> None:
    upstream = Upstream(name="u", adapter="openai_compat", base_url="http://10.1.2.3:8000/v1", api_key=key)
    text = upstream_text(upstream, f"{before} {shape.format(key)} {after} http://10.1.2.3:8000/v1/chat")
    assert key not in text and "10.1.2.3" not in text
    assert len(text) <= 500


# --- the output a credit pays for, as a property -------------------------------------------------

_PRICE = st.decimals(min_value=0, max_value=Decimal("0.01"), places=9)
_PERCENT = st.decimals(min_value=0, max_value=200, places=2)


@settings(max_examples=300, deadline=None)
@given(
    prompt=_PRICE,
    completion=_PRICE.filter(lambda value: value > 0),
    request_fee=_PRICE,
    margin=_PERCENT,
    markups=st.lists(_PERCENT, max_size=3),
    prompt_tokens=st.integers(0, 10**6),
    most=st.integers(1, 10**6),
    available=st.integers(0, 10**12),
)
def test_the_output_a_credit_pays_for_never_costs_more_than_the_credit_and_is_the_most_it_can(
    prompt, completion, request_fee, margin, markups, prompt_tokens, most, available
) -> None:
    price = Price(prompt=prompt, completion=completion, request=request_fee)

    def cost(n: int) -> int:
        return charge(
            Usage(input_tokens=prompt_tokens, output_tokens=n), price, Margin(margin), [Margin(m) for m in markups]
        ).total

    n = affordable_output(cost, most, available)
    assert 0 <= n <= most
    assert n == 0 or cost(n) <= available
    assert n == most or cost(n + 1) > available
