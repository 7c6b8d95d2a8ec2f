"""``n`` choices on every model: each choice its own upstream request (n is not sent on), choices
indexed in OpenAI's order, usage summed and paid for, the hold covering all n; streamed too."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.script import Script

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def remote(remote_gateway, fake_openai):
    fake_openai.scripts.clear()
    yield remote_gateway
    fake_openai.scripts.clear()


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def test_n_choices_are_n_upstream_requests_with_their_usage_summed(remote, fake_openai):
    fake_openai.enqueue(*(Script(text=f"answer {i}", prompt_tokens=10) for i in range(3)))
    before = fake_openai.count()
    raw = client(remote).chat.completions.with_raw_response.create(model="fake-gpt", messages=USER, n=3, seed=7)
    completion = raw.parse()
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert sorted(choice.message.content for choice in completion.choices) == ["answer 0", "answer 1", "answer 2"]
    assert completion.usage.prompt_tokens == 30 and completion.usage.completion_tokens == 6
    sent = fake_openai.received[before:]
    assert len(sent) == 3 and all("n" not in body for body in sent)
    assert sorted(body["seed"] for body in sent) == [7, 8, 9]  # each choice its own seed: n different answers
    cost = float(raw.headers["x-emporion-cost"])
    assert cost > 0 and cost == pytest.approx(completion.usage.model_extra["cost"])


def test_n_streamed_choices_come_interleaved_each_with_its_index(remote, fake_openai):
    fake_openai.enqueue(Script(text="first one"), Script(text="second one"))
    stream = client(remote).chat.completions.create(
        model="fake-gpt", messages=USER, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts.values()) == ["first one", "second one"] and set(texts) == {0, 1}
    assert chunks[-1].usage.completion_tokens == 4


def test_n_completions_of_several_prompts_come_prompt_by_prompt(remote, fake_openai):
    fake_openai.enqueue(*(Script(text=f"c{i}") for i in range(4)))
    completion = client(remote).completions.create(model="fake-gpt", prompt=["one", "two"], n=2)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    prompts = [body["prompt"] for body in fake_openai.received[-4:]]
    assert sorted(prompts) == ["one", "one", "two", "two"]


def test_the_hold_covers_every_choice(remote, fake_openai):
    """A model whose output costs $0.001 a token: one choice of 20,000 tokens ($20) fits the
    $100 free credit, eight ($160) do not."""
    api = client(remote)
    fake_openai.enqueue(Script(text="fits"))
    assert api.chat.completions.create(model="luxury", messages=USER, max_tokens=20_000, n=1).choices[0].message.content == "fits"
    before = fake_openai.count()
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(model="luxury", messages=USER, max_tokens=20_000, n=8)
    assert refused.value.status_code == 402 and fake_openai.count() == before


def test_n_beyond_128_is_a_400(remote):
    with pytest.raises(openai.BadRequestError) as refused:
        client(remote).chat.completions.create(model="fake-gpt", messages=USER, n=129)
    assert refused.value.body["param"] == "n"


def test_n_choices_from_the_local_model(gateway):
    completion = client(gateway).chat.completions.create(model="gemma-3-270m", messages=USER, n=2, max_tokens=4)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all(choice.message.content is not None for choice in completion.choices)
    assert 0 < completion.usage.completion_tokens <= 8
