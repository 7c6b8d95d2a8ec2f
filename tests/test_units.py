"""Settings, keys, usage, catalog and admission, without a server."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emporion.auth.keys import generate_key, hash_key, redact
from emporion.catalog.builtin import build_catalog
from emporion.core.usage import Usage, usage_from_openai
from emporion.errors import EngineOverloaded, ModelNotFound
from emporion.limits.gate import Admission
from emporion.settings import ConfigError, load_settings
from tests.conftest import emporion
from tests.fakes.script import Script


def test_config_typo_fails_with_a_clear_message(tmp_path):
    (tmp_path / "config.toml").write_text("[engine]\nthreds = 2\n")
    with pytest.raises(ConfigError, match=r"engine\.threds: Extra inputs are not permitted"):
        load_settings(tmp_path)


def test_config_bad_toml_and_unknown_upstream(tmp_path):
    (tmp_path / "config.toml").write_text("[engine\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text('[models."x"]\nupstream = "nowhere"\n')
    with pytest.raises(ConfigError, match="unknown upstream 'nowhere'"):
        load_settings(tmp_path)


def test_config_negative_price_rejected(tmp_path):
    (tmp_path / "config.toml").write_text('[models."gemma-3-270m"]\npricing = { prompt = "-1" }\n')
    with pytest.raises(ConfigError, match="non-negative"):
        load_settings(tmp_path)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    (tmp_path / "config.toml").write_text("[server]\nprot = 1\n")
    result = emporion("models", "list", data_dir=tmp_path, check=False)
    assert result.returncode == 2
    assert "server.prot" in result.stderr and "Traceback" not in result.stderr


def test_config_overrides_builtin_model_price_exactly(tmp_path):
    (tmp_path / "config.toml").write_text('[models."gemma-3-270m"]\npricing = { prompt = "0.0000001", completion = "2E-7" }\n')
    catalog = build_catalog(load_settings(tmp_path), "/x.gguf", [])
    gemma = catalog.get("gemma-3-270m")
    assert gemma.pricing.prompt == Decimal("0.0000001")
    assert gemma.to_openai()["pricing"] == {"prompt": "0.0000001", "completion": "0.0000002"}
    with pytest.raises(ModelNotFound):
        catalog.get("nope")


def test_keys_are_random_prefixed_and_hashed():
    a, b = generate_key(), generate_key()
    assert a.plaintext != b.plaintext and a.plaintext.startswith("emp-") and len(a.plaintext) == 47
    assert a.prefix == a.plaintext[:8] and a.key_hash == hash_key(a.plaintext) and len(a.key_hash) == 64
    assert a.plaintext[10:-4] not in redact(a.plaintext)


def test_keys_stored_only_as_hashes(tmp_path):
    key = emporion("keys", "create", "--org", "acme", "--label", "ci", data_dir=tmp_path).stdout.strip()
    database = (tmp_path / "emporion.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("emporion.db-*"))
    assert key.encode() not in database
    rows = sqlite3.connect(tmp_path / "emporion.db").execute("select key_hash, prefix from api_keys").fetchall()
    assert rows == [(hash_key(key), key[:8])]
    listing = emporion("keys", "list", data_dir=tmp_path).stdout
    assert key[:8] in listing and key not in listing
    emporion("keys", "revoke", key[:8], data_dir=tmp_path)
    assert "revoked" in emporion("keys", "list", data_dir=tmp_path).stdout


def test_first_start_creates_default_org_and_shows_key_once(tmp_path, capsys):
    from emporion.cli.main import _first_start

    settings = load_settings(tmp_path)
    asyncio.run(_first_start(settings))
    first = capsys.readouterr().err
    assert "emp-" in first and "shown" in first
    asyncio.run(_first_start(settings))
    assert "emp-" not in capsys.readouterr().err
    rows = sqlite3.connect(tmp_path / "emporion.db").execute("select name from organizations").fetchall()
    assert rows == [("default",)]


def test_models_add_reads_gguf_metadata(tmp_path):
    from emporion.engine.gemma import ensure_gemma

    gguf = ensure_gemma(tmp_path / "files")
    result = emporion("models", "add", str(gguf), "--name", "my-gemma", data_dir=tmp_path)
    assert "gemma3" in result.stderr and "context 32768" in result.stderr and "no chat template" in result.stderr
    listing = emporion("models", "list", data_dir=tmp_path).stdout
    assert "my-gemma" in listing
    again = emporion("models", "add", str(gguf), "--name", "my-gemma", data_dir=tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    assert emporion("models", "add", str(bad), "--name", "bad", data_dir=tmp_path, check=False).returncode == 2


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_usage_from_openai_never_loses_tokens(prompt, cached, completion):
    usage = usage_from_openai(
        {"prompt_tokens": prompt, "completion_tokens": completion, "prompt_tokens_details": {"cached_tokens": cached}}
    )
    assert usage.prompt_tokens == prompt and usage.output_tokens == completion
    assert usage.cached_input_tokens == min(prompt, cached) and usage.input_tokens >= 0
    assert usage.to_openai()["total_tokens"] == prompt + completion


def test_usage_from_openai_ignores_garbage():
    assert usage_from_openai(None) is None
    assert usage_from_openai({"prompt_tokens": "9", "completion_tokens": -3}) == Usage()


async def test_admission_bounds_running_and_queued():
    admission = Admission(running=2, queued=1)
    release = asyncio.Event()
    entered = []

    async def hold(i):
        async with admission.admit():
            entered.append(i)
            await release.wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert admission.running == 2 and admission.waiting == 1 and entered == [0, 1]
    with pytest.raises(EngineOverloaded) as info:
        async with admission.admit():
            pass
    assert info.value.status == 503 and info.value.headers() == {"retry-after": "1"}
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2] and admission.running == 0 and admission.waiting == 0


async def test_admission_cancelled_waiter_frees_its_place():
    admission = Admission(running=1, queued=1)
    gate = asyncio.Event()

    async def hold():
        async with admission.admit():
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.waiting == 0
    gate.set()
    await holder
    assert admission.running == 0


def test_cli_help_runs():
    result = subprocess.run([sys.executable, "-m", "emporion", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "serve" in result.stdout


def write_gguf(path, metadata: dict) -> None:
    """A GGUF header with string and uint32 values, and one string array (as a vocabulary is)."""
    import struct

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    body = b""
    for key, value in metadata.items():
        if isinstance(value, str):
            body += string(key) + struct.pack("<I", 8) + string(value)
        elif isinstance(value, list):
            body += string(key) + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(string(v) for v in value)
        else:
            body += string(key) + struct.pack("<II", 4, value)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)) + body)


def test_gguf_header_with_chat_template(tmp_path):
    from emporion.engine.gguf_info import read_gguf_info

    path = tmp_path / "tiny.gguf"
    write_gguf(
        path,
        {
            "general.architecture": "llama",
            "tokenizer.ggml.tokens": ["<s>", "hello", "world"],
            "llama.context_length": 2048,
            "general.name": "Tiny",
            "tokenizer.chat_template": "{{ messages }}",
        },
    )
    info = read_gguf_info(path)
    assert (info.architecture, info.name, info.context_length, info.has_chat_template, info.license) == (
        "llama",
        "Tiny",
        2048,
        True,
        None,
    )
    write_gguf(path, {"general.architecture": "llama"})
    with pytest.raises(ValueError, match="context length"):
        read_gguf_info(path)
    path.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf_info(path)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://localhost/v1",
        "http://[::1]/v1",
        "http://10.1.2.3/v1",
        "http://192.168.0.10/v1",
        "http://172.16.5.4/v1",
        "http://169.254.169.254/latest",
        "http://metadata.google.internal/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[fe80::1]/",
    ],
)
async def test_byok_urls_into_the_operators_network_are_refused(url):
    from emporion.errors import PermissionDenied
    from emporion.providers.ssrf import check_upstream_url

    with pytest.raises(PermissionDenied):
        await check_upstream_url(url)


async def test_byok_url_checks_scheme_credentials_and_operator_allow_list():
    from emporion.errors import InvalidRequest
    from emporion.providers.ssrf import check_upstream_url

    for bad in ("ftp://example.com/", "file:///etc/passwd", "https://user:pw@example.com/", "not a url"):
        with pytest.raises(InvalidRequest):
            await check_upstream_url(bad)
    await check_upstream_url("http://127.0.0.1:8000/v1", allowed_hosts=frozenset({"127.0.0.1"}))
    await check_upstream_url("https://93.184.215.14/v1")  # a public address literal needs no lookup


def test_upstream_redirects_are_not_followed(gateway, fake_openai):
    """A redirect (even to a reachable host) is an error, never followed: no bounce inward."""
    import openai as sdk

    fake_openai.scripts.clear()
    fake_openai.enqueue(Script(status=307, headers={"location": "http://127.0.0.1:1/"}, error={}))
    with pytest.raises(sdk.InternalServerError) as info:
        gateway.client().chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}])
    assert "redirect" in info.value.message
