"""One conformance suite for every adapter, each against a fake upstream speaking its real wire
format over a real socket, with the official openai SDK as the client of Emporion."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.fakes.script import Script


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    """The gateway in this process with the local engine off: the adapters need no local model."""
    return remote_gateway


ADAPTERS = ["openai_compat", "anthropic", "gemini"]
FAKES = {"openai_compat": "fake_openai", "anthropic": "fake_anthropic", "gemini": "fake_gemini"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(params=ADAPTERS)
def adapter(request, gateway):
    fake = request.getfixturevalue(FAKES[request.param])
    fake.scripts.clear()
    return request.param, f"conf-{request.param}", fake


def sent(fake) -> dict:
    return fake.received[-1]


def test_plain_completion_and_usage(gateway, adapter):
    name, model, fake = adapter
    fake.enqueue(Script(text="Paris is the capital", prompt_tokens=11, cached_tokens=4))
    completion = gateway.client().chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
        max_tokens=50,
        temperature=0.3,
        stop=["\n\n"],
    )
    assert completion.choices[0].message.content == "Paris is the capital"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == model
    assert completion.usage.prompt_tokens == 11 and completion.usage.prompt_tokens_details.cached_tokens == 4
    assert completion.usage.completion_tokens == 4
    body = sent(fake)
    if name == "anthropic":
        assert body["model"] == "claude-fake-1" and body["system"] == [{"type": "text", "text": "Be brief."}]
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]
        assert body["max_tokens"] == 50 and body["stop_sequences"] == ["\n\n"] and body["temperature"] == 0.3
        assert fake.headers_seen[-1]["x-api-key"] == "sk-upstream-secret"
        assert fake.headers_seen[-1]["anthropic-version"] == "2023-06-01"
    elif name == "gemini":
        assert fake.paths[-1] == "/v1beta/models/gemini-fake-1:generateContent"
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Capital of France?"}]}]
        assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50, "stopSequences": ["\n\n"]}
        assert fake.headers_seen[-1]["x-goog-api-key"] == "sk-upstream-secret"
    else:
        assert body["model"] == "conformance-model" and body["messages"][0]["role"] == "system"


def test_streamed_completion_and_usage(gateway, adapter):
    name, model, fake = adapter
    fake.enqueue(Script(text="one two three four five", prompt_tokens=9))
    chunks = list(
        gateway.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "count"}], stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four five"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 9
    if name == "gemini":
        assert fake.paths[-1] == "/v1beta/models/gemini-fake-1:streamGenerateContent?alt=sse"


def test_tool_call_non_streamed(gateway, adapter):
    name, model, fake = adapter
    fake.enqueue(Script(text="", tool_calls=[("get_weather", {"city": "Paris"})], finish_reason="tool_calls"))
    completion = gateway.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    body = sent(fake)
    if name == "anthropic":
        assert body["tools"][0]["input_schema"]["required"] == ["city"] and body["tool_choice"] == {"type": "any"}
    elif name == "gemini":
        assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_tool_call_streamed(gateway, adapter):
    name, model, fake = adapter
    fake.enqueue(
        Script(
            text="", tool_calls=[("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})], finish_reason="tool_calls"
        )
    )
    chunks = list(
        gateway.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True
        )
    )
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta_call.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = entry["id"] or delta_call.id
            if delta_call.function and delta_call.function.name:
                entry["name"] = delta_call.function.name
            if delta_call.function and delta_call.function.arguments:
                entry["arguments"] += delta_call.function.arguments
    assert sorted(calls) == [0, 1]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert all(calls[i]["name"] == "get_weather" and calls[i]["id"] for i in (0, 1))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_result_round_trip(gateway, adapter):
    """The second half of an agent loop: the tool's result goes back in the upstream's own form."""
    name, model, fake = adapter
    fake.enqueue(Script(text="It is sunny in Paris."))
    completion = gateway.client().chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert completion.choices[0].message.content == "It is sunny in Paris."
    body = sent(fake)
    if name == "anthropic":
        assert body["messages"][1] == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
        }
        assert body["messages"][2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": '{"sky": "sunny"}'}],
        }
    elif name == "gemini":
        assert body["contents"][1] == {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        }
        assert body["contents"][2] == {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}],
        }
    else:
        assert body["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}


@pytest.mark.parametrize(
    "script, status",
    [(Script(status=500), 502), (Script(status=429, headers={"retry-after": "30"}), 429), (Script(status=400), 400)],
)
def test_error_mapping(gateway, adapter, script, status):
    name, model, fake = adapter
    fake.enqueue(script, script)
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert set(info.value.body) >= {"message", "type", "code"}
    fake.scripts.clear()
    gateway.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])  # resets the breaker


def test_cancel_mid_stream_closes_the_upstream_stream(gateway, adapter):
    name, model, fake = adapter
    fake.enqueue(Script(text=" ".join(f"w{i}" for i in range(200)), chunk_delay_s=0.05))
    before = fake.cancelled
    stream = gateway.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}], stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while fake.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == before + 1


@pytest.mark.parametrize("name", ["anthropic", "gemini"])
def test_images_are_translated(gateway, request, name):
    fake = request.getfixturevalue(FAKES[name])
    fake.scripts.clear()
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    gateway.client().chat.completions.create(
        model=f"conf-{name}",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                ],
            }
        ],
    )
    body = sent(fake)
    if name == "anthropic":
        assert body["messages"][0]["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": pixel},
        }
    else:
        assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": pixel}}


def test_stream_silent_past_the_timeout_falls_back(gateway, fake_openai, fake_anthropic):
    """The soak upstream allows 1 s of silence: a stream that stalls before its first token is
    abandoned for the fallback deployment."""
    fake_openai.scripts.clear()
    fake_anthropic.scripts.clear()
    fake_openai.enqueue(Script(text="too slow", chunk_delay_s=1.5), Script(text="too slow", chunk_delay_s=1.5))
    fake_anthropic.enqueue(Script(text="on time"))
    stream = gateway.client().chat.completions.create(model="soak", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "on time"


@pytest.mark.parametrize("streamed", [False, True])
def test_response_format_on_anthropic_is_answered_through_one_forced_tool(gateway, fake_anthropic, streamed):
    from emporion.formats.anthropic import ANSWER_TOOL

    fake_anthropic.scripts.clear()
    fake_anthropic.enqueue(
        Script(text="", tool_calls=[(ANSWER_TOOL, {"city": "Lyon", "sunny": True})], finish_reason="tool_calls")
    )
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}}, "required": ["city"]}
    ask = {
        "model": "conf-anthropic",
        "messages": [{"role": "user", "content": "Weather?"}],
        "max_tokens": 50,
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    }
    if streamed:
        chunks = list(gateway.client().chat.completions.create(stream=True, **ask))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    else:
        completion = gateway.client().chat.completions.create(**ask)
        text, finish = completion.choices[0].message.content, [completion.choices[0].finish_reason]
        assert completion.choices[0].message.tool_calls is None
    assert json.loads(text) == {"city": "Lyon", "sunny": True} and finish == ["stop"]
    sent = fake_anthropic.received[-1]
    assert sent["tools"] == [
        {"name": ANSWER_TOOL, "description": "Give your answer as this tool's input.", "input_schema": schema}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}


def test_response_format_with_tools_on_anthropic_is_a_400(gateway, fake_anthropic):
    calls = fake_anthropic.count()
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(
            model="conf-anthropic",
            messages=[{"role": "user", "content": "x"}],
            tools=[WEATHER_TOOL],
            response_format={"type": "json_object"},
        )
    assert info.value.body["param"] == "response_format" and fake_anthropic.count() == calls
