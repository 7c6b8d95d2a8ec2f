"""The HTTP edge: 500s, 64-bit integers, framing, slow clients, x-request-id, CORS, validation messages."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emporion.app import build_app
from emporion.settings import load_settings
from tests.conftest import Gateway, emporion, free_port, start_gateway, stop_gateway

ORIGIN = "https://app.example"
MODEL = "fake-gpt"
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
GENERATED_ID = re.compile(r"^req_[0-9a-f]{32}$")

BASE_CONFIG = """
[engine]
enabled = false

[embeddings]
enabled = false

[[upstreams]]
name = "fake"
base_url = "{fake}/v1"

[models."fake-gpt"]
upstream = "fake"
upstream_model = "gpt-fake-upstream"
context_length = 2000000

[tiers.free]
requests_per_minute = 100000
tokens_per_minute = 1000000
max_concurrent = 100
"""

EDGE_CONFIG = """
[server]
max_body_bytes = 65536
header_timeout_s = 1
body_timeout_s = 1
cors_origins = ["https://app.example"]
"""


# --- a raw HTTP/1.1 client: one connection, nothing reopened behind the test's back -------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return orjson.loads(self.body)

    def error(self) -> dict:
        assert self.headers["content-type"].startswith("application/json"), self
        error = self.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return error


def connect(url: str, timeout: float = 10) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(sock: socket.socket) -> Answer | None:
    """One response off the socket; None when the server closed it without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            assert not data, f"connection closed mid-response: {data!r}"
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def exchange(sock: socket.socket, raw: bytes) -> Answer | None:
    sock.sendall(raw)
    return read_answer(sock)


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def chat_body(**fields) -> bytes:
    """A chat request as JSON, integers of any size included (orjson refuses those beyond 64 bits)."""
    return json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 5, **fields}).encode()


# --- servers ---------------------------------------------------------------------------------------


def _data_dir(tmp_path_factory, name: str, config: str) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp(name)
    (data_dir / "config.toml").write_text(config)
    key = emporion("keys", "create", "--org", "tests", data_dir=data_dir).stdout.strip()
    return data_dir, key


@pytest.fixture(scope="module")
def served(tmp_path_factory, fake_openai) -> Iterator[Gateway]:
    """`emporion serve` (a real process) with short timeouts, a small body limit and one CORS origin."""
    data_dir, key = _data_dir(tmp_path_factory, "edge", EDGE_CONFIG + BASE_CONFIG.format(fake=fake_openai.url))
    gateway = start_gateway(data_dir, key)
    yield gateway
    stop_gateway(gateway.process)


@dataclass
class Local:
    url: str
    key: str
    app: object
    http: httpx.Client


@pytest.fixture(scope="module")
def local(tmp_path_factory, fake_openai) -> Iterator[Local]:
    """The app in this process (uvicorn in a thread), default [server] settings."""
    data_dir, key = _data_dir(tmp_path_factory, "edge-local", BASE_CONFIG.format(fake=fake_openai.url))
    app = build_app(load_settings(data_dir))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        yield Local(url, key, app, http)
    server.should_exit = True
    thread.join(timeout=20)


def auth(gateway: Gateway | Local) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"}


# --- 1. an unexpected exception: the envelope, and the connection stays open -----------------------


def test_unexpected_error_is_a_500_envelope_on_a_connection_that_stays_open(local, monkeypatch, caplog):
    deps = local.app.state.deps  # type: ignore[attr-defined]
    authenticate = deps.auth.authenticate

    async def exploding(authorization, api_key):
        if authorization == "Bearer explode":
            raise RuntimeError("a bug somewhere")
        return await authenticate(authorization, api_key)

    monkeypatch.setattr(deps.auth, "authenticate", exploding)
    with connect(local.url) as sock:
        first = exchange(sock, request_bytes("GET", "/v1/models", headers={"Authorization": "Bearer explode"}))
        assert first is not None and first.status == 500
        error = first.error()
        assert error["type"] == "server_error" and "a bug somewhere" not in error["message"]
        assert first.headers.get("connection") != "close"
        second = exchange(sock, request_bytes("GET", "/v1/models", headers={"Authorization": f"Bearer {local.key}"}))
        assert second is not None, "the server closed the keep-alive connection after the 500"
        assert second.status == 200 and second.json()["object"] == "list"
    request_id = first.headers["x-request-id"]
    assert GENERATED_ID.match(request_id)
    logged = [r for r in caplog.records if r.name == "emporion.api" and r.exc_info and request_id in r.getMessage()]
    assert logged and "a bug somewhere" in str(logged[0].exc_info[1]), "the traceback was not logged with the request id"


# --- 2. integers beyond 64 bits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"logprobs": 2**64}, "logprobs"),
        ({"top_logprobs": 2**65}, "top_logprobs"),
        ({"logit_bias": {"50256": 2**70}}, "logit_bias.50256"),
        ({"top_k": 2**64}, "top_k"),
        ({"my_extension": {"deep": [1, -(2**80)]}}, "my_extension.deep.[1]"),
    ],
)
def test_integers_beyond_64_bits_are_a_400_naming_the_parameter(served, fields, param):
    with connect(served.url) as sock:
        answer = exchange(sock, request_bytes("POST", CHAT, chat_body(**fields), auth(served)))
        assert answer is not None and answer.status == 400, answer
        error = answer.error()
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        assert "64" in error["message"] or "less than" in error["message"] or "greater than" in error["message"]
        again = exchange(sock, request_bytes("GET", "/healthz"))  # and the connection still serves
        assert again is not None and again.status == 200


@pytest.mark.parametrize("path", [CHAT, "/v1/messages/count_tokens", "/v1/responses"])
def test_an_unpaired_surrogate_escape_is_a_400_and_an_escaped_pair_is_text(served, fake_openai, path):
    lone = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "input": "x", '
    lone += b'"tools": [{"name": "t\\ud88f", "input_schema": {"type": "object"}}]}'
    calls = fake_openai.count()
    with connect(served.url) as sock:
        answer = exchange(sock, request_bytes("POST", path, lone, auth(served)))
        assert answer is not None and answer.status == 400, answer
        assert "surrogate" in answer.json()["error"]["message"], answer  # in the route's own envelope
    assert fake_openai.count() == calls
    with connect(served.url) as sock:
        paired = chat_body(messages=[{"role": "user", "content": "smile"}]).replace(b"smile", b"\\ud83d\\ude00")
        answer = exchange(sock, request_bytes("POST", CHAT, paired, auth(served)))
        assert answer is not None and answer.status == 200, answer
    assert fake_openai.received[-1]["messages"][0]["content"] == "\U0001f600"


def test_ordinary_requests_still_reach_the_upstream(served):
    with connect(served.url) as sock:
        answer = exchange(
            sock, request_bytes("POST", CHAT, chat_body(seed=2**63 - 1, logit_bias={"1": -100}, top_k=40), auth(served))
        )
        assert answer is not None and answer.status == 200, answer


# --- 3. malformed framing and slow clients ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["two-content-lengths", "content-length-and-chunked", "nul-in-header", "bad-chunk-size"],
)
def test_malformed_framing_is_a_400_envelope(served, raw):
    with connect(served.url) as sock:
        answer = exchange(sock, raw)
        assert answer is not None and answer.status == 400
        error = answer.error()
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_http_request"
        assert error["message"].startswith("Invalid HTTP request")
        assert GENERATED_ID.match(answer.headers["x-request-id"])
        assert answer.headers["connection"] == "close" and closed(sock)


def test_headers_sent_too_slowly_get_a_408_and_the_connection_closes(served):
    began = time.monotonic()
    with connect(served.url, timeout=0.3) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = None
        for n in range(20):  # a header every 0.3 s: each byte is in time, the headers never are
            try:
                answer = read_answer(sock)
                break
            except TimeoutError:
                sock.sendall(f"X-Slow-{n}: drip\r\n".encode())
        assert answer is not None, "the server kept waiting for headers"
        assert answer.status == 408 and answer.error()["code"] == "request_timeout"
        assert answer.headers["connection"] == "close"
    assert time.monotonic() - began < 4


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(served):
    with connect(served.url, timeout=5) as sock:
        for _ in range(2):
            answer = exchange(sock, request_bytes("GET", "/healthz"))
            assert answer is not None and answer.status == 200
            time.sleep(1.5)  # over header_timeout_s, under uvicorn's keep-alive: the next request is served


def test_a_connection_that_sends_nothing_is_closed(served):
    with connect(served.url, timeout=5) as sock:
        began = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - began < 4


def test_a_body_sent_too_slowly_gets_a_408(served):
    head = request_bytes("POST", CHAT, headers=auth(served)).replace(b"Content-Length: 0", b"Content-Length: 1000")
    with connect(served.url, timeout=5) as sock:
        began = time.monotonic()
        sock.sendall(head + b'{"model": ')
        answer = read_answer(sock)
        assert answer is not None and answer.status == 408
        error = answer.error()
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        assert answer.headers["connection"] == "close" and closed(sock)
        assert time.monotonic() - began < 4


# --- 4. x-request-id on every response ----------------------------------------------------------------


def test_every_response_carries_a_request_id(served):
    big = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "' + b"a" * 70_000 + b'"}]}'
    cases = [
        (request_bytes("POST", CHAT, chat_body()), 401),
        (request_bytes("GET", "/v1/nothing-here", headers=auth(served)), 404),
        (request_bytes("GET", CHAT, headers=auth(served)), 405),
        (request_bytes("POST", CHAT, b"{not json", auth(served)), 400),
        (request_bytes("POST", CHAT, big, auth(served)), 413),
        (request_bytes("POST", CHAT, chat_body(max_tokens=1_500_000), auth(served)), 429),
        (request_bytes("GET", "/healthz"), 200),
    ]
    seen = set()
    for raw, status in cases:
        with connect(served.url) as sock:
            answer = exchange(sock, raw)
        assert answer is not None and answer.status == status, (status, answer)
        assert GENERATED_ID.match(answer.headers.get("x-request-id", "")), (status, answer.headers)
        seen.add(answer.headers["x-request-id"])
    assert len(seen) == len(cases)


def test_a_route_keeps_its_own_request_id(served):
    with connect(served.url) as sock:
        answer = exchange(sock, request_bytes("POST", CHAT, chat_body(), auth(served)))
    assert answer is not None and answer.status == 200
    assert answer.headers["x-request-id"] == answer.json()["id"]
    assert list(answer.headers).count("x-request-id") == 1


# --- 5. CORS -------------------------------------------------------------------------------------------


def preflight(origin: str) -> bytes:
    return request_bytes(
        "OPTIONS",
        CHAT,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-api-key, idempotency-key, x-stainless-os",
        },
    )


def cors_headers(answer: Answer) -> dict[str, str]:
    return {name: value for name, value in answer.headers.items() if name.startswith("access-control-")}


def test_cors_for_a_configured_origin(served):
    with connect(served.url) as sock:
        answer = exchange(sock, preflight(ORIGIN))
        assert answer is not None and answer.status == 200, answer
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in answer.headers["access-control-allow-methods"]
        allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-api-key", "idempotency-key", "x-stainless-os"} <= allowed  # the SDKs' own too
        posted = exchange(sock, request_bytes("POST", CHAT, chat_body(), {**auth(served), "Origin": ORIGIN}))
        assert posted is not None and posted.status == 200
        assert posted.headers["access-control-allow-origin"] == ORIGIN
        exposed = {h.strip().lower() for h in posted.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "x-emporion-model", "x-emporion-cost", "x-ratelimit-remaining-requests", "retry-after"} <= exposed
        refused = exchange(sock, request_bytes("POST", CHAT, chat_body(), {"Origin": ORIGIN}))
        assert refused is not None and refused.status == 401  # errors are readable by the page too
        assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_for_another_origin(served):
    with connect(served.url) as sock:
        answer = exchange(sock, preflight("https://evil.example"))
        assert answer is not None and answer.status != 200 and not cors_headers(answer), answer
        posted = exchange(sock, request_bytes("POST", CHAT, chat_body(), {**auth(served), "Origin": "https://evil.example"}))
        assert posted is not None and posted.status == 200 and not cors_headers(posted)


def test_no_cors_by_default(local):
    with connect(local.url) as sock:
        answer = exchange(sock, preflight(ORIGIN))
        assert answer is not None and answer.status != 200 and not cors_headers(answer), answer
        posted = exchange(sock, request_bytes("POST", CHAT, chat_body(), {**auth(local), "Origin": ORIGIN}))
        assert posted is not None and posted.status == 200 and not cors_headers(posted)


# --- 6. validation messages name the client's fields, never pydantic's internals ------------------------

INTERNALS = (
    "constrained",
    "[str]",
    "function-",
    "pydantic",
    "tagged-union",
    "lax-or-strict",
    "json-or-python",
    "literal[",
    "list[",
    "dict[",
    "TextPart",
    "ImagePart",
    "ChatMessage",
)
CLEAN_PARAM = re.compile(r"^[a-z_]+(\.(\[\d+\]|[a-z_0-9]+))*$")

scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
not_strings = st.one_of(
    scalars, st.lists(scalars, min_size=1, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2)
)
not_text = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=3))


def _chat(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO, **fields}


def _content(content: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


bad_bodies = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), not_text.map(_content)),
    st.tuples(st.just("/v1/chat/completions"), not_strings.map(lambda v: _content([{"type": "text", "text": v}]))),
    st.tuples(st.just("/v1/chat/completions"), not_text.map(lambda v: _chat(stop=v))),
    st.tuples(st.just("/v1/chat/completions"), st.lists(scalars, min_size=1, max_size=3).map(lambda v: _chat(stop=v))),
    st.tuples(st.just("/v1/chat/completions"), not_text.map(lambda v: _chat(tool_choice=v))),
    st.tuples(
        st.just("/v1/chat/completions"), not_strings.map(lambda v: _chat(tools=[{"type": "function", "function": {"name": v}}]))
    ),
    st.tuples(st.just("/v1/chat/completions"), not_strings.map(lambda v: _chat(messages=[v]))),
    st.tuples(
        st.just("/v1/completions"),
        st.one_of(scalars, st.lists(st.booleans(), min_size=1)).map(lambda v: {"model": MODEL, "prompt": v}),
    ),
    st.tuples(
        st.just("/v1/embeddings"),
        st.one_of(st.booleans(), st.lists(st.one_of(st.booleans(), st.just({"a": 1})), min_size=1)).map(
            lambda v: {"model": MODEL, "input": v}
        ),
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_bodies)
def test_validation_messages_never_name_pydantic_internals(local, case):
    path, body = case
    response = local.http.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, (body, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    for text in (error["message"], error["param"] or ""):
        assert not any(internal in text for internal in INTERNALS), (body, error)
    if error["param"] is not None:
        assert CLEAN_PARAM.match(error["param"]), (body, error)
        assert f"'{error['param']}'" in error["message"], (body, error)


@pytest.mark.parametrize(
    "path, body, param, words",
    [
        (CHAT, _content([{"type": "text", "text": 5}]), "messages.[0].content.[0].text", "string"),
        (CHAT, _content(5), "messages.[0].content", "string or"),
        (CHAT, _chat(stop=[1, 2]), "stop.[0]", "string"),
        (CHAT, _chat(messages=[5]), "messages.[0]", "object"),
        ("/v1/embeddings", {"model": MODEL, "input": [True]}, "input.[0]", ""),
    ],
)
def test_a_union_error_points_at_the_member_that_was_meant(local, path, body, param, words):
    response = local.http.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
