"""The Responses API passed through to an upstream that serves /v1/responses itself
(`responses_api = true`): the client's request goes there as it came (the conversation written
out, store off upstream, the deployment's model), the upstream's own output items come back, and
the request is metered, stored and continued here like any other. The gateway in this process,
engine off, with the fake OpenAI upstream speaking the Responses wire format."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.script import Script

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


MODEL = "conf-responses"  # on the upstream "fake-responses" (responses_api = true)


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0)


def test_a_responses_request_is_passed_through_and_the_upstreams_items_come_back(gateway, fake_openai):
    fake_openai.enqueue(Script(text="Passed through.", prompt_tokens=9, cached_tokens=4))
    raw = client(gateway).responses.with_raw_response.create(
        model=MODEL, input="hi", instructions="Be brief.", max_output_tokens=40, metadata={"k": "v"}
    )
    response = raw.parse()
    assert fake_openai.paths[-1] == "/v1/responses"
    sent = fake_openai.received[-1]
    assert sent["model"] == "responses-upstream-model" and sent["store"] is False and sent["stream"] is False
    assert sent["instructions"] == "Be brief." and sent["max_output_tokens"] == 40
    assert [item["role"] for item in sent["input"]] == ["user"] and "previous_response_id" not in sent
    assert response.model == MODEL and response.status == "completed" and response.output_text == "Passed through."
    assert [item.type for item in response.output] == ["reasoning", "message"]  # the upstream's own items
    assert response.usage.input_tokens == 9 and response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens == 2 and float(raw.headers["x-emporion-cost"]) >= 0
    assert client(gateway).responses.retrieve(response.id).output_text == "Passed through."


def test_a_stored_conversation_continues_with_its_history_written_out(gateway, fake_openai):
    api = client(gateway)
    fake_openai.enqueue(Script(text="First answer."), Script(text="Second answer."))
    first = api.responses.create(model=MODEL, input="question one")
    second = api.responses.create(model=MODEL, input="question two", previous_response_id=first.id)
    assert second.output_text == "Second answer."
    sent = fake_openai.received[-1]
    assert "previous_response_id" not in sent
    roles_and_types = [(item.get("type"), item.get("role")) for item in sent["input"]]
    assert roles_and_types == [("message", "user"), ("message", "assistant"), ("message", "user")]
    assert not any("id" in item for item in sent["input"])  # ids of this gateway mean nothing there


def test_a_streamed_passthrough(gateway, fake_openai):
    fake_openai.enqueue(Script(text="streamed through the upstream", prompt_tokens=6))
    with client(gateway).responses.stream(model=MODEL, input="hi") as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert fake_openai.received[-1]["stream"] is True and fake_openai.paths[-1] == "/v1/responses"
    assert text == "streamed through the upstream" == final.output_text
    assert final.usage.input_tokens == 6 and final.usage.output_tokens == 4


@pytest.mark.parametrize("streamed", [False, True])
def test_a_function_call_round_trip_through_the_upstream(gateway, fake_openai, streamed):
    api = client(gateway)
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    fake_openai.enqueue(Script(text="", tool_calls=[("get_weather", {"city": "Lyon"})]), Script(text="Sunny."))
    if streamed:
        with api.responses.stream(model=MODEL, input="Weather in Lyon?", tools=[tool]) as stream:
            first = stream.get_final_response()
    else:
        first = api.responses.create(model=MODEL, input="Weather in Lyon?", tools=[tool])
    call = next(item for item in first.output if item.type == "function_call")
    assert (call.name, call.arguments, call.call_id) == ("get_weather", '{"city":"Lyon"}', "call_fake_0")
    assert fake_openai.received[-1]["tools"] == [tool]
    answer = api.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[tool],
    )
    assert answer.output_text == "Sunny."
    sent = fake_openai.received[-1]["input"]
    assert sent[-2]["type"] == "function_call" and sent[-2]["call_id"] == "call_fake_0"
    assert sent[-1] == {"type": "function_call_output", "call_id": "call_fake_0", "output": "sunny"}


def test_chat_on_the_same_upstream_is_not_passed_to_responses(gateway, fake_openai):
    client(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert fake_openai.paths[-1] == "/v1/chat/completions"


def test_an_output_limit_cut_is_an_incomplete_response(gateway, fake_openai):
    fake_openai.enqueue(Script(text="cut here", finish_reason="length"))
    response = client(gateway).responses.create(model=MODEL, input="hi", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
