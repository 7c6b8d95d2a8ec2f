"""The supervised llama-server engine: batching, bounded queue, disconnects, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MAX_TOKENS, PARALLEL, QUEUE_SIZE, emporion

GEMMA = "gemma-3-270m"


def engine_status(gateway) -> dict:
    return gateway.health()["models"][GEMMA]


def slots_busy(gateway) -> int:
    port = engine_status(gateway)["port"]
    return sum(slot["is_processing"] for slot in httpx.get(f"http://127.0.0.1:{port}/slots", timeout=5).json())


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


async def test_requests_beyond_slots_and_queue_get_503_with_retry_after(gateway):
    client = gateway.aclient()
    total = PARALLEL + QUEUE_SIZE + 4

    async def one(i: int):
        try:
            return await client.completions.create(model=GEMMA, prompt=f"Story {i}:", max_tokens=40, temperature=0.8)
        except openai.APIStatusError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(total)))
    rejected = [r for r in results if isinstance(r, openai.APIStatusError)]
    served = [r for r in results if not isinstance(r, openai.APIStatusError)]
    assert len(served) >= PARALLEL + QUEUE_SIZE
    assert len(rejected) == total - len(served) > 0
    for exc in rejected:
        assert exc.status_code == 503 and exc.code == "engine_overloaded"
        assert int(exc.response.headers["retry-after"]) >= 1
    # the health check answered all along, and nothing is left running
    wait_until(lambda: engine_status(gateway)["running"] == 0 and engine_status(gateway)["queued"] == 0)


def test_health_answers_while_engine_is_busy(gateway):
    async def scenario():
        client = gateway.aclient()
        work = asyncio.gather(
            *(client.completions.create(model=GEMMA, prompt="Tell a long story:", max_tokens=60) for _ in range(PARALLEL))
        )
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as http:
            began = time.monotonic()
            health = (await http.get(f"{gateway.url}/healthz")).json()
            latency = time.monotonic() - began
        await work
        return health, latency

    health, latency = asyncio.run(scenario())
    assert health["models"][GEMMA]["state"] == "ready"
    assert latency < 1.0  # the event loop never waits on generation


def test_client_disconnect_mid_stream_stops_generation(gateway):
    stream = gateway.client().completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=2000, stream=True)
    received = 0
    for _chunk in stream:
        received += 1
        if received == 3:
            break
    stream.close()
    wait_until(lambda: slots_busy(gateway) == 0, timeout_s=10)
    assert engine_status(gateway)["running"] == 0


def test_engine_restarts_after_it_dies(gateway):
    before = engine_status(gateway)
    os.kill(before["pid"], signal.SIGKILL)
    wait_until(lambda: engine_status(gateway)["restarts"] == before["restarts"] + 1, timeout_s=120)
    after = engine_status(gateway)
    assert after["state"] == "ready" and after["pid"] != before["pid"]
    completion = gateway.client().completions.create(model=GEMMA, prompt="Hello", max_tokens=3)
    assert completion.usage.completion_tokens <= 3


def test_request_while_engine_restarts_is_503_not_500(gateway):
    os.kill(engine_status(gateway)["pid"], signal.SIGKILL)
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().completions.create(model=GEMMA, prompt="Hello", max_tokens=3)
    assert info.value.status_code == 503
    wait_until(lambda: engine_status(gateway)["state"] == "ready", timeout_s=120)


def test_operator_added_gguf_is_served_by_its_own_engine(gateway):
    from tests.conftest import ADDED_MODEL

    health = gateway.health()["models"]
    assert health[ADDED_MODEL]["state"] == "ready" and health[ADDED_MODEL]["port"] != health[GEMMA]["port"]
    model = gateway.client().models.retrieve(ADDED_MODEL).model_dump()
    assert model["license"] == "gemma" and model["release"] == "open-weights" and model["owned_by"] == "operator"
    assert model["context_length"] == 8192  # the file says 32768; each engine slot holds 8192
    response = gateway.client().with_raw_response.chat.completions.create(
        model=ADDED_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert response.parse().usage.completion_tokens <= 4
    assert response.headers["x-emporion-upstream"] == f"local:{ADDED_MODEL}"


# --- hardening: clients that leave, inputs the model cannot read, generations without max_tokens --


def new_key(gateway, org: str) -> str:
    return emporion("keys", "create", "--org", org, data_dir=gateway.data_dir).stdout.strip()


def records_of(gateway, key: str) -> list[tuple]:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
        return db.execute(
            "SELECT status, usage_source, input_tokens, output_tokens, finish_reason FROM requests WHERE org_id = ? ORDER BY created_at",
            [org],
        ).fetchall()


def test_a_client_leaving_a_non_streamed_request_stops_the_generation_and_pays_for_what_was_made(gateway):
    key = new_key(gateway, "impatient")
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=httpx.Timeout(30, read=2.0)
    ) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                "/v1/completions", json={"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0.9}
            )
    wait_until(lambda: slots_busy(gateway) == 0, timeout_s=10)  # not the minute 4,000 tokens would take
    wait_until(lambda: len(records_of(gateway, key)) == 1, timeout_s=10)
    [(status, source, prompt_tokens, output_tokens, _)] = records_of(gateway, key)
    assert (status, source) == ("cancelled", "counted")
    assert (
        prompt_tokens
        == gateway.client().completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=1).usage.prompt_tokens
    )
    assert 0 < output_tokens < 4000


def test_a_non_streamed_local_answer_is_whole(gateway):
    """Emporion streams from the engine itself and folds the answer back: the client cannot tell."""
    completion = gateway.client().completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=8, seed=3, temperature=0
    )
    streamed = gateway.client().completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=8, seed=3, temperature=0, stream=True
    )
    assert completion.choices[0].text == "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 8
    chat = gateway.client().chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content and chat.usage.prompt_tokens > 0


def test_images_for_the_text_only_local_model_are_a_400_and_take_the_model_away_from_nobody(gateway):
    key = new_key(gateway, "shutterbug")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    for _ in range(7):  # more than the breaker's threshold (5)
        with pytest.raises(openai.BadRequestError) as refused:
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).chat.completions.create(
                model=GEMMA,
                messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
                max_tokens=5,
            )
        assert refused.value.code == "unsupported_modality"
    assert records_of(gateway, key) == []  # refused before anything was held or sent
    assert (
        gateway.client().chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=3).choices
    )


def test_a_local_generation_without_max_tokens_stops_at_the_configured_default(gateway):
    completion = gateway.client().completions.create(
        model=GEMMA, prompt="A very long story begins. Chapter one:", temperature=0.9, seed=1
    )
    assert completion.usage.completion_tokens <= DEFAULT_MAX_TOKENS
    if completion.usage.completion_tokens == DEFAULT_MAX_TOKENS:
        assert completion.choices[0].finish_reason == "length"


def test_an_aborted_stream_bills_its_prompt_at_the_engines_real_token_count(gateway):
    key = new_key(gateway, "quitter")
    messages = [
        {"role": "user", "content": "Tell me everything about the history of the city of Lyon, from the Romans to today."}
    ]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(model=GEMMA, messages=messages, max_tokens=2000, stream=True)
    for received, _chunk in enumerate(stream):
        if received == 3:
            break
    stream.close()
    wait_until(lambda: len(records_of(gateway, key)) == 1, timeout_s=10)
    [(status, source, prompt_tokens, output_tokens, _)] = records_of(gateway, key)
    assert (status, source) == ("cancelled", "counted") and output_tokens >= 2
    real = client.chat.completions.create(model=GEMMA, messages=messages, max_tokens=1).usage.prompt_tokens
    assert prompt_tokens == real  # not the characters / 4 estimate


def test_local_only_policy_routes_to_the_operators_own_machines(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.bank_key, max_retries=0)
    hybrid = client.with_raw_response.chat.completions.create(
        model="hybrid", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert (
        hybrid.headers["x-emporion-provider"] == "emporion-local"
        and hybrid.headers["x-emporion-upstream"] == "local:gemma-3-270m"
    )
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "policy_forbids_model" and "local-only" in info.value.message
    models = {m.id: m.model_dump() for m in gateway.client().models.list().data}
    assert "tools" in models["gemma-3-270m"]["supported_parameters"]  # called by grammar (tests/test_local_tools.py)
