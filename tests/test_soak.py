"""Fault soak: the primary deployment fails 30% of its calls in mixed ways (5xx, 429, resets,
timeouts, malformed JSON), a healthy fallback stands behind it; every request gets exactly one
terminal answer, at least 99.9% succeed, and none takes more than 3 upstream attempts."""

from __future__ import annotations

import asyncio
import random

import httpx

from tests.fakes.script import Script

REQUESTS = 400
CONCURRENCY = 16


async def one(client: httpx.AsyncClient, key: str, index: int) -> tuple[int, int, bool]:
    """(status, attempts, complete) for one request, streamed or not."""
    body = {"model": "soak", "messages": [{"role": "user", "content": f"request {index}"}]}
    headers = {"authorization": f"Bearer {key}"}
    if index % 2:
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as response:
            text = (await response.aread()).decode()
            complete = text.rstrip().endswith("data: [DONE]") and '"finish_reason":"stop"' in text
            return response.status_code, int(response.headers.get("x-emporion-attempts", 0)), complete
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    complete = response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    return response.status_code, int(response.headers.get("x-emporion-attempts", 0)), complete


def test_fault_soak_every_request_answered_once(gateway, fake_openai, fake_anthropic):
    fake_openai.scripts.clear()
    fake_anthropic.scripts.clear()
    fake_openai.chaos = [
        Script(status=500),
        Script(status=502),
        Script(status=503),
        Script(status=429, headers={"retry-after": "0"}),
        Script(reset_after_chunks=0),
        Script(delay_s=1.5),  # past the soak upstream's 1 s timeout
        Script(raw_body=b'{"choices": [', status=200),
    ]
    fake_openai.chaos_rate = 0.3
    random.seed(20261122)

    async def run():
        limit = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:

            async def bounded(i):
                async with limit:
                    return await one(client, gateway.key, i)

            return await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))

    try:
        results = asyncio.run(run())
    finally:
        fake_openai.chaos, fake_openai.chaos_rate = [], 0.0
    assert len(results) == REQUESTS  # one terminal answer each: no hang, no duplicate
    succeeded = sum(1 for status, _, complete in results if status == 200 and complete)
    assert succeeded >= 0.999 * REQUESTS, [r for r in results if r[0] != 200 or not r[2]][:5]
    attempts = [a for _, a, _ in results]
    assert max(attempts) <= 3 and min(attempts) >= 1
    assert sum(1 for a in attempts if a > 1) > REQUESTS * 0.1  # the faults really happened
