"""Anthropic's Messages API on Emporion, driven by the official anthropic SDK, served by the local
model and by fake OpenAI and Anthropic upstreams."""

from __future__ import annotations

import anthropic
import pytest

from tests.fakes.script import Script

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(gateway, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key or gateway.key, max_retries=0)


def test_messages_served_by_the_local_model(gateway):
    message = client(gateway).messages.create(
        model="gemma-3-270m", max_tokens=8, system="Answer briefly.", messages=[{"role": "user", "content": "Say hello."}]
    )
    assert message.type == "message" and message.role == "assistant" and message.model == "gemma-3-270m"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8


def test_streamed_messages_through_an_openai_upstream(gateway, fake_openai):
    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(text="streaming through Emporion", prompt_tokens=12))
    with client(gateway).messages.stream(model="fake-gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streaming through Emporion"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3 and final.usage.input_tokens == 12


@pytest.mark.parametrize("model, fake_name", [("conf-openai_compat", "fake_openai"), ("conf-anthropic", "fake_anthropic")])
@pytest.mark.parametrize("streamed", [False, True])
def test_agent_loop_tool_use_then_answer(gateway, request, model, fake_name, streamed):
    fake = request.getfixturevalue(fake_name)
    fake.scripts.clear()
    fake.enqueue(
        Script(text="", tool_calls=[("get_weather", {"city": "Lyon"})], finish_reason="tool_calls"), Script(text="Sunny in Lyon.")
    )
    api = client(gateway)
    history = [{"role": "user", "content": "Weather in Lyon?"}]

    def ask():
        if not streamed:
            return api.messages.create(model=model, max_tokens=100, tools=[WEATHER], messages=history)
        with api.messages.stream(model=model, max_tokens=100, tools=[WEATHER], messages=history) as stream:
            return stream.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Lyon"}
    history += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 24 C"}]},
    ]
    second = ask()
    assert second.stop_reason == "end_turn" and second.content[0].text == "Sunny in Lyon."
    if fake_name == "fake_openai":
        assert fake.received[-1]["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 24 C"}
    else:
        assert fake.received[-1]["messages"][-1]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": "sunny, 24 C",
        }


def test_tool_use_stream_ends_with_tool_use_even_if_upstream_says_stop(gateway, fake_openai):
    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(text="", tool_calls=[("get_weather", {"city": "Nice"})], finish_reason="stop"))
    with client(gateway).messages.stream(
        model="conf-openai_compat", max_tokens=50, tools=[WEATHER], messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"


def test_errors_use_anthropics_envelope(gateway):
    with pytest.raises(anthropic.NotFoundError) as info:
        client(gateway).messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        client(gateway, key="emp-wrong").messages.create(
            model="gemma-3-270m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gateway).messages.create(model="gemma-3-270m", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_count_tokens_on_the_local_model_is_the_prompt_the_engine_bills(gateway):
    api = client(gateway)
    ask = {"model": "gemma-3-270m", "system": "Answer briefly.", "messages": [{"role": "user", "content": "Say hello."}]}
    counted = api.messages.with_raw_response.count_tokens(**ask)
    assert counted.headers["x-emporion-token-count"] == "exact"
    usage = api.messages.create(max_tokens=4, **ask).usage
    # Anthropic's input_tokens leaves out what was read from (or written to) the prompt cache
    assert counted.parse().input_tokens == _prompt(usage) > 0


def _prompt(usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def test_count_tokens_with_tools_on_the_local_model_counts_what_the_engine_is_sent(gateway):
    api = client(gateway)
    ask = {
        "model": "gemma-3-270m",
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Lyon?"}],
    }
    plain = api.messages.count_tokens(model="gemma-3-270m", messages=ask["messages"]).input_tokens
    with_tools = api.messages.count_tokens(**ask).input_tokens
    assert with_tools == _prompt(api.messages.create(max_tokens=40, **ask).usage) > plain


@pytest.mark.parametrize("model, fake_name", [("conf-anthropic", "fake_anthropic"), ("conf-gemini", "fake_gemini")])
def test_count_tokens_asks_an_upstream_that_can_count(gateway, request, model, fake_name):
    fake = request.getfixturevalue(fake_name)
    fake.scripts.clear()
    fake.enqueue(Script(prompt_tokens=321))
    counted = client(gateway).messages.with_raw_response.count_tokens(
        model=model, system="Be brief.", tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Lyon?"}]
    )
    assert counted.parse().input_tokens == 321 and counted.headers["x-emporion-token-count"] == "exact"
    sent = fake.received[-1]
    if fake_name == "fake_anthropic":
        assert fake.paths[-1] == "/v1/messages/count_tokens"
        assert sent["model"] == "claude-fake-1" and sent["tools"][0]["name"] == "get_weather"
        assert "max_tokens" not in sent and "stream" not in sent
    else:
        assert fake.paths[-1] == "/v1beta/models/gemini-fake-1:countTokens"
        generation = sent["generateContentRequest"]
        assert generation["model"] == "models/gemini-fake-1"
        assert generation["contents"][0]["parts"][0]["text"] == "Weather in Lyon?"


def test_count_tokens_over_an_openai_upstream_is_an_estimate_flagged_as_one(gateway, fake_openai):
    calls = fake_openai.count()
    counted = client(gateway).messages.with_raw_response.count_tokens(
        model="conf-openai_compat", messages=[{"role": "user", "content": "one two three four"}]
    )
    assert counted.headers["x-emporion-token-count"] == "estimate"
    body = counted.http_response.json()
    # cl100k: "user" 1 + "one two three four" 4, 3 framing tokens a message, 3 to prime the reply
    assert body == {"input_tokens": 11, "estimate": True}
    assert fake_openai.count() == calls  # nothing was generated or sent upstream


def test_count_tokens_errors_use_anthropics_envelope(gateway):
    api = client(gateway)
    with pytest.raises(anthropic.NotFoundError) as info:
        api.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        api.messages.count_tokens(model="gemma-3-270m", messages=[])
    assert info.value.body["error"]["type"] == "invalid_request_error"
