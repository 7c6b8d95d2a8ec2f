"""formats/anthropic.py: the one translator between Anthropic's Messages format and OpenAI's,
used by the /v1/messages ingress and by the Anthropic adapter alike."""

from __future__ import annotations

import pytest

from emporion.core.answers import Choice, Completion, ToolCall
from emporion.core.usage import Usage
from emporion.errors import InvalidRequest
from emporion.formats.anthropic import FINISH_REASONS, STOP_REASONS, to_anthropic, to_message, to_openai
from emporion.formats.anthropic_schemas import MessagesRequest

CONVERSATION = {
    "model": "m",
    "max_tokens": 50,
    "system": "Be brief.",
    "messages": [
        {"role": "user", "content": "Weather in Lyon?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}, {"type": "text", "text": "And?"}],
        },
    ],
    "tools": [
        {
            "name": "weather",
            "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "any"},
}


def test_an_anthropic_conversation_goes_to_openai_and_back_unchanged():
    chat = to_openai(MessagesRequest.model_validate(CONVERSATION))
    back = to_anthropic(chat)
    assert back["system"] == [{"type": "text", "text": "Be brief."}]
    assert back["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Lyon?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}, {"type": "text", "text": "And?"}],
        },
    ]
    assert back["tools"] == [
        {"name": "weather", "input_schema": CONVERSATION["tools"][0]["input_schema"], "description": "Weather of a city"}
    ]
    assert back["tool_choice"] == {"type": "any"} and back["max_tokens"] == 50


def test_finish_and_stop_reasons_map_back_onto_each_other():
    for finish, stop in STOP_REASONS.items():
        assert FINISH_REASONS[stop] == finish


def test_a_clients_tool_arguments_that_are_not_json_are_a_400():
    chat = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}],
            }
        ],
    }
    with pytest.raises(InvalidRequest) as refused:
        to_anthropic(chat)
    assert refused.value.status == 400 and refused.value.param == "messages"


def test_a_models_tool_arguments_that_are_not_json_are_kept_whole():
    answer = Completion(
        [Choice(tool_calls=(ToolCall("call_1", "f", "{not json"),), finish_reason="tool_calls")], Usage(3, 0, 0, 4)
    )
    message = to_message("msg_1", "m", answer)
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"_raw": "{not json"}}]
    assert message["stop_reason"] == "tool_use"
