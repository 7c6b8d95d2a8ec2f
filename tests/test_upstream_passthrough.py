"""A config-file upstream speaking OpenAI's wire format, reached through Emporion with the SDK."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import Script


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    """The gateway in this process with the local engine off: the adapters need no local model."""
    return remote_gateway


def test_chat_passes_through_with_upstream_model_and_key(gateway, fake_openai):
    fake_openai.enqueue(Script(text="Bonjour tout le monde", prompt_tokens=11, cached_tokens=4))
    response = gateway.client().with_raw_response.chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "developer", "content": "be nice"}, {"role": "user", "content": "hi"}],
        max_tokens=20,
        temperature=0.5,
        extra_body={"reasoning_effort": "low"},
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "Bonjour tout le monde"
    assert completion.model == "fake-gpt"
    assert completion.usage.prompt_tokens == 11 and completion.usage.prompt_tokens_details.cached_tokens == 4
    assert completion.usage.completion_tokens == 4
    sent = fake_openai.received[-1]
    assert sent["model"] == "gpt-fake-upstream" and sent["reasoning_effort"] == "low"
    assert sent["messages"][0]["role"] == "developer"  # an OpenAI upstream knows the developer role
    assert fake_openai.headers_seen[-1]["authorization"] == "Bearer sk-upstream-secret"
    assert response.headers["x-emporion-upstream"] == "fake"
    assert response.headers["x-emporion-release"] == "closed"


def test_stream_passes_through_chunks_and_usage(gateway, fake_openai):
    fake_openai.enqueue(Script(text="one two three four"))
    chunks = list(
        gateway.client().chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "count"}], stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert chunks[-1].usage.completion_tokens == 4
    assert fake_openai.received[-1]["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_has_no_usage_chunk(gateway, fake_openai):
    fake_openai.enqueue(Script(text="a b"))
    chunks = list(
        gateway.client().chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    # the upstream was still asked for usage, which Emporion needs for itself
    assert fake_openai.received[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "script, status, error_class, attempts",
    [
        (Script(status=500), 502, openai.InternalServerError, 2),
        (Script(status=503), 503, openai.InternalServerError, 2),
        (Script(status=429, headers={"retry-after": "7"}), 429, openai.RateLimitError, 1),
        (Script(status=401), 502, openai.InternalServerError, 1),
        (Script(raw_body=b"{not json", status=200), 502, openai.InternalServerError, 2),
        (
            Script(
                status=400,
                error={"error": {"message": "bad thing", "type": "invalid_request_error", "param": "tools", "code": None}},
            ),
            400,
            openai.BadRequestError,
            1,
        ),
    ],
)
def test_upstream_failures_map_to_clear_errors(gateway, fake_openai, script, status, error_class, attempts):
    """Retryable failures are retried once on the model's only deployment, then reported; a
    Retry-After longer than the backoff cap is passed to the client rather than waited out."""
    fake_openai.enqueue(*[script] * 3)
    before = fake_openai.count()
    with pytest.raises(error_class) as info:
        gateway.client().chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert fake_openai.count() - before == attempts
    assert "sk-upstream-secret" not in str(info.value.body)
    if status == 429:
        assert info.value.response.headers["retry-after"] == "7"
    fake_openai.scripts.clear()
    # one success resets the deployment's count of consecutive failures (its circuit breaker)
    gateway.client().chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}])


def test_one_failure_is_retried_transparently(gateway, fake_openai):
    fake_openai.enqueue(Script(status=502), Script(text="second time lucky"))
    response = gateway.client().with_raw_response.chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "x"}]
    )
    assert response.parse().choices[0].message.content == "second time lucky"
    assert response.headers["x-emporion-attempts"] == "2"


def test_stream_cut_by_upstream_ends_with_error_event(gateway, fake_openai):
    fake_openai.enqueue(Script(text="one two three four five", cut_after_chunks=2))
    stream = gateway.client().chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "one two"
