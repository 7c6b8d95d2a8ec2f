"""Bad input gets OpenAI's envelope and status code, never a 500, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

GEMMA = "gemma-3-270m"
CHAT = "/v1/chat/completions"


def assert_envelope(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def chat(gateway, body, **kwargs) -> httpx.Response:
    with gateway.http() as http:
        return http.post(CHAT, json=body, **kwargs) if not isinstance(body, bytes) else http.post(CHAT, content=body, **kwargs)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": GEMMA}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": GEMMA, "messages": []}, "messages"),
        ({"model": GEMMA, "messages": "hello"}, "messages"),
        ({"model": GEMMA, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.[0].role"),
        ({"model": GEMMA, "messages": [{"role": "user"}]}, "messages.[0]"),
        ({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens"),
        ({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, "max_tokens"),
        ({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
        ({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
        ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_invalid_fields_are_400_with_param(gateway, body, param):
    error = assert_envelope(chat(gateway, body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe"])
def test_malformed_json_is_400(gateway, raw):
    assert_envelope(chat(gateway, raw, headers={"content-type": "application/json"}), 400)


def test_huge_body_is_413(gateway):
    body = b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "' + b"a" * (9 * 1024 * 1024) + b'"}]}'
    assert_envelope(chat(gateway, body), 413)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer emp-" + "x" * 43])
def test_missing_or_bad_key_is_401(gateway, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    response = httpx.post(
        f"{gateway.url}{CHAT}", json={"model": GEMMA, "messages": [{"role": "user", "content": "hi"}]}, headers=headers
    )
    error = assert_envelope(response, 401)
    assert error["code"] in ("invalid_api_key", "missing_api_key")
    assert "x" * 20 not in error["message"]  # a presented key is never echoed whole


def test_sdk_raises_authentication_error(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="emp-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_model_is_404_model_not_found(gateway):
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.status_code == 404


def test_prompt_longer_than_context_is_400_context_length_exceeded(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "hello " * 9000}], max_tokens=5
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 8192" in info.value.message


def test_max_tokens_beyond_context_is_400(gateway):
    response = chat(gateway, {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})
    assert_envelope(response, 400, code="context_length_exceeded", param="max_tokens")


def test_unknown_route_and_method(gateway):
    with gateway.http() as http:
        assert_envelope(http.get("/v1/nothing-here"), 404)
        assert_envelope(http.get(CHAT), 405)


def test_server_keeps_serving_after_bad_input(gateway):
    for raw in (b"{", b"null", b'{"model": []}'):
        assert chat(gateway, raw).status_code == 400
    completion = gateway.client().completions.create(model=GEMMA, prompt="Hello", max_tokens=2)
    assert completion.usage.completion_tokens <= 2
