"""The Responses API (``/v1/responses``) through the official openai SDK: over an OpenAI-compatible
and an Anthropic upstream (fakes on a real socket, in-process gateway) and the local model; streamed
and not; function-call round trips continued with ``previous_response_id``; stored responses
(retrieve, input items, delete, per organization, ``store: false``, expiry); and the 400s of what it
cannot do."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from emporion.store import responses as kept
from emporion.store.session import open_database
from tests.fakes.script import Script

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def remote(remote_gateway, fake_openai, fake_anthropic):
    fake_openai.scripts.clear()
    fake_anthropic.scripts.clear()
    yield remote_gateway
    fake_openai.scripts.clear()
    fake_anthropic.scripts.clear()


def client(gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key or gateway.key, max_retries=0)


def test_a_response_over_an_openai_upstream_is_translated_to_chat_and_back(remote, fake_openai):
    fake_openai.enqueue(Script(text="Hello there, developer.", prompt_tokens=11))
    response = client(remote).responses.create(
        model="fake-gpt",
        instructions="Answer briefly.",
        input="Say hello.",
        max_output_tokens=50,
        temperature=0.5,
        metadata={"team": "a"},
    )
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "Hello there, developer."
    assert response.model == "fake-gpt" and response.instructions == "Answer briefly." and response.metadata == {"team": "a"}
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 3 and response.usage.total_tokens == 14
    assert response.usage.model_extra["cost"] > 0
    sent = fake_openai.received[-1]
    assert sent["messages"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hello."}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["model"] == "gpt-fake-upstream"


def test_it_is_metered_like_chat(remote, fake_openai):
    fake_openai.enqueue(Script(text="counted", prompt_tokens=1000))
    raw = client(remote).responses.with_raw_response.create(model="fake-gpt", input="hi")
    response = raw.parse()
    cost = raw.headers["x-emporion-cost"]
    assert float(cost) == pytest.approx(response.usage.model_extra["cost"]) and float(cost) > 0
    record = httpx.get(
        remote.url + "/v1/generation", params={"id": response.id}, headers={"authorization": f"Bearer {remote.key}"}
    ).json()["data"]
    assert record["id"] == response.id and record["tokens_prompt"] == 1000 and float(record["total_cost"]) == float(cost)


def test_a_streamed_response_sends_the_event_sequence_the_sdk_assembles(remote, fake_openai):
    fake_openai.enqueue(Script(text="one two three", prompt_tokens=5))
    with client(remote).responses.stream(model="fake-gpt", input="count") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "one two three"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.output_text == "one two three" and final.status == "completed"
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 3 and final.usage.model_extra["cost"] > 0
    assert fake_openai.received[-1]["stream"] is True
    assert client(remote).responses.retrieve(final.id).output_text == "one two three"  # stored before completed went out


@pytest.mark.parametrize("model, fake_name", [("fake-gpt", "fake_openai"), ("conf-anthropic", "fake_anthropic")])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_function_call_round_trip_continued_by_previous_response_id(remote, request, model, fake_name, streamed):
    fake = request.getfixturevalue(fake_name)
    fake.enqueue(
        Script(text="", tool_calls=[("get_weather", {"city": "Lyon"})], finish_reason="tool_calls"), Script(text="Sunny in Lyon.")
    )
    api = client(remote)

    def ask(**kwargs):
        if not streamed:
            return api.responses.create(model=model, tools=[WEATHER], **kwargs)
        with api.responses.stream(model=model, tools=[WEATHER], **kwargs) as stream:
            return stream.get_final_response()

    first = ask(input="Weather in Lyon?")
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Lyon"}
    assert calls[0].call_id and calls[0].id.startswith("fc_") and calls[0].status == "completed"
    second = ask(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "sunny"}'}],
    )
    assert second.output_text == "Sunny in Lyon." and second.previous_response_id == first.id
    sent = fake.received[-1]
    if fake_name == "fake_openai":
        roles = [message["role"] for message in sent["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert sent["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": '{"sky": "sunny"}'}
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    else:
        blocks = [block["type"] for message in sent["messages"] for block in message["content"]]
        assert blocks == ["text", "tool_use", "tool_result"]


def test_streamed_function_call_arguments_arrive_as_deltas(remote, fake_openai):
    fake_openai.enqueue(Script(text="", tool_calls=[("get_weather", {"city": "Paris"})], finish_reason="tool_calls"))
    with client(remote).responses.stream(model="fake-gpt", input="Weather?", tools=[WEATHER], tool_choice="required") as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"}
    assert fake_openai.received[-1]["tool_choice"] == "required"


def test_structured_output_and_tool_choice_are_translated(remote, fake_openai):
    fake_openai.enqueue(Script(text='{"answer": 4}'))
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client(remote).responses.create(
        model="fake-gpt",
        input="2+2?",
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}},
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    sent = fake_openai.received[-1]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "sum", "schema": schema, "strict": True}}
    assert (
        sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}} and sent["parallel_tool_calls"] is False
    )
    assert json.loads(response.output_text) == {"answer": 4} and response.text.format.type == "json_schema"


def test_an_answer_cut_by_the_output_limit_is_incomplete(remote, fake_openai):
    fake_openai.enqueue(Script(text="cut here", finish_reason="length"))
    response = client(remote).responses.create(model="fake-gpt", input="long story", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_stored_responses_are_the_organizations_own(remote, fake_openai):
    api, other = client(remote), client(remote, remote.bank_key)
    fake_openai.enqueue(Script(text="kept"))
    response = api.responses.create(
        model="fake-gpt", input=[{"role": "user", "content": [{"type": "input_text", "text": "keep"}]}]
    )
    assert api.responses.retrieve(response.id).model_dump() == response.model_dump()
    items = api.responses.input_items.list(response.id)
    assert [(item.type, item.role, item.content[0].text) for item in items.data] == [("message", "user", "keep")]
    for call in (lambda: other.responses.retrieve(response.id), lambda: other.responses.delete(response.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as refused:
        other.responses.create(model="fake-gpt", input="go on", previous_response_id=response.id)
    assert refused.value.code == "previous_response_not_found"
    api.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as gone:
        api.responses.retrieve(response.id)
    assert gone.value.code == "response_not_found"


def test_store_false_keeps_nothing(remote, fake_openai):
    fake_openai.enqueue(Script(text="forgotten"))
    response = client(remote).responses.create(model="fake-gpt", input="hi", store=False)
    assert response.store is False and response.output_text == "forgotten"
    with pytest.raises(openai.NotFoundError):
        client(remote).responses.retrieve(response.id)


def test_a_conversation_carries_every_turn_but_not_earlier_instructions(remote, fake_openai):
    api = client(remote)
    fake_openai.enqueue(Script(text="I am Ada."), Script(text="Ada."), Script(text="Yes."))
    first = api.responses.create(model="fake-gpt", instructions="Be a pirate.", input="Who are you?")
    second = api.responses.create(model="fake-gpt", previous_response_id=first.id, input="Your name again?")
    api.responses.create(model="fake-gpt", instructions="Be terse.", previous_response_id=second.id, input="Sure?")
    assert fake_openai.received[-1]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Ada."},
        {"role": "user", "content": "Your name again?"},
        {"role": "assistant", "content": "Ada."},
        {"role": "user", "content": "Sure?"},
    ]


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"frobnicate": True}, "frobnicate", "unknown_parameter"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_value"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"truncation": "auto"}, "truncation", "unsupported_value"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_value"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format", None),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ],
)
def test_what_it_cannot_do_is_a_400_naming_the_parameter(remote, fake_openai, extra, param, code):
    before = fake_openai.count()
    response = httpx.post(
        remote.url + "/v1/responses",
        json={"model": "fake-gpt", "input": "hi", **extra},
        headers={"authorization": f"Bearer {remote.key}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and (code is None or error["code"] == code)
    assert fake_openai.count() == before  # refused before anything was sent upstream


def test_a_streamed_response_with_an_idempotency_key_is_replayed_whole(remote, fake_openai):
    fake_openai.enqueue(Script(text="only once"))
    headers = {"authorization": f"Bearer {remote.key}", "idempotency-key": "responses-replay-1"}
    body = {"model": "fake-gpt", "input": "hi", "stream": True}
    first = httpx.post(remote.url + "/v1/responses", json=body, headers=headers)
    before = fake_openai.count()
    again = httpx.post(remote.url + "/v1/responses", json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.text == first.text and fake_openai.count() == before
    assert "event: response.completed" in first.text


async def test_expired_responses_are_purged_and_no_longer_found(tmp_path):
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        await kept.save(db, "org-1", {"id": "resp_1", "output": []}, [], days=1)
        assert await kept.load(db, "org-1", "resp_1") is not None
        later = time.time() + 2 * 86_400
        assert await kept.load(db, "org-1", "resp_1", now=later) is None
        assert await kept.purge_expired(db, now=later) == 1
        assert await kept.conversation(db, "org-1", "resp_1") is None
    finally:
        await db.close()


@pytest.mark.parametrize("streamed", [False, True])
def test_a_response_from_the_local_model(gateway, streamed):
    api = client(gateway)
    if streamed:
        # As OpenAI's, a stream that reached max_output_tokens ends with response.incomplete (which the
        # SDK's get_final_response does not take): the last event carries the whole response either way.
        with api.responses.stream(model="gemma-3-270m", input="Say hello.", max_output_tokens=8) as stream:
            events = list(stream)
        assert events[-1].type in ("response.completed", "response.incomplete")
        response = events[-1].response
        assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == response.output_text
    else:
        response = api.responses.create(
            model="gemma-3-270m", instructions="Answer briefly.", input="Say hello.", max_output_tokens=8
        )
    assert response.model == "gemma-3-270m" and response.output_text
    assert response.status in ("completed", "incomplete") and 0 < response.usage.output_tokens <= 8
    assert response.usage.input_tokens > 0
