"""Fixtures: a fake OpenAI upstream, and the real Emporion server process started once per session
(real llama-server engine with Gemma 3 270M, real MiniLM embeddings) on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest
import uvicorn

from emporion.app import build_app, http_protocol
from emporion.engine.gemma import ensure_gemma
from emporion.settings import load_settings
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import ThreadedServer

QUEUE_SIZE = 4
PARALLEL = 4
DEFAULT_MAX_TOKENS = 48  # where the engine stops a generation that names no max_tokens
ADDED_MODEL = "gemma-added"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emporion(*args: str, data_dir: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emporion", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        **kwargs,
    )


@dataclass
class Gateway:
    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen | None  # None: the app runs in this process (``remote_gateway``)
    log: Path
    bank_key: str = ""

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kwargs)

    def aclient(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=120)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=10).json()


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_postgres(prefix: str = "emporion_test_") -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1 (dropped afterwards): its URL."""

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    name = prefix + secrets.token_hex(4)
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def fake_openai():
    fake = FakeOpenAI()
    with ThreadedServer(fake.app) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def clean_fake_openai(fake_openai):
    """The fake OpenAI's script queue empty before and after the test (modules that script it:
    ``pytestmark = pytest.mark.usefixtures("clean_fake_openai")``)."""
    fake_openai.scripts.clear()
    yield fake_openai
    fake_openai.scripts.clear()


@pytest.fixture(scope="session")
def fake_anthropic():
    fake = FakeAnthropic()
    with ThreadedServer(fake.app) as server:
        fake.url = server.url
        yield fake


@pytest.fixture(scope="session")
def fake_gemini():
    fake = FakeGemini()
    with ThreadedServer(fake.app) as server:
        fake.url = server.url
        yield fake


def remote_config(fake_openai, fake_anthropic, fake_gemini) -> str:
    """The fake upstreams, their models, routing, a policy and generous tiers: the gateway's config
    without the local engine's part."""
    return f"""
[[upstreams]]
name = "fake"
base_url = "{fake_openai.url}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."fake-gpt"]
upstream = "fake"
upstream_model = "gpt-fake-upstream"
name = "Fake: GPT"
context_length = 128000
license = "proprietary"
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[[upstreams]]
name = "anthropic-fake"
adapter = "anthropic"
base_url = "{fake_anthropic.url}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[[upstreams]]
name = "gemini-fake"
adapter = "gemini"
base_url = "{fake_gemini.url}/v1beta"
api_key_env = "FAKE_UPSTREAM_KEY"
data_collection = "deny"

[models."conf-openai_compat"]
upstream = "fake"
upstream_model = "conformance-model"

[[upstreams]]
name = "fake-responses"
base_url = "{fake_openai.url}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses_api = true

[models."conf-responses"]
upstream = "fake-responses"
upstream_model = "responses-upstream-model"

[models."conf-anthropic"]
upstream = "anthropic-fake"
upstream_model = "claude-fake-1"

[models."conf-gemini"]
upstream = "gemini-fake"
upstream_model = "gemini-fake-1"

[models."assistant"]
deployments = [{{ upstream = "fake", model = "primary-model" }}, {{ upstream = "anthropic-fake", model = "claude-fallback" }}]

[models."split"]
split = "weighted"
sticky = true
deployments = [{{ upstream = "fake", model = "split-a", weight = 50 }}, {{ upstream = "gemini-fake", model = "split-b", weight = 50 }}]

[models."priced"]
deployments = [
  {{ upstream = "fake", model = "priced-dear", pricing = {{ prompt = "0.00001", completion = "0.00003" }} }},
  {{ upstream = "gemini-fake", model = "priced-cheap", pricing = {{ prompt = "0.000001", completion = "0.000002" }} }},
]


[models."breaker-test"]
upstream = "fake"
upstream_model = "breaker-model"

[models."gated"]
upstream = "fake"
upstream_model = "gated-model"
license = "llama3.1"
license_acceptance = true
input_modalities = ["text", "image"]

[models."gated".card]
intended_uses = "Testing license gates."
terms_url = "https://example.invalid/terms"
evaluations = [{{ name = "Fake-Bench", metric = "accuracy", value = 42.5, source = "tests/conftest.py" }}]

[[upstreams]]
name = "soak-primary"
base_url = "{fake_openai.url}/v1"
timeout_s = 1.0

[[upstreams]]
name = "soak-fallback"
adapter = "anthropic"
base_url = "{fake_anthropic.url}/v1"

[models."soak"]
deployments = [{{ upstream = "soak-primary", model = "soak-a" }}, {{ upstream = "soak-fallback", model = "soak-b" }}]

[routing]
breaker_threshold = 5
breaker_cooldown_s = 2

[policies.bank]
data_policy = "local-only"

[models."luxury"]
upstream = "fake"
upstream_model = "luxury-model"
context_length = 1000000
pricing = {{ prompt = "0.000001", completion = "0.001" }}

[metering]
free_credit_usd = "100"

[tiers.free]
requests_per_minute = 100000
tokens_per_minute = 1000000000
max_concurrent = 1000
"""


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, fake_openai, fake_anthropic, fake_gemini) -> Gateway:
    data_dir = tmp_path_factory.mktemp("emporion-data")
    (data_dir / "config.toml").write_text(
        f"""
[engine]
parallel = {PARALLEL}
queue_size = {QUEUE_SIZE}
default_max_tokens = {DEFAULT_MAX_TOKENS}

[models."hybrid"]
deployments = [{{ upstream = "fake", model = "hybrid-closed" }}, {{ upstream = "local:gemma-3-270m", model = "gemma-3-270m" }}]
"""
        + remote_config(fake_openai, fake_anthropic, fake_gemini)
    )
    key = emporion("keys", "create", "--org", "tests", data_dir=data_dir).stdout.strip()
    bank_key = emporion("keys", "create", "--org", "bank", data_dir=data_dir).stdout.strip()
    # An operator-added GGUF (the Gemma file again, served with llama.cpp's default chat template).
    gguf = ensure_gemma(tmp_path_factory.mktemp("gguf"))
    emporion("models", "add", str(gguf), "--name", ADDED_MODEL, "--license", "gemma", data_dir=data_dir)
    gateway = start_gateway(data_dir, key)
    gateway.bank_key = bank_key
    yield gateway
    stop_gateway(gateway.process)


@pytest.fixture(scope="module")
def remote_gateway(tmp_path_factory, fake_openai, fake_anthropic, fake_gemini) -> Iterator[Gateway]:
    """The gateway's upstreams, models and policies with the local engine off, served by uvicorn on
    a thread of this process (a real socket, the real HTTP edge): fast to start, and each test
    module its own data directory and state. For tests of routing, metering and adapters."""
    data_dir = tmp_path_factory.mktemp("emporion-remote")
    (data_dir / "config.toml").write_text(
        "[engine]\nenabled = false\n\n[embeddings]\nenabled = false\n" + remote_config(fake_openai, fake_anthropic, fake_gemini)
    )
    key = emporion("keys", "create", "--org", "tests", data_dir=data_dir).stdout.strip()
    bank_key = emporion("keys", "create", "--org", "bank", data_dir=data_dir).stdout.strip()
    previous = os.environ.get("FAKE_UPSTREAM_KEY")
    os.environ["FAKE_UPSTREAM_KEY"] = "sk-upstream-secret"
    settings = load_settings(data_dir)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings), host="127.0.0.1", port=port, loop="uvloop", http=http_protocol(settings), log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="remote-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process gateway did not start"
        time.sleep(0.05)
    try:
        yield Gateway(
            url=f"http://127.0.0.1:{port}",
            key=key,
            data_dir=data_dir,
            process=None,
            log=data_dir / "serve.log",
            bank_key=bank_key,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if previous is None:
            os.environ.pop("FAKE_UPSTREAM_KEY", None)
        else:
            os.environ["FAKE_UPSTREAM_KEY"] = previous


def start_gateway(data_dir: Path, key: str = "", port: int | None = None, log_name: str = "serve.log") -> Gateway:
    """``emporion serve`` on its data dir (and the config.toml there), ready to answer."""
    port = port or free_port()
    log = data_dir / log_name
    env = {**os.environ, "FAKE_UPSTREAM_KEY": "sk-upstream-secret"}
    with log.open("a") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "emporion", "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"emporion serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"emporion serve not ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return Gateway(url=url, key=key, data_dir=data_dir, process=process, log=log)


def stop_gateway(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
