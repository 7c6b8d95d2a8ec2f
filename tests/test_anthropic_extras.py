"""What Claude Code-style clients need of /v1/messages over any model, and prompt caching from both
APIs: thinking blocks passed through from Anthropic upstreams (never made up elsewhere), usage in
the stream events the anthropic SDK reads, tool-use turns ending with ``tool_use``, cache_control
where the client put it, cache reads and writes at their own prices, and routing that sticks to the
deployment holding a conversation's cache. The official SDKs are the clients; the upstreams are
the fakes, on real sockets."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import uvicorn

from emporion.app import build_app, http_protocol
from emporion.core.usage import Usage, usage_from_openai
from emporion.settings import load_settings
from tests.conftest import Gateway, emporion, free_port, remote_config
from tests.fakes.script import Script

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
THINKING = {"type": "enabled", "budget_tokens": 2048}
SIGNED = {
    "type": "thinking",
    "thinking": "The user wants the weather; I should call the tool.",
    "signature": "EqQBCkYIARgCIkD+sig==",
}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}
PRICES = {"prompt": "0.000003", "completion": "0.000015", "cached_prompt": "0.0000003", "cache_write": "0.00000375"}

EXTRA_CONFIG = f"""
[models."cached-claude"]
upstream = "anthropic-fake"
upstream_model = "claude-cached"
pricing = {{ prompt = "{PRICES["prompt"]}", completion = "{PRICES["completion"]}", cached_prompt = "{PRICES["cached_prompt"]}", cache_write = "{PRICES["cache_write"]}" }}

[models."cached-gpt"]
upstream = "fake"
upstream_model = "gpt-cached"
pricing = {{ prompt = "0.000002", completion = "0.000008", cached_prompt = "0.0000005" }}

[[upstreams]]
name = "claude-a"
adapter = "anthropic"
base_url = "{{anthropic}}/v1"

[[upstreams]]
name = "claude-b"
adapter = "anthropic"
base_url = "{{anthropic}}/v1"

[models."claude-fallback"]
deployments = [{{ upstream = "claude-a", model = "claude-primary" }}, {{ upstream = "claude-b", model = "claude-secondary" }}]

[models."claude-split"]
split = "weighted"
deployments = [{{ upstream = "claude-a", model = "claude-a", weight = 50 }}, {{ upstream = "claude-b", model = "claude-b", weight = 50 }}]
"""


@dataclass
class Extras:
    gateway: Gateway
    app: Any  # the ASGI app in this process: its router's affinity book takes an injected clock

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def key(self) -> str:
        return self.gateway.key


@pytest.fixture(scope="module")
def extras(tmp_path_factory, fake_openai, fake_anthropic, fake_gemini) -> Iterator[Extras]:
    """The gateway of ``remote_gateway`` (the local engine off, in this process) with models of its
    own: cache prices, and two Anthropic deployments of one model, split and in fallback order."""
    data_dir = tmp_path_factory.mktemp("emporion-extras")
    config = remote_config(fake_openai, fake_anthropic, fake_gemini) + EXTRA_CONFIG.replace("{anthropic}", fake_anthropic.url)
    (data_dir / "config.toml").write_text("[engine]\nenabled = false\n\n[embeddings]\nenabled = false\n" + config)
    key = emporion("keys", "create", "--org", "tests", data_dir=data_dir).stdout.strip()
    previous = os.environ.get("FAKE_UPSTREAM_KEY")
    os.environ["FAKE_UPSTREAM_KEY"] = "sk-upstream-secret"
    settings = load_settings(data_dir)
    app = build_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http=http_protocol(settings), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="extras-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process gateway did not start"
        time.sleep(0.05)
    try:
        gateway = Gateway(url=f"http://127.0.0.1:{port}", key=key, data_dir=data_dir, process=None, log=data_dir / "serve.log")
        yield Extras(gateway, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if previous is None:
            os.environ.pop("FAKE_UPSTREAM_KEY", None)
        else:
            os.environ["FAKE_UPSTREAM_KEY"] = previous


@pytest.fixture(autouse=True)
def clean_fakes(fake_openai, fake_anthropic, fake_gemini):
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.scripts.clear()
    yield
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.scripts.clear()


def claude(extras: Extras) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=extras.url, api_key=extras.key, max_retries=0)


def ask(extras: Extras, streamed: bool, **body: Any) -> anthropic.types.Message:
    if not streamed:
        return claude(extras).messages.create(**body)
    with claude(extras).messages.stream(**body) as stream:
        return stream.get_final_message()


def raw_events(extras: Extras, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed Messages request's events as they came over the wire: (event name, data)."""
    response = httpx.post(
        f"{extras.url}/v1/messages",
        headers={"x-api-key": extras.key, "anthropic-version": "2023-06-01"},
        json={**body, "stream": True},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    events, name = [], ""
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, orjson.loads(line[6:])))
    return events


def unique(text: str) -> str:
    """A text no other test sends (the affinity book remembers conversations by their content)."""
    return f"{text} [{secrets.token_hex(4)}]"


# --- thinking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_thinking_blocks_of_an_anthropic_upstream_reach_the_client_unchanged(extras, fake_anthropic, streamed):
    fake_anthropic.enqueue(Script(text="It is sunny.", thinking=[SIGNED, REDACTED]))
    message = ask(
        extras,
        streamed,
        model="conf-anthropic",
        max_tokens=3000,
        thinking=THINKING,
        messages=[{"role": "user", "content": "Weather?"}],
    )
    assert fake_anthropic.received[-1]["thinking"] == THINKING
    assert [block.model_dump(exclude_none=True) for block in message.content[:2]] == [SIGNED, REDACTED]
    assert message.content[2].type == "text" and message.content[2].text == "It is sunny."
    assert message.stop_reason == "end_turn"


def test_streamed_thinking_is_anthropics_events(extras, fake_anthropic):
    fake_anthropic.enqueue(Script(text="Done.", thinking=[SIGNED, REDACTED]))
    events = raw_events(
        extras,
        {"model": "conf-anthropic", "max_tokens": 3000, "thinking": THINKING, "messages": [{"role": "user", "content": "Hi"}]},
    )
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        REDACTED,
        {"type": "text", "text": ""},
    ]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta" and data["index"] == 0]
    assert {delta["type"] for delta in deltas} == {"thinking_delta", "signature_delta"}
    assert "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta") == SIGNED["thinking"]
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [SIGNED["signature"]]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1, 2]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_use_turn_with_thinking_goes_back_upstream_unchanged(extras, fake_anthropic, streamed):
    fake_anthropic.enqueue(
        Script(text="", thinking=[SIGNED], tool_calls=[("get_weather", {"city": "Lyon"})], finish_reason="tool_calls"),
        Script(text="Sunny in Lyon."),
    )
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Lyon?"}]
    body = {"model": "conf-anthropic", "max_tokens": 3000, "thinking": THINKING, "tools": [WEATHER]}
    first = ask(extras, streamed, messages=history, **body)
    assert first.stop_reason == "tool_use" and [block.type for block in first.content] == ["thinking", "tool_use"]
    assistant = [block.model_dump(exclude_none=True) for block in first.content]
    use = first.content[1]
    history += [
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 24 C"}]},
    ]
    second = ask(extras, streamed, messages=history, **body)  # the fake refuses it without the thinking block
    assert second.content[0].text == "Sunny in Lyon."
    sent = fake_anthropic.received[-1]
    assert sent["messages"][1] == {"role": "assistant", "content": assistant}
    assert sent["messages"][1]["content"][0] == SIGNED and sent["thinking"] == THINKING


@pytest.mark.parametrize("model, fake_name", [("conf-openai_compat", "fake_openai"), ("conf-gemini", "fake_gemini")])
@pytest.mark.parametrize("streamed", [False, True])
def test_thinking_over_an_upstream_without_it_is_accepted_and_never_made_up(extras, request, model, fake_name, streamed):
    fake = request.getfixturevalue(fake_name)
    fake.enqueue(Script(text="Sunny.", thinking=[{"type": "thinking", "thinking": "a Gemini thought", "signature": "x"}]))
    history = [
        {"role": "user", "content": "Weather in Lyon?"},
        {
            "role": "assistant",
            "content": [SIGNED, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lyon"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    message = ask(extras, streamed, model=model, max_tokens=3000, thinking=THINKING, tools=[WEATHER], messages=history)
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "Sunny."
    sent = fake.received[-1]
    assert "thinking" not in orjson.dumps(sent).decode()  # neither the parameter nor the client's thinking block
    assert "signature" not in orjson.dumps(sent).decode()
    if fake_name == "fake_openai":
        assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    else:
        assert "thinkingConfig" not in sent.get("generationConfig", {})


def test_reasoning_of_an_openai_compatible_upstream_is_no_thinking_block(extras, fake_openai):
    """DeepSeek, vLLM and OpenRouter put reasoning in ``reasoning_content``: it is not signed, so it
    is not shown as an Anthropic thinking block (a client would send it back to Anthropic in vain)."""
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "conformance-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "42.", "reasoning_content": "Six times seven."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }
    fake_openai.enqueue(Script(raw_body=orjson.dumps(answer)))
    message = ask(extras, False, model="conf-openai_compat", max_tokens=100, messages=[{"role": "user", "content": "6x7?"}])
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "42."


def test_reasoning_effort_on_the_openai_api_is_anthropic_thinking(extras, fake_anthropic):
    fake_anthropic.enqueue(Script(text="42.", thinking=[SIGNED]))
    completion = extras.gateway.client().chat.completions.create(
        model="conf-anthropic", max_tokens=4000, reasoning_effort="high", messages=[{"role": "user", "content": "6x7?"}]
    )
    assert fake_anthropic.received[-1]["thinking"] == {"type": "enabled", "budget_tokens": 3200}  # 0.8 of max_tokens
    message = completion.choices[0].message
    assert message.content == "42." and (message.model_extra or {}).get("reasoning") == SIGNED["thinking"]
    with pytest.raises(openai.BadRequestError) as refused:  # no budget of 1024 fits below max_tokens
        extras.gateway.client().chat.completions.create(
            model="conf-anthropic", max_tokens=500, reasoning_effort="low", messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.param == "max_tokens"


def test_a_tool_loop_on_the_openai_api_with_reasoning_effort_goes_on_over_anthropic(extras, fake_anthropic):
    """An OpenAI client has no thinking blocks to give back: the turn after a tool call is sent
    without thinking (Anthropic would refuse it with thinking on), and answered."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    fake_anthropic.enqueue(
        Script(text="", thinking=[SIGNED], tool_calls=[("get_weather", {"city": "Lyon"})], finish_reason="tool_calls"),
        Script(text="Sunny in Lyon."),
    )
    api = extras.gateway.client()
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Lyon?"}]
    first = api.chat.completions.create(
        model="conf-anthropic", max_tokens=3000, reasoning_effort="medium", tools=[tool], messages=history
    )
    assert fake_anthropic.received[-1]["thinking"] == {"type": "enabled", "budget_tokens": 1500}
    call = first.choices[0].message.tool_calls[0]
    history += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = api.chat.completions.create(
        model="conf-anthropic", max_tokens=3000, reasoning_effort="medium", tools=[tool], messages=history
    )
    assert second.choices[0].message.content == "Sunny in Lyon." and "thinking" not in fake_anthropic.received[-1]


# --- usage in the stream -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, fake_name, start, final",
    [
        # Anthropic says the prompt's usage in its message_start (input_tokens leaves the cache out)
        ("conf-anthropic", "fake_anthropic", (12, 5, 3, 1), (12, 5, 3, 3)),
        # Gemini in its first response's usageMetadata (no cache writes)
        ("conf-gemini", "fake_gemini", (15, 5, 0, 0), (15, 5, 0, 3)),
        # an OpenAI-compatible upstream only at the end: message_delta has it, and the SDK's final message
        ("conf-openai_compat", "fake_openai", (0, 0, 0, 0), (15, 5, 0, 3)),
    ],
)
def test_stream_usage_is_in_message_start_message_delta_and_the_final_message(extras, request, model, fake_name, start, final):
    fake = request.getfixturevalue(fake_name)
    script = Script(text="one two three", prompt_tokens=20, cached_tokens=5, cache_write_tokens=3 if "anthropic" in model else 0)
    fake.enqueue(script)
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "count"}]}
    events = raw_events(extras, body)
    fields = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")
    message_start = next(data for name, data in events if name == "message_start")["message"]["usage"]
    message_delta = next(data for name, data in events if name == "message_delta")["usage"]
    assert tuple(message_start[f] for f in fields) == start
    assert tuple(message_delta[f] for f in fields) == final

    fake.enqueue(script)
    with claude(extras).messages.stream(**body) as stream:
        usage = stream.get_final_message().usage
    assert tuple(getattr(usage, f) for f in fields) == final


# --- tool use ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, fake_name",
    [("conf-openai_compat", "fake_openai"), ("conf-anthropic", "fake_anthropic"), ("conf-gemini", "fake_gemini")],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_use_turn_ends_with_tool_use_on_every_upstream(extras, request, model, fake_name, streamed):
    fake = request.getfixturevalue(fake_name)
    fake.enqueue(Script(text="Let me look.", tool_calls=[("get_weather", {"city": "Nice"})], finish_reason="tool_calls"))
    message = ask(
        extras, streamed, model=model, max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Nice?"}]
    )
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Nice"}


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_use_turn_on_the_local_engine_ends_with_tool_use(gateway, streamed):
    """The local model, asked as Claude Code asks (thinking, which it has none of, and a cached
    system prompt), with a forced tool call."""
    api = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    body = {
        "model": "gemma-3-270m",
        "max_tokens": 60,
        "thinking": THINKING,
        "system": [{"type": "text", "text": "You call tools.", "cache_control": {"type": "ephemeral"}}],
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Lyon?"}],
    }
    if streamed:
        with api.messages.stream(**body) as stream:
            message = stream.get_final_message()
    else:
        message = api.messages.create(**body)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content][-1] == "tool_use" and "thinking" not in [b.type for b in message.content]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


# --- prompt caching ------------------------------------------------------------------------------

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def test_cache_control_of_a_messages_request_reaches_an_anthropic_upstream_where_it_was(extras, fake_anthropic):
    tools = [{**WEATHER, "name": "get_time"}, {**WEATHER, "cache_control": HOUR}]
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Long instructions.", "cache_control": HOUR}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?", "cache_control": EPHEMERAL}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lyon"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "cache_control": EPHEMERAL},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    fake_anthropic.enqueue(Script(text="Rain."))
    claude(extras).messages.create(
        model="conf-anthropic", max_tokens=50, tools=tools, system=system, messages=messages, cache_control=EPHEMERAL
    )
    sent = fake_anthropic.received[-1]
    assert sent["system"] == system
    assert [tool.get("cache_control") for tool in sent["tools"]] == [None, HOUR]
    assert sent["messages"] == messages and sent["cache_control"] == EPHEMERAL


def test_cache_control_on_the_openai_api_reaches_an_anthropic_upstream_and_no_other(extras, fake_anthropic, fake_openai):
    """OpenRouter's convention: ``cache_control`` on a content part of a chat message."""
    messages = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Rules."}, {"type": "text", "text": "A long book.", "cache_control": EPHEMERAL}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Chapter one?", "cache_control": HOUR}]},
    ]
    fake_anthropic.enqueue(Script(text="It begins."))
    extras.gateway.client().chat.completions.create(model="conf-anthropic", max_tokens=50, messages=messages)
    sent = fake_anthropic.received[-1]
    assert sent["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "A long book.", "cache_control": EPHEMERAL},
    ]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Chapter one?", "cache_control": HOUR}]}]

    fake_openai.enqueue(Script(text="It begins."))
    extras.gateway.client().chat.completions.create(model="conf-openai_compat", max_tokens=50, messages=messages)
    assert "cache_control" not in orjson.dumps(fake_openai.received[-1]).decode()


def test_count_tokens_sends_cache_control_and_thinking_to_an_anthropic_upstream(extras, fake_anthropic):
    fake_anthropic.enqueue(Script(prompt_tokens=77))
    system = [{"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL}]
    counted = claude(extras).messages.count_tokens(
        model="conf-anthropic", system=system, thinking=THINKING, messages=[{"role": "user", "content": "Hi"}]
    )
    assert counted.input_tokens == 77
    sent = fake_anthropic.received[-1]
    assert fake_anthropic.paths[-1] == "/v1/messages/count_tokens" and sent["system"] == system and sent["thinking"] == THINKING


def usd(value: str) -> Decimal:
    return Decimal(value)


BOOK = "Summarize the book: " + "word " * 300  # a prompt whose hold covers the 1000 tokens the fake bills


def test_cache_reads_and_writes_are_billed_at_their_own_prices(extras, fake_anthropic):
    script = Script(text="one two three four", prompt_tokens=1000, cached_tokens=600, cache_write_tokens=300)
    fake_anthropic.enqueue(script)
    raw = claude(extras).messages.with_raw_response.create(
        model="cached-claude", max_tokens=50, messages=[{"role": "user", "content": BOOK}]
    )
    usage = raw.parse().usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.output_tokens) == (
        100,
        600,
        300,
        4,
    )
    expected = (
        100 * usd(PRICES["prompt"])
        + 600 * usd(PRICES["cached_prompt"])
        + 300 * usd(PRICES["cache_write"])
        + 4 * usd(PRICES["completion"])
    )
    assert Decimal(raw.headers["x-emporion-cost"]) == expected  # 0.001665, not 1000 prompt tokens at the prompt price

    # the OpenAI API: prompt_tokens counts them all, cached_tokens the reads, cache_write_tokens the writes
    fake_anthropic.enqueue(script)
    response = extras.gateway.client().with_raw_response.chat.completions.create(
        model="cached-claude", max_tokens=50, messages=[{"role": "user", "content": BOOK}]
    )
    completion = response.parse()
    assert completion.usage.prompt_tokens == 1000 and completion.usage.prompt_tokens_details.cached_tokens == 600
    assert response.http_response.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 600, "cache_write_tokens": 300}
    assert Decimal(response.headers["x-emporion-cost"]) == expected


def test_a_streamed_cache_read_is_billed_at_the_cached_price(extras, fake_openai):
    fake_openai.enqueue(Script(text="a b", prompt_tokens=400, cached_tokens=300))
    stream = extras.gateway.client().chat.completions.create(
        model="cached-gpt",
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": BOOK}],
    )
    last = list(stream)[-1]
    assert last.usage.prompt_tokens == 400 and last.usage.prompt_tokens_details.cached_tokens == 300
    expected = 100 * Decimal("0.000002") + 300 * Decimal("0.0000005") + 2 * Decimal("0.000008")
    assert Decimal(str(last.usage.model_extra["cost"])) == expected
    models = {m.id: m.model_dump() for m in extras.gateway.client().models.list().data}
    assert models["cached-claude"]["pricing"] == {
        "prompt": "0.000003",
        "completion": "0.000015",
        "input_cache_read": "0.0000003",
        "input_cache_write": "0.00000375",
    }


def test_usage_with_cache_writes_goes_through_the_openai_form_and_back():
    """Another Emporion (or OpenRouter) upstream reports writes as prompt_tokens_details.cache_write_tokens."""
    usage = Usage(input_tokens=3, cached_input_tokens=40, cache_write_tokens=500, output_tokens=6)
    assert usage.to_openai()["prompt_tokens"] == 543 and usage_from_openai(usage.to_openai()) == usage
    assert "cache_write_tokens" not in Usage(3, 40, 0, 6).to_openai()["prompt_tokens_details"]


# --- routing sticks to the cache -----------------------------------------------------------------


def turn(extras: Extras, model: str, messages: list[dict[str, Any]], cached: bool) -> tuple[str, anthropic.types.Message]:
    """One turn of a conversation (its last message marked for caching where ``cached``): the
    upstream that served it, and the answer."""
    if cached:
        last = messages[-1]
        messages = [
            *messages[:-1],
            {"role": last["role"], "content": [{"type": "text", "text": last["content"], "cache_control": EPHEMERAL}]},
        ]
    raw = claude(extras).messages.with_raw_response.create(
        model=model,
        max_tokens=50,
        system=[{"type": "text", "text": "You help.", **({"cache_control": EPHEMERAL} if cached else {})}],
        messages=messages,
    )
    return raw.headers["x-emporion-upstream"], raw.parse()


def fallen_back_first_turn(extras: Extras, fake_anthropic, cached: bool) -> list[dict[str, Any]]:
    """The first turn of a conversation on claude-fallback, served by claude-b after claude-a
    failed twice; the conversation to continue."""
    fake_anthropic.enqueue(
        Script(status=500), Script(status=500), Script(text="First answer.", cache_write_tokens=5 if cached else 0)
    )
    history = [{"role": "user", "content": unique("Read this long file")}]
    upstream, answer = turn(extras, "claude-fallback", history, cached)
    assert upstream == "claude-b" and fake_anthropic.received[-1]["model"] == "claude-secondary"
    return [*history, {"role": "assistant", "content": answer.content[0].text}, {"role": "user", "content": "And then?"}]


def test_a_cached_conversation_sticks_to_the_deployment_that_served_it(extras, fake_anthropic):
    history = fallen_back_first_turn(extras, fake_anthropic, cached=True)
    fake_anthropic.enqueue(Script(text="Second answer.", cached_tokens=5))
    upstream, _ = turn(extras, "claude-fallback", history, cached=True)
    assert upstream == "claude-b" and fake_anthropic.received[-1]["model"] == "claude-secondary"


def test_a_conversation_without_caching_goes_back_to_the_first_deployment(extras, fake_anthropic):
    history = fallen_back_first_turn(extras, fake_anthropic, cached=False)
    fake_anthropic.enqueue(Script(text="Second answer."))
    upstream, _ = turn(extras, "claude-fallback", history, cached=False)
    assert upstream == "claude-a" and fake_anthropic.received[-1]["model"] == "claude-primary"


def test_cache_affinity_expires_after_the_configured_time(extras, fake_anthropic):
    book = extras.app.state.deps.router.affinity
    assert book.ttl_s == 300  # [routing] cache_affinity_s, by default
    now = [time.monotonic()]
    book.clock = lambda: now[0]
    try:
        history = fallen_back_first_turn(extras, fake_anthropic, cached=True)
        now[0] += 299
        fake_anthropic.enqueue(Script(text="Still cached."))
        assert turn(extras, "claude-fallback", history, cached=True)[0] == "claude-b"  # and that turn renews it
        history += [{"role": "assistant", "content": "Still cached."}, {"role": "user", "content": "Later?"}]
        now[0] += 301
        fake_anthropic.enqueue(Script(text="Cache gone."))
        assert turn(extras, "claude-fallback", history, cached=True)[0] == "claude-a"
    finally:
        book.clock = time.monotonic


def test_a_failing_cache_holder_still_falls_back(extras, fake_anthropic):
    history = fallen_back_first_turn(extras, fake_anthropic, cached=True)
    fake_anthropic.enqueue(Script(status=500), Script(status=500), Script(text="From the primary."))
    upstream, answer = turn(extras, "claude-fallback", history, cached=True)
    assert upstream == "claude-a" and answer.content[0].text == "From the primary."
    assert [body["model"] for body in fake_anthropic.received[-3:]] == ["claude-secondary", "claude-secondary", "claude-primary"]


def test_a_weighted_split_keeps_each_cached_conversation_on_one_deployment(extras):
    plain = {turn(extras, "claude-split", [{"role": "user", "content": "hello"}], cached=False)[0] for _ in range(24)}
    assert plain == {"claude-a", "claude-b"}  # split at random
    firsts = set()
    for _ in range(12):
        history = [{"role": "user", "content": unique("Open the repository")}]
        first, answer = turn(extras, "claude-split", history, cached=True)
        firsts.add(first)
        for step in range(3):
            history += [{"role": "assistant", "content": answer.content[0].text}, {"role": "user", "content": f"step {step}"}]
            upstream, answer = turn(extras, "claude-split", history, cached=True)
            assert upstream == first
    assert firsts == {"claude-a", "claude-b"}  # conversations are still split between them
