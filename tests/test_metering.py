"""Billing on the request path, through the gateway in this process (engine off): holds, 402s, budgets, usage.cost,
GET /v1/generation, streamed vs non-streamed parity, disconnect and mid-stream failure."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal

import httpx
import openai
import pytest

from tests.conftest import emporion
from tests.fakes.script import Script

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]
PROMPT, COMPLETION = Decimal("0.000001"), Decimal("0.001")  # the `luxury` model's price, USD per token


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    """The gateway in this process with the local engine off: metering needs no local model."""
    return remote_gateway


def nanos(prompt_tokens: int, completion_tokens: int) -> int:
    return int((prompt_tokens * PROMPT + completion_tokens * COMPLETION) * 10**9)


def new_key(gateway, org: str, **columns) -> str:
    """A key of a new organization (with the free credit), its columns set in the database."""
    key = emporion("keys", "create", "--org", org, data_dir=gateway.data_dir).stdout.strip()
    if columns:
        with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(f"UPDATE api_keys SET {assignments} WHERE prefix = ?", [*columns.values(), key[:8]])
    return key


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def generation(gateway, key: str, request_id: str, status: int = 200) -> dict:
    deadline = time.monotonic() + 10
    while True:  # a stream settles when it closes, just after the client has its last byte
        response = httpx.get(
            f"{gateway.url}/v1/generation", params={"id": request_id}, headers={"authorization": f"Bearer {key}"}
        )
        if response.status_code == status or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == status, response.text
    return response.json()


def test_usage_reports_the_exact_cost_and_the_generation_record_matches(gateway):
    key = new_key(gateway, "meter-cost")
    response = client(gateway, key).chat.completions.with_raw_response.create(model="luxury", messages=USER, max_tokens=10)
    completion = response.parse()
    assert completion.usage.prompt_tokens == 7 and completion.usage.completion_tokens == 5
    expected = nanos(7, 5)
    assert Decimal(str(completion.usage.model_extra["cost"])) == Decimal(expected) / 10**9
    assert response.headers["x-emporion-cost"] == str(Decimal(expected) / 10**9)
    record = generation(gateway, key, completion.id)["data"]
    assert record["total_cost_nanos"] == expected
    assert (record["model"], record["upstream"], record["upstream_model"]) == ("luxury", "fake", "luxury-model")
    assert (record["status"], record["usage_source"], record["streamed"]) == ("completed", "upstream", False)
    assert (record["tokens_prompt"], record["tokens_completion"], record["finish_reason"]) == (7, 5, "stop")
    assert record["latency"] >= 0 and record["attempts"] == 1


def test_streamed_and_non_streamed_calls_cost_the_same(gateway):
    key = new_key(gateway, "meter-parity")
    plain = client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    chunks = list(
        client(gateway, key).chat.completions.create(
            model="luxury", messages=USER, max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.model_extra["cost"] == plain.usage.model_extra["cost"]
    streamed = generation(gateway, key, chunks[0].id)["data"]
    assert streamed["streamed"] and streamed["total_cost_nanos"] == generation(gateway, key, plain.id)["data"]["total_cost_nanos"]


def test_a_request_that_could_cost_more_than_the_balance_gets_402(gateway):
    key = new_key(gateway, "meter-poor")  # $100 of free credit; 200,000 output tokens could cost $200
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=200_000)
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "insufficient_credits" and "max_tokens" in caught.value.body["message"]
    assert client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10).choices


def test_a_key_budget_is_never_overshot(gateway):
    # Each call holds $0.010028 (28 prompt bytes, 10 output tokens) and costs $0.005007.
    key = new_key(gateway, "meter-budget", budget_nanos=20_000_000)
    ok = [client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10) for _ in range(2)]
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    assert caught.value.status_code == 402 and caught.value.body["code"] == "budget_exceeded"
    spent = sum(generation(gateway, key, c.id)["data"]["total_cost_nanos"] for c in ok)
    assert spent == 2 * nanos(7, 5) <= 20_000_000


def test_client_disconnect_bills_the_tokens_streamed(gateway, fake_openai):
    key = new_key(gateway, "meter-disconnect")
    fake_openai.enqueue(Script(text=" ".join(["word"] * 60), chunk_delay_s=0.05))
    stream = client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=100, stream=True)
    received = 0
    for chunk in stream:
        request_id = chunk.id
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 5:
            break
    stream.close()
    record = generation(gateway, key, request_id)["data"]
    deadline = time.monotonic() + 5
    while record["status"] != "cancelled" and time.monotonic() < deadline:
        record = generation(gateway, key, request_id)["data"]
    assert (record["status"], record["usage_source"]) == ("cancelled", "counted")
    assert 5 <= record["tokens_completion"] < 60
    assert record["total_cost_nanos"] == nanos(record["tokens_prompt"], record["tokens_completion"])


def test_mid_stream_upstream_failure_bills_what_was_generated(gateway, fake_openai):
    key = new_key(gateway, "meter-failure")
    fake_openai.enqueue(Script(text="one two three four five six", reset_after_chunks=3))
    stream = client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=100, stream=True)
    ids = set()
    with pytest.raises(openai.APIError, match="unreachable"):  # the stream ends with an error event
        for chunk in stream:
            ids.add(chunk.id)
    assert len(ids) == 1
    record = generation(gateway, key, ids.pop())["data"]
    assert (record["status"], record["usage_source"], record["tokens_completion"]) == ("partial", "counted", 3)
    assert record["total_cost_nanos"] == nanos(record["tokens_prompt"], 3)


def test_an_upstream_failure_before_output_costs_nothing(gateway, fake_openai):
    key = new_key(gateway, "meter-nothing")
    fake_openai.enqueue(Script(status=400, error={"error": {"message": "bad", "type": "invalid_request_error"}}))
    with pytest.raises(openai.BadRequestError):
        client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
        balance, held = db.execute("SELECT balance_nanos, held_nanos FROM accounts WHERE id = ?", [f"customer:{org}"]).fetchone()
        statuses = [row[0] for row in db.execute("SELECT status FROM requests WHERE org_id = ?", [org])]
    assert (balance, held, statuses) == (100 * 10**9, 0, ["failed"])


def test_another_organizations_generation_is_not_found(gateway):
    mine, theirs = new_key(gateway, "meter-a"), new_key(gateway, "meter-b")
    completion = client(gateway, mine).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    generation(gateway, mine, completion.id)
    body = generation(gateway, theirs, completion.id, status=404)
    assert body["error"]["code"] == "generation_not_found" and "luxury" not in str(body)


def test_requests_per_minute_of_a_key_give_429_with_openai_headers(gateway):
    key = new_key(gateway, "meter-rpm", requests_per_minute=2)
    for _ in range(2):
        response = client(gateway, key).chat.completions.with_raw_response.create(model="luxury", messages=USER, max_tokens=10)
        assert response.headers["x-ratelimit-limit-requests"]
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    headers = caught.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"


def test_a_key_limited_to_some_models_gets_403_on_others(gateway):
    key = new_key(gateway, "meter-scope", allowed_models='["luxury"]')
    assert client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(gateway, key).chat.completions.create(model="fake-gpt", messages=USER, max_tokens=10)
    assert caught.value.body["code"] == "model_not_allowed"


def test_a_resellers_customer_pays_the_operators_price_plus_the_markup_and_the_reseller_earns_it(gateway):
    run = lambda *args: emporion(*args, data_dir=gateway.data_dir).stdout.strip()  # noqa: E731
    parent = run("orgs", "create", "meter-reseller")
    run("orgs", "set-markup", "meter-reseller", "--percent", "25", "--fixed", "0.000001")
    child = run("orgs", "create", "meter-retail", "--parent", "meter-reseller")
    run("credits", "transfer", "meter-retail", "10")  # a sub-organization has what its reseller gives it
    key = run("keys", "create", "--org", "meter-retail")
    completion = client(gateway, key).chat.completions.create(model="luxury", messages=USER, max_tokens=10)
    base = nanos(completion.usage.prompt_tokens, completion.usage.completion_tokens)  # the operator's price (no margin here)
    markup = base // 4 + 1000  # 25% (exact here: prices are whole thousands of nanos) plus $0.000001
    record = generation(gateway, key, completion.id)["data"]
    assert record["total_cost_nanos"] == base + markup
    assert "upstream_inference_cost" not in record and "price_id" not in record  # the markup is the reseller's secret
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        balances = dict(
            db.execute(
                "SELECT id, balance_nanos FROM accounts WHERE id IN (?, ?, ?)",
                [f"customer:{child}", f"reseller:{parent}", f"customer:{parent}"],
            )
        )
    assert balances[f"reseller:{parent}"] == markup
    assert balances[f"customer:{child}"] == 10 * 10**9 - base - markup
    assert balances[f"customer:{parent}"] == 90 * 10**9  # the reseller's own credit paid only the transfer


def test_a_client_that_leaves_a_non_streamed_request_stops_it_and_releases_its_hold(gateway, fake_openai):
    key = new_key(gateway, "meter-leave")
    fake_openai.enqueue(Script(text="too late", delay_s=3))  # the upstream would answer after 3 s
    body = {"model": "luxury", "messages": USER, "max_tokens": 10}
    left = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=0.3)
    rows: list[tuple] = []
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
        while not rows and time.monotonic() - left < 2.5:  # settled before the upstream's answer was due
            rows = db.execute(
                "SELECT status, usage_source, input_tokens, output_tokens FROM requests WHERE org_id = ?", [org]
            ).fetchall()
            time.sleep(0.02)
        balance, held = db.execute("SELECT balance_nanos, held_nanos FROM accounts WHERE id = ?", [f"customer:{org}"]).fetchone()
    # No answer came, so no deployment is known to have served it: nothing is charged.
    assert (rows, balance, held) == ([("cancelled", "none", 0, 0)], 100 * 10**9, 0)
