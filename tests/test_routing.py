"""Routing through the gateway (in this process, the local engine off: ``remote_gateway``):
fallbacks, retries, splits, preferences, policies, breakers. Routing to the local engine is in
test_engine.py."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from emporion.core.requests import ChatCompletionRequest
from emporion.core.usage import Usage
from emporion.routing.affinity import AffinityBook, Conversation
from tests.fakes.script import Script

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


@pytest.fixture(autouse=True)
def clean_fakes(gateway, fake_openai, fake_anthropic, fake_gemini):
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.scripts.clear()
    yield
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.scripts.clear()
    # A success resets the primary's count of consecutive failures, so that one test's failures
    # do not open its circuit breaker for the next (the breaker has a test of its own).
    call(gateway, model="assistant", provider={"only": ["fake"]})


def call(gateway, key: str | None = None, **body):
    client = gateway.client() if key is None else openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    extra = {k: body.pop(k) for k in ("provider", "models") if k in body}
    response = client.with_raw_response.chat.completions.create(messages=USER, extra_body=extra or None, **body)
    return response.parse(), response.headers


def test_failed_primary_falls_back_to_the_next_deployment(gateway, fake_openai, fake_anthropic):
    fake_openai.enqueue(Script(status=500), Script(status=503))
    fake_anthropic.enqueue(Script(text="from the fallback"))
    completion, headers = call(gateway, model="assistant")
    assert completion.choices[0].message.content == "from the fallback"
    assert headers["x-emporion-upstream"] == "anthropic-fake" and headers["x-emporion-attempts"] == "3"
    assert fake_openai.received[-1]["model"] == "primary-model" and fake_anthropic.received[-1]["model"] == "claude-fallback"


def test_non_retryable_failure_moves_on_at_once(gateway, fake_openai, fake_anthropic):
    fake_openai.enqueue(Script(status=401))
    fake_anthropic.enqueue(Script(text="fallback"))
    _, headers = call(gateway, model="assistant")
    assert headers["x-emporion-attempts"] == "2"


def test_models_list_falls_back_to_another_model(gateway, fake_openai, fake_anthropic):
    fake_openai.enqueue(Script(status=500), Script(status=500))
    fake_anthropic.enqueue(Script(text="another model"))
    completion, headers = call(gateway, model="fake-gpt", models=["fake-gpt", "conf-anthropic"])
    assert completion.model == "conf-anthropic" and headers["x-emporion-model"] == "conf-anthropic"


def test_retry_after_is_honoured_before_retrying(gateway, fake_openai):
    fake_openai.enqueue(Script(status=429, headers={"retry-after": "1"}), Script(text="after waiting"))
    began = time.monotonic()
    completion, headers = call(gateway, model="fake-gpt")
    assert completion.choices[0].message.content == "after waiting" and headers["x-emporion-attempts"] == "2"
    assert time.monotonic() - began >= 1.0


def test_stream_failing_before_output_falls_back(gateway, fake_openai, fake_anthropic):
    fake_openai.enqueue(Script(status=502), Script(reset_after_chunks=0))
    fake_anthropic.enqueue(Script(text="clean fallback stream"))
    stream = gateway.client().chat.completions.create(model="assistant", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "clean fallback stream"


def test_stream_failing_after_output_ends_with_error_and_no_splice(gateway, fake_openai, fake_anthropic):
    fake_openai.enqueue(Script(text="one two three four", reset_after_chunks=2))
    anthropic_calls = fake_anthropic.count()
    raw = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gateway.key}"},
        json={"model": "assistant", "messages": USER, "stream": True},
        timeout=30,
    ).text
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert '"finish_reason":"error"' in events[-2] and events[-1].startswith('{"error"')
    assert "[DONE]" not in raw
    assert fake_anthropic.count() == anthropic_calls  # the fallback was never asked


def test_weighted_split_uses_both_and_is_sticky_per_user(gateway, fake_openai, fake_gemini):
    served = [call(gateway, model="split", user=f"user-{i}")[1]["x-emporion-upstream"] for i in range(30)]
    assert set(served) == {"fake", "gemini-fake"}
    same = {call(gateway, model="split", user="alice")[1]["x-emporion-upstream"] for _ in range(8)}
    assert len(same) == 1


@pytest.mark.parametrize(
    "provider, upstream",
    [
        ({"order": ["anthropic-fake"]}, "anthropic-fake"),
        ({"ignore": ["fake"]}, "anthropic-fake"),
        ({"only": ["fake"]}, "fake"),
    ],
)
def test_provider_preferences(gateway, provider, upstream):
    assert call(gateway, model="assistant", provider=provider)[1]["x-emporion-upstream"] == upstream


def test_provider_preferences_that_match_nothing_are_404(gateway):
    with pytest.raises(openai.NotFoundError) as info:
        call(gateway, model="assistant", provider={"only": ["gemini-fake"]})
    assert info.value.code == "no_endpoints"


def test_data_collection_deny_keeps_only_hosts_that_keep_nothing(gateway):
    served = {
        call(gateway, model="split", user=f"u{i}", provider={"data_collection": "deny"})[1]["x-emporion-upstream"]
        for i in range(6)
    }
    assert served == {"gemini-fake"}


def test_no_fallbacks_when_asked(gateway, fake_openai):
    fake_openai.enqueue(Script(status=500), Script(status=500))
    with pytest.raises(openai.InternalServerError):
        call(gateway, model="assistant", provider={"allow_fallbacks": False})


def test_floor_suffix_and_max_price_pick_the_cheapest(gateway):
    assert call(gateway, model="priced")[1]["x-emporion-upstream"] == "fake"
    assert call(gateway, model="priced:floor")[1]["x-emporion-upstream"] == "gemini-fake"
    assert call(gateway, model="priced", provider={"max_price": {"prompt": 5}})[1]["x-emporion-upstream"] == "gemini-fake"
    assert call(gateway, model="priced:nitro")[0].model == "priced"


def test_unsupported_parameter_is_a_clear_400(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        call(gateway, model="conf-anthropic", seed=1)
    assert info.value.code == "unsupported_parameter" and info.value.param == "seed"
    models = {m.id: m.model_dump() for m in gateway.client().models.list().data}
    assert "seed" not in models["conf-anthropic"]["supported_parameters"]
    assert "seed" in models["conf-openai_compat"]["supported_parameters"]


def test_circuit_breaker_opens_then_one_probe_closes_it(gateway, fake_openai):
    fake_openai.enqueue(*[Script(status=500)] * 6)
    for _ in range(3):  # two attempts each: six failures, past the threshold of five
        with pytest.raises(openai.InternalServerError):
            call(gateway, model="breaker-test")
    calls = fake_openai.count()
    with pytest.raises(openai.InternalServerError) as info:
        call(gateway, model="breaker-test")
    assert info.value.status_code == 503 and fake_openai.count() == calls  # not even tried
    time.sleep(2.2)  # the cooldown
    completion, _ = call(gateway, model="breaker-test")
    assert completion.choices[0].message.content and fake_openai.count() == calls + 1


# --- prompt-cache affinity (routing/affinity.py) ----------------------------------------------------

EPHEMERAL = {"type": "ephemeral"}


def conversation(*turns: str, org: str = "org_1", system: str = "You help.") -> Conversation:
    """A chat request of alternating user and assistant turns, its last marked for caching."""
    messages: list[dict] = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    messages[-1] = {**messages[-1], "content": [{"type": "text", "text": turns[-1], "cache_control": EPHEMERAL}]}
    ask = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    return Conversation(org, ask, ask.model_dump(exclude_none=True))


def plain(*turns: str) -> Conversation:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
    ask = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    return Conversation("org_1", ask, ask.model_dump(exclude_none=True))


def test_affinity_follows_a_conversation_whose_breakpoint_moves_on_until_its_time_is_up():
    now = [1000.0]
    book = AffinityBook(ttl_s=300, clock=lambda: now[0])
    first = conversation("Read the repo.")
    assert first.cacheable and book.pinned(first) is None
    book.remember(first, "anthropic/claude-b")
    second = conversation("Read the repo.", "Done.", "Now fix the bug.")  # the breakpoint moved to the newest message
    now[0] += 299
    assert book.pinned(second) == "anthropic/claude-b"
    book.remember(second, "anthropic/claude-b")  # each turn renews it
    third = conversation("Read the repo.", "Done.", "Now fix the bug.", "Fixed.", "Thanks.")
    now[0] += 299
    assert book.pinned(third) == "anthropic/claude-b"
    now[0] += 2  # 301 s after its last turn
    assert book.pinned(third) is None and len(book) == 0  # forgotten (expired entries are dropped when met)


def test_affinity_is_per_organization_and_not_for_a_shared_system_prompt():
    book = AffinityBook(ttl_s=300)
    book.remember(conversation("Read the repo."), "x/a")
    assert book.pinned(conversation("Read the repo.", "Done.", "Go on.", org="org_2")) is None
    # another conversation of the same organization with the same (cached) system prompt: the split decides
    assert book.pinned(conversation("Something else entirely.")) is None
    assert conversation("Read the repo.").seed() == conversation("Read the repo.", "Done.", "Go on.").seed()
    assert conversation("Read the repo.").seed() != conversation("Something else entirely.").seed()


def test_a_request_without_caching_is_remembered_only_when_served_from_a_cache():
    book = AffinityBook(ttl_s=300)
    assert not plain("hello").cacheable
    book.remember(plain("hello"), "x/a")
    assert book.pinned(plain("hello", "hi", "more")) is None
    book.remember(plain("hello"), "x/a", Usage(input_tokens=3, cached_input_tokens=1024))  # OpenAI's automatic cache
    assert book.pinned(plain("hello", "hi", "more")) == "x/a"
    assert AffinityBook(ttl_s=0).pinned(plain("hello", "hi", "more")) is None  # [routing] cache_affinity_s = 0: off


def test_the_affinity_book_forgets_the_least_recently_used_beyond_its_size():
    book = AffinityBook(ttl_s=300, max_entries=4)
    for i in range(6):
        book.remember(conversation(f"conversation {i}"), f"x/{i}")
    assert len(book) == 4
    assert book.pinned(conversation("conversation 0", "a", "b")) is None
    assert book.pinned(conversation("conversation 5", "a", "b")) == "x/5"


def test_a_cached_conversation_on_the_openai_api_sticks_to_the_deployment_it_fell_back_to(gateway, fake_openai, fake_anthropic):
    """OpenRouter's convention (cache_control on a content part): after a fallback to Anthropic,
    the conversation's next turn goes to Anthropic again, though the primary answers again; one
    without cache_control goes back to the primary."""
    for cached, second_upstream in ((True, "anthropic-fake"), (False, "fake")):
        marker = {"cache_control": EPHEMERAL} if cached else {}
        system = {"role": "system", "content": [{"type": "text", "text": f"A long manual ({cached}).", **marker}]}
        history = [system, {"role": "user", "content": "Chapter one?"}]
        fake_openai.enqueue(Script(status=500), Script(status=500))
        fake_anthropic.enqueue(Script(text="It begins.", cache_write_tokens=40 if cached else 0))
        first = gateway.client().with_raw_response.chat.completions.create(model="assistant", messages=history)
        assert first.headers["x-emporion-upstream"] == "anthropic-fake"
        history += [
            {"role": "assistant", "content": "It begins."},
            {"role": "user", "content": [{"type": "text", "text": "Chapter two?", **marker}]},
        ]
        second = gateway.client().with_raw_response.chat.completions.create(model="assistant", messages=history)
        assert second.headers["x-emporion-upstream"] == second_upstream
