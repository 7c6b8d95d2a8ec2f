"""LangChain (``ChatOpenAI``, ``OpenAIEmbeddings``) and LiteLLM's SDK as clients of Emporion, as
their users write them: against the local Gemma and MiniLM (the real engine) and against fake
upstreams speaking OpenAI's, Anthropic's and Gemini's wire formats on a socket.

Everything stays on 127.0.0.1: a guard on this process's sockets records any connection or name
look-up elsewhere and fails the test that made it. tiktoken, which ``OpenAIEmbeddings`` tokenizes
with, would download its ``cl100k_base`` file on first use; it reads it instead from a cache filled
here with the vocabulary that ``bpe-openai`` (Emporion's own dependency) ships, checked against the
SHA-256 tiktoken expects and by encoding text with both. LiteLLM fetches its model cost map at
import unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set, which the fixture that imports it does."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import socket
from collections.abc import Iterator
from importlib import resources
from typing import Any

import bpe_openai
import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from emporion.formats.anthropic import ANSWER_TOOL
from tests.fakes.script import Script

LOCAL = "gemma-3-270m"
EMBEDDING = "all-minilm-l6-v2"
REMOTE = {"openai_compat": "fake_openai", "anthropic": "fake_anthropic", "gemini": "fake_gemini"}
ENCODED = ["hello world", "Emporion's gateway: 12345 tokens, ünïcödé and 東京 too.\n\tTabs,  spaces."]


# --- offline: a guard on sockets, tiktoken's file from bpe-openai, LiteLLM without its downloads -----


def _loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    return host is None or host in ("localhost", "::1") or (isinstance(host, str) and host.startswith("127."))


REAL = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex, "getaddrinfo": socket.getaddrinfo}


@pytest.fixture(scope="module", autouse=True)
def network_guard() -> Iterator[list[str]]:
    """Every connection and name look-up of this process (clients, the in-process gateway) that is
    not for the loopback is refused before it is made, and recorded; ``offline`` fails the test
    that tried one."""
    outbound: list[str] = []

    def check(address: Any) -> None:
        if isinstance(address, tuple) and not _loopback(address[0]):
            outbound.append(f"connect {address}")
            raise OSError(f"blocked by the test's network guard: {address}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        REAL["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return REAL["connect_ex"](self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            outbound.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by the test's network guard: {host!r}")
        return REAL["getaddrinfo"](host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield outbound


@pytest.fixture(autouse=True)
def offline(network_guard: list[str]) -> Iterator[None]:
    network_guard.clear()
    yield
    assert network_guard == [], f"traffic for somewhere other than 127.0.0.1: {network_guard}"


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory) -> Iterator[str]:
    """tiktoken's cache, holding ``cl100k_base`` as tiktoken would download it: the file that
    ``bpe-openai`` ships (gzipped), stored under the name tiktoken looks for (the SHA-1 of the
    address it reads) once its SHA-256 is the one tiktoken expects."""
    import tiktoken
    import tiktoken_ext.openai_public as public

    wanted: dict[str, Any] = {}

    def record(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        wanted.update(blobpath=blobpath, expected_hash=expected_hash)
        return {}

    with pytest.MonkeyPatch.context() as patch:  # ask tiktoken which file it reads, without reading it
        patch.setattr(public, "load_tiktoken_bpe", record)
        public.cl100k_base()
    blob = gzip.decompress(resources.files("bpe_openai.data").joinpath("cl100k_base.tiktoken.gz").read_bytes())
    assert wanted["expected_hash"] and hashlib.sha256(blob).hexdigest() == wanted["expected_hash"]
    directory = tmp_path_factory.mktemp("tiktoken")
    (directory / hashlib.sha1(wanted["blobpath"].encode()).hexdigest()).write_bytes(blob)
    saved = {name: os.environ.get(name) for name in ("TIKTOKEN_CACHE_DIR", "CUSTOM_TIKTOKEN_CACHE_DIR")}
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    os.environ["CUSTOM_TIKTOKEN_CACHE_DIR"] = str(directory)  # LiteLLM sets TIKTOKEN_CACHE_DIR to this at import
    ours = bpe_openai.get_encoding("cl100k_base")
    for text in ENCODED:
        assert tiktoken.get_encoding("cl100k_base").encode(text) == ours.encode(text)
    try:
        yield str(directory)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def litellm(tiktoken_cache) -> Iterator[Any]:
    """LiteLLM's SDK, imported with its bundled model cost map (it fetches one at import otherwise)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        patch.setenv("LITELLM_TELEMETRY", "False")
        import litellm

        patch.setattr(litellm, "telemetry", False, raising=False)
        yield litellm


def test_the_guard_refuses_other_hosts_before_any_traffic(network_guard, monkeypatch):
    """With the real socket calls replaced by ones that fail, nothing can leave even if the guard
    let it through: the guard must refuse and record a look-up and a connection elsewhere, and
    still pass the loopback on."""
    reached: list[Any] = []
    monkeypatch.setitem(REAL, "getaddrinfo", lambda host, *a, **k: reached.append(host) or [])
    monkeypatch.setitem(REAL, "connect", lambda sock, address: reached.append(address))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("upstream.invalid", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="network guard"):
        sock.connect(("203.0.113.9", 443))
    socket.getaddrinfo("127.0.0.1", 80)
    assert network_guard == ["getaddrinfo 'upstream.invalid'", "connect ('203.0.113.9', 443)"]
    assert reached == ["127.0.0.1"]
    network_guard.clear()


# --- helpers -------------------------------------------------------------------------------------------


class Recorder:
    """The JSON bodies a client sent, read from its own HTTP client."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        request.read()
        self.paths.append(request.url.path)
        self.bodies.append(json.loads(request.content) if request.content else {})

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self]}, timeout=120)


def chat(gateway, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, model=model, max_retries=0, **kwargs)


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return json.dumps({"city": city, "sky": "sunny", "degrees": 21})


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(max_length=24, description="the city's name")
    country: str = Field(max_length=24, description="the country it is in")


PARIS = {"name": "Paris", "country": "France"}
STRUCTURED_ASK = 'What is the capital of France? Answer in JSON with the keys "name" and "country".'


@pytest.fixture
def remote(request, remote_gateway):
    """(adapter, model, fake) for the parametrized adapter, its script queue empty."""
    fake = request.getfixturevalue(REMOTE[request.param])
    fake.scripts.clear()
    return request.param, f"conf-{request.param}", fake


adapters = pytest.mark.parametrize("remote", list(REMOTE), indirect=True)


def sent_text(body: dict[str, Any]) -> str:
    """Everything a fake received, as one JSON string (to find the prompt in any wire format)."""
    return json.dumps(body, ensure_ascii=False)


# --- LangChain's ChatOpenAI over the fake upstreams ----------------------------------------------------


@adapters
def test_langchain_invoke(remote_gateway, remote):
    name, model, fake = remote
    fake.enqueue(Script(text="Paris is the capital", prompt_tokens=11))
    reply = chat(remote_gateway, model, temperature=0.2, max_tokens=40).invoke(
        [SystemMessage("Be brief."), HumanMessage("Capital of France?")]
    )
    assert isinstance(reply, AIMessage) and reply.content == "Paris is the capital"
    usage = reply.usage_metadata
    assert usage is not None and (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (11, 4, 15)
    assert reply.response_metadata["finish_reason"] == "stop" and reply.response_metadata["model_name"] == model
    body = fake.received[-1]
    assert "Capital of France?" in sent_text(body) and "Be brief." in sent_text(body)
    if name == "anthropic":
        assert body["max_tokens"] == 40 and body["temperature"] == 0.2
    elif name == "gemini":
        assert body["generationConfig"]["maxOutputTokens"] == 40 and body["generationConfig"]["temperature"] == 0.2
    else:
        assert body["model"] == "conformance-model" and body["max_completion_tokens"] == 40


@adapters
def test_langchain_stream(remote_gateway, remote):
    name, model, fake = remote
    fake.enqueue(Script(text="one two three four five", prompt_tokens=9))
    chunks = list(chat(remote_gateway, model, stream_usage=True).stream("count to five"))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks) and len(chunks) > 2
    assert "".join(str(chunk.content) for chunk in chunks) == "one two three four five"
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.usage_metadata is not None
    assert (whole.usage_metadata["input_tokens"], whole.usage_metadata["output_tokens"]) == (9, 5)
    assert whole.response_metadata["finish_reason"] == "stop"
    assert "count to five" in sent_text(fake.received[-1])


@adapters
def test_langchain_batch_answers_each_prompt_in_order(remote_gateway, remote):
    name, model, fake = remote
    prompts = ["first question", "second question", "third question"]
    fake.enqueue(*(Script(text=f"answer number {i}") for i in range(3)))
    before = len(fake.received)
    replies = chat(remote_gateway, model).batch(prompts)
    # the fake pairs its i-th request with its i-th script, in whatever order the batch sent them
    answered = {
        next(p for p in prompts if p in sent_text(body)): f"answer number {i}" for i, body in enumerate(fake.received[before:])
    }
    assert sorted(answered) == sorted(prompts)
    assert [reply.content for reply in replies] == [answered[p] for p in prompts]


@adapters
def test_langchain_tool_call_round_trip(remote_gateway, remote):
    name, model, fake = remote
    fake.enqueue(
        Script(text="", tool_calls=[("get_weather", {"city": "Paris"})], finish_reason="tool_calls"),
        Script(text="It is sunny in Paris."),
    )
    llm = chat(remote_gateway, model).bind_tools([get_weather])
    history: list[Any] = [HumanMessage("What is the weather in Paris?")]
    first = llm.invoke(history)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert [(call["name"], call["args"]) for call in first.tool_calls] == [("get_weather", {"city": "Paris"})]
    call = first.tool_calls[0]
    assert call["id"]
    result = get_weather.invoke(call)  # LangChain runs the tool: a ToolMessage answering the call
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    history += [first, result]
    final = llm.invoke(history)
    assert final.content == "It is sunny in Paris." and not final.tool_calls
    offered, answered = fake.received[-2], fake.received[-1]
    if name == "anthropic":
        assert offered["tools"][0]["name"] == "get_weather" and offered["tools"][0]["input_schema"]["required"] == ["city"]
        assert answered["messages"][1]["content"] == [
            {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Paris"}}
        ]
        assert answered["messages"][2]["content"][0]["type"] == "tool_result"
        assert answered["messages"][2]["content"][0]["tool_use_id"] == call["id"]
        assert json.loads(answered["messages"][2]["content"][0]["content"])["sky"] == "sunny"
    elif name == "gemini":
        assert offered["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
        assert answered["contents"][1] == {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        }
        response = answered["contents"][2]["parts"][0]["functionResponse"]
        assert response["name"] == "get_weather" and response["response"]["sky"] == "sunny"
    else:
        assert offered["tools"][0]["function"]["name"] == "get_weather"
        assert answered["messages"][1]["tool_calls"][0]["id"] == call["id"]
        assert answered["messages"][2]["role"] == "tool" and answered["messages"][2]["tool_call_id"] == call["id"]
        assert json.loads(answered["messages"][2]["content"])["sky"] == "sunny"


@adapters
def test_langchain_streamed_tool_calls(remote_gateway, remote):
    name, model, fake = remote
    fake.enqueue(
        Script(
            text="", tool_calls=[("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})], finish_reason="tool_calls"
        )
    )
    chunks = list(chat(remote_gateway, model).bind_tools([get_weather]).stream("Weather in Oslo and Rome?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert all(call["id"] for call in whole.tool_calls) and len({call["id"] for call in whole.tool_calls}) == 2
    assert whole.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
@pytest.mark.parametrize("remote", list(REMOTE), indirect=True)
def test_langchain_structured_output(remote_gateway, remote, method):
    name, model, fake = remote
    if method == "function_calling":
        fake.enqueue(Script(text="", tool_calls=[("City", PARIS)], finish_reason="tool_calls"))
    elif name == "anthropic":  # held to the format by the one tool it is made to call (formats/anthropic.py)
        fake.enqueue(Script(text="", tool_calls=[(ANSWER_TOOL, PARIS)], finish_reason="tool_calls"))
    else:  # the fake says what a model held to the format would
        fake.enqueue(Script(text=json.dumps(PARIS)))
    parsed = chat(remote_gateway, model).with_structured_output(City, method=method).invoke(STRUCTURED_ASK)
    assert parsed == City(**PARIS)
    body = fake.received[-1]
    if method == "function_calling":
        if name == "anthropic":
            assert body["tool_choice"] == {"type": "tool", "name": "City", "disable_parallel_tool_use": True}
            assert set(body["tools"][0]["input_schema"]["properties"]) == {"name", "country"}
        elif name == "gemini":
            assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["City"]}}
            assert set(body["tools"][0]["functionDeclarations"][0]["parameters"]["properties"]) == {"name", "country"}
        else:
            assert body["tool_choice"] == {"type": "function", "function": {"name": "City"}}
            assert body["parallel_tool_calls"] is False
    elif name == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL} and body["tools"][0]["name"] == ANSWER_TOOL
        properties = body["tools"][0]["input_schema"].get("properties", {})
        assert set(properties) == ({"name", "country"} if method == "json_schema" else set())
    elif name == "gemini":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        if method == "json_schema":
            assert set(body["generationConfig"]["responseJsonSchema"]["properties"]) == {"name", "country"}
        else:
            assert "responseJsonSchema" not in body["generationConfig"]
    elif method == "json_schema":
        assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["name"] == "City"
        assert set(body["response_format"]["json_schema"]["schema"]["properties"]) == {"name", "country"}
    else:
        assert body["response_format"] == {"type": "json_object"}


async def test_langchain_async_invoke_and_stream(remote_gateway, fake_anthropic):
    fake_anthropic.scripts.clear()
    fake_anthropic.enqueue(Script(text="async hello"), Script(text="streamed async hello", prompt_tokens=4))
    llm = chat(remote_gateway, "conf-anthropic", stream_usage=True)
    assert (await llm.ainvoke("Hi")).content == "async hello"
    chunks = [chunk async for chunk in llm.astream("Hi again")]
    assert "".join(str(chunk.content) for chunk in chunks) == "streamed async hello"
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and (usage[-1]["input_tokens"], usage[-1]["output_tokens"]) == (4, 3)


def test_langchain_over_the_responses_api(remote_gateway, fake_openai):
    """``use_responses_api=True``: LangChain's other wire format, served by Emporion's /v1/responses."""
    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(text="Hello through responses", prompt_tokens=6))
    reply = chat(remote_gateway, "fake-gpt", use_responses_api=True).invoke("Say hello.")
    assert reply.text == "Hello through responses"
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] == 6
    assert reply.usage_metadata["output_tokens"] == 3
    assert "Say hello." in sent_text(fake_openai.received[-1])


# --- LangChain against the local Gemma and MiniLM -----------------------------------------------------


def test_langchain_local_invoke_and_stream(gateway):
    llm = chat(gateway, LOCAL, temperature=0, seed=3, max_tokens=8, stream_usage=True)
    reply = llm.invoke("The capital of France is")
    assert isinstance(reply.content, str) and reply.content
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["model_name"] == LOCAL
    chunks = list(llm.stream("The capital of France is"))
    assert "".join(str(chunk.content) for chunk in chunks) == reply.content
    streamed = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert streamed and streamed[-1]["output_tokens"] == usage["output_tokens"]


def test_langchain_local_batch(gateway):
    replies = chat(gateway, LOCAL, temperature=0, max_tokens=6).batch(["Hello", "The sky is", "One, two,"])
    assert len(replies) == 3
    for reply in replies:
        assert isinstance(reply.content, str) and reply.usage_metadata is not None
        assert 0 < reply.usage_metadata["output_tokens"] <= 6


def test_langchain_local_tool_call_round_trip(gateway):
    llm = chat(gateway, LOCAL, temperature=0, max_tokens=60)
    history: list[Any] = [HumanMessage("What is the weather in Lyon?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(history)  # forced: held by the grammar
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert len(first.tool_calls) >= 1 and all(call["name"] == "get_weather" for call in first.tool_calls)
    call = first.tool_calls[0]
    assert isinstance(call["args"]["city"], str) and call["id"].startswith("call_")
    history += [first, get_weather.invoke(call)]
    final = llm.bind_tools([get_weather], tool_choice="none").invoke(history)
    assert isinstance(final.content, str) and final.content and not final.tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_local_structured_output(gateway, method):
    """The grammar holds Gemma to the schema (json_schema, and the forced call of function_calling);
    json_mode holds it to a JSON object only, so the prompt says which keys, as LangChain's docs
    ask (and OpenAI wants the word JSON in it): the 270M model then keeps to them and stops."""
    llm = chat(gateway, LOCAL, temperature=0, max_tokens=100)
    ask = [
        SystemMessage('Reply with one JSON object {"name": ..., "country": ...} and nothing else.'),
        HumanMessage(
            'Answer in JSON with the keys "name" and "country".\n'
            'Q: capital of Germany\nA: {"name": "Berlin", "country": "Germany"}\nQ: capital of France\nA:'
        ),
    ]
    parsed = llm.with_structured_output(City, method=method, include_raw=True).invoke(ask)
    assert parsed["parsing_error"] is None, parsed["raw"]
    city = parsed["parsed"]
    assert isinstance(city, City) and city.name and city.country
    raw = parsed["raw"]
    if method == "function_calling":
        assert [call["name"] for call in raw.tool_calls] == ["City"]
    else:
        assert json.loads(raw.content)["name"] == city.name


def test_langchain_embeddings_with_default_settings_send_token_ids(gateway, tiktoken_cache):
    """OpenAIEmbeddings tokenizes with tiktoken and sends cl100k_base ids; Emporion reads them as the
    text they spell, so the vectors are those of the text itself."""
    recorder = Recorder()
    with recorder.client() as http_client:
        embeddings = OpenAIEmbeddings(base_url=gateway.url + "/v1", api_key=gateway.key, model=EMBEDDING, http_client=http_client)
        vectors = embeddings.embed_documents(ENCODED)
        query = embeddings.embed_query(ENCODED[0])
    ours = bpe_openai.get_encoding("cl100k_base")
    assert recorder.paths == ["/v1/embeddings", "/v1/embeddings"]
    assert recorder.bodies[0]["input"] == [ours.encode(text) for text in ENCODED]
    assert recorder.bodies[-1]["input"] == [ours.encode(ENCODED[0])]
    direct = gateway.client().embeddings.create(model=EMBEDDING, input=ENCODED).data
    assert len(vectors) == 2 and all(len(vector) == 384 for vector in vectors)
    for vector, item in zip([*vectors, query], [*direct, direct[0]], strict=True):
        assert math.dist(vector, item.embedding) < 1e-4


# --- LiteLLM's SDK -------------------------------------------------------------------------------------


def test_litellm_completion_and_stream(litellm, remote_gateway, fake_openai):
    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(text="Paris is the capital", prompt_tokens=11), Script(text="one two three", prompt_tokens=5))
    ask = [{"role": "user", "content": "Capital of France?"}]
    common = {"model": "openai/fake-gpt", "api_base": remote_gateway.url + "/v1", "api_key": remote_gateway.key}
    response = litellm.completion(messages=ask, max_tokens=30, **common)
    assert response.choices[0].message.content == "Paris is the capital"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 4)
    assert fake_openai.received[-1]["messages"] == ask and fake_openai.received[-1]["max_tokens"] == 30
    stream = litellm.completion(messages=ask, stream=True, stream_options={"include_usage": True}, **common)
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "one two three"
    usage = [chunk.usage for chunk in chunks if getattr(chunk, "usage", None)]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (5, 3)
    assert fake_openai.received[-1]["stream"] is True


def test_litellm_through_emporions_anthropic_route(litellm, remote_gateway, fake_openai):
    """LiteLLM's ``anthropic/`` provider speaks Anthropic's Messages API: Emporion's /v1/messages
    serves it over an OpenAI upstream."""
    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(text="Bonjour from upstream", prompt_tokens=8), Script(text="streamed bonjour"))
    common = {"model": "anthropic/fake-gpt", "api_base": remote_gateway.url, "api_key": remote_gateway.key, "max_tokens": 20}
    ask = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say bonjour."}]
    response = litellm.completion(messages=ask, **common)
    assert response.choices[0].message.content == "Bonjour from upstream"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (8, 3)
    sent = fake_openai.received[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 20
    chunks = list(litellm.completion(messages=ask, stream=True, **common))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "streamed bonjour"


@pytest.mark.parametrize("remote", ["anthropic", "gemini"], indirect=True)
def test_litellm_tool_calls_streamed_and_not(litellm, remote_gateway, remote):
    name, model, fake = remote
    fake.enqueue(
        Script(text="", tool_calls=[("get_weather", {"city": "Paris"})], finish_reason="tool_calls"),
        Script(text="", tool_calls=[("get_weather", {"city": "Rome"})], finish_reason="tool_calls"),
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    common = {"model": f"openai/{model}", "api_base": remote_gateway.url + "/v1", "api_key": remote_gateway.key, "tools": tools}
    response = litellm.completion(messages=[{"role": "user", "content": "Weather in Paris?"}], tool_choice="required", **common)
    call = response.choices[0].message.tool_calls[0]
    assert response.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"} and call.id
    chunks = list(litellm.completion(messages=[{"role": "user", "content": "Weather in Rome?"}], stream=True, **common))
    pieces = [piece for chunk in chunks if chunk.choices for piece in chunk.choices[0].delta.tool_calls or ()]
    assert pieces and pieces[0].function.name == "get_weather"
    assert json.loads("".join(piece.function.arguments or "" for piece in pieces)) == {"city": "Rome"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_litellm_against_the_local_model(litellm, gateway):
    common = {"model": f"openai/{LOCAL}", "api_base": gateway.url + "/v1", "api_key": gateway.key, "temperature": 0, "seed": 3}
    ask = [{"role": "user", "content": "The capital of France is"}]
    response = litellm.completion(messages=ask, max_tokens=8, **common)
    text = response.choices[0].message.content
    assert text and 0 < response.usage.completion_tokens <= 8 and response.usage.prompt_tokens > 0
    streamed = list(litellm.completion(messages=ask, max_tokens=8, stream=True, **common))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == text
    forced = litellm.completion(
        messages=[{"role": "user", "content": "What is the weather in Lyon?"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": get_weather.name,
                    "description": get_weather.description,
                    "parameters": get_weather.args_schema.model_json_schema(),
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        **common,
    )
    call = forced.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)


def test_litellm_embedding(litellm, gateway):
    texts = ["hello world", "a second sentence"]
    response = litellm.embedding(model=f"openai/{EMBEDDING}", api_base=gateway.url + "/v1", api_key=gateway.key, input=texts)
    direct = gateway.client().embeddings.create(model=EMBEDDING, input=texts)
    assert [len(item["embedding"]) for item in response.data] == [384, 384]
    for item, expected in zip(response.data, direct.data, strict=True):
        assert math.dist(item["embedding"], expected.embedding) < 1e-4
    assert response.usage.prompt_tokens == direct.usage.prompt_tokens > 0
