"""Function calling on the local Gemma (a built-in chat template that renders no tools): the
calls are held by llama.cpp's JSON-schema grammar, so a forced call always validates against its
function's schema — non-streamed, streamed, through the Responses API, and in a tool loop. The
small base model chooses poorly under ``auto``; what is checked there is that its answer is
either text or well-formed calls. The translation itself is checked without the engine too."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from emporion.core.answers import Choice, Completion
from emporion.core.usage import Usage
from emporion.errors import InvalidRequest
from emporion.formats import tool_grammar

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather", "parameters": WEATHER_PARAMETERS},
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
    "additionalProperties": False,
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": TIME_PARAMETERS}}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK = [{"role": "user", "content": "What is the weather in Lyon?"}]
MODEL = "gemma-3-270m"


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def valid(call) -> dict:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_a_named_tool_choice_always_yields_a_call_whose_arguments_validate(gateway):
    completion = client(gateway).chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls and all(call.function.name == "get_weather" for call in choice.message.tool_calls)
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        valid(call)


def test_required_with_parallel_calls_off_yields_exactly_one_valid_call(gateway):
    completion = client(gateway).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=80
    )
    calls = completion.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name in SCHEMAS
    valid(calls[0])
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0


def test_a_streamed_forced_call_arrives_as_tool_call_deltas(gateway):
    stream = client(gateway).chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or ()]
    assert pieces and pieces[0].function.name == "get_weather" and pieces[0].id
    arguments = json.loads("".join(piece.function.arguments or "" for piece in pieces if piece.index == 0))
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_auto_lets_the_model_choose_text_or_calls(gateway):
    choice = (
        client(gateway)
        .chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=80)
        .choices[0]
    )
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            valid(call)
    else:
        assert isinstance(choice.message.content, str)


def test_a_tool_loop_on_the_local_model(gateway):
    api = client(gateway)
    first = api.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "degrees": 21}'},
    ]
    second = api.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=12)
    assert second.choices[0].message.tool_calls is None and second.choices[0].message.content


def test_a_forced_call_through_the_responses_api(gateway):
    response = client(gateway).responses.create(
        model=MODEL,
        input="What is the weather in Lyon?",
        tools=[{"type": "function", **WEATHER["function"]}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=80,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMETERS)


def test_the_local_model_lists_tools_among_its_parameters(gateway):
    model = next(m for m in client(gateway).models.list().data if m.id == MODEL).model_dump()
    assert {"tools", "tool_choice", "parallel_tool_calls"} <= set(model["supported_parameters"])


# --- the translation, without the engine ------------------------------------------------------------


def body(**extra) -> dict:
    return {"model": MODEL, "messages": list(ASK), "tools": [WEATHER, TIME], **extra}


def schema_of(constrained: dict) -> dict:
    assert "tools" not in constrained and "tool_choice" not in constrained
    assert (
        constrained["messages"][0]["role"] == "system" and "You can call these functions" in constrained["messages"][0]["content"]
    )
    return constrained["response_format"]["json_schema"]["schema"]


def test_auto_allows_an_answer_or_calls_and_required_only_calls():
    auto = schema_of(tool_grammar.constrain(body()))
    assert len(auto["anyOf"]) == 2 and auto["anyOf"][1]["required"] == ["response"]
    required = schema_of(tool_grammar.constrain(body(tool_choice="required", parallel_tool_calls=False)))
    assert required["properties"]["tool_calls"]["maxItems"] == 1
    names = [each["properties"]["name"]["enum"] for each in required["properties"]["tool_calls"]["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    named = schema_of(tool_grammar.constrain(body(tool_choice={"type": "function", "function": {"name": "get_time"}})))
    assert named["properties"]["tool_calls"]["items"]["properties"]["arguments"] == TIME_PARAMETERS


def test_tool_choice_none_drops_the_tools_and_a_foreign_name_is_a_400():
    plain = tool_grammar.constrain(body(tool_choice="none"))
    assert "response_format" not in plain and "tools" not in plain and plain["messages"] == ASK
    with pytest.raises(InvalidRequest) as refused:
        tool_grammar.constrain(body(tool_choice={"type": "function", "function": {"name": "nope"}}))
    assert refused.value.param == "tool_choice"
    with pytest.raises(InvalidRequest):
        tool_grammar.constrain(body(response_format={"type": "json_object"}))


def test_earlier_calls_and_results_are_written_for_the_template():
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    messages = tool_grammar.constrain(body(messages=history))["messages"][1:]
    assert json.loads(messages[1]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lyon"}}]}
    assert messages[2] == {"role": "user", "content": "Result of call call_1: sunny"}


@pytest.mark.parametrize(
    "text, calls, content, finish",
    [
        (
            '{"tool_calls": [{"name": "get_time", "arguments": {"zone": "UTC"}}]}',
            [("get_time", {"zone": "UTC"})],
            None,
            "tool_calls",
        ),
        ('{"response": "It is sunny."}', [], "It is sunny.", "stop"),
        ('{"tool_calls": [{"name": "get_ti', [], '{"tool_calls": [{"name": "get_ti', "length"),  # cut by max_tokens: kept as text
    ],
)
def test_the_models_json_is_read_back_as_openais_answer(text, calls, content, finish):
    cut = "length" if finish == "length" else "stop"
    read = tool_grammar.answer(Completion(choices=[Choice(text=text, finish_reason=cut)], usage=Usage())).choices[0]
    assert [(call.name, json.loads(call.arguments)) for call in read.tool_calls] == calls
    assert read.text == content and read.finish_reason == finish
