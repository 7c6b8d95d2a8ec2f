"""The live catalog: a GGUF model added with `emporion models add` while `emporion serve` runs is
listed and served within seconds (its engine started), removed it is gone, and a price set with
`emporion prices set` shows at once — no restart. Real processes, the real engine and Gemma."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import pytest

from emporion.engine.gemma import ensure_gemma
from tests.conftest import Gateway, emporion, start_gateway, stop_gateway

pytestmark = pytest.mark.engine

CONFIG = """
[engine]
parallel = 1
default_max_tokens = 8

[embeddings]
enabled = false

[server]
catalog_refresh_s = 0.5
"""
ADDED = "live-gemma"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("live")
    (data_dir / "config.toml").write_text(CONFIG)
    key = emporion("keys", "create", "--org", "live", data_dir=data_dir).stdout.strip()
    gateway = start_gateway(data_dir, key)
    yield gateway
    stop_gateway(gateway.process)


def eventually(check: Callable[[], bool], within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.25)


def listed(gateway: Gateway) -> dict[str, dict]:
    with gateway.http() as http:
        return {model["id"]: model for model in http.get("/v1/models").json()["data"]}


def chat(gateway: Gateway, model: str) -> httpx.Response:
    with gateway.http() as http:
        return http.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        )


def test_a_model_added_while_serving_is_served_and_removed_is_gone(served, tmp_path):
    gguf = ensure_gemma(tmp_path)
    assert ADDED not in listed(served)
    emporion("models", "add", str(gguf), "--name", ADDED, "--license", "gemma", data_dir=served.data_dir)
    eventually(lambda: ADDED in listed(served), within_s=10)
    eventually(lambda: chat(served, ADDED).status_code != 503)  # its engine loads in the background
    answer = chat(served, ADDED)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == ADDED and answer.headers["x-emporion-upstream"] == f"local:{ADDED}"
    assert ADDED in served.health()["models"]

    emporion("models", "remove", ADDED, data_dir=served.data_dir)
    eventually(lambda: ADDED not in listed(served), within_s=10)
    gone = chat(served, ADDED)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert ADDED not in served.health()["models"]
    assert chat(served, "gemma-3-270m").status_code == 200  # the built-in model never stopped


def test_a_price_set_while_serving_is_what_models_shows_within_seconds(served):
    emporion("prices", "set", "gemma-3-270m", "--prompt", "0.000002", "--completion", "0.000004", data_dir=served.data_dir)
    eventually(lambda: Decimal(listed(served)["gemma-3-270m"]["pricing"]["completion"]) == Decimal("0.000004"), within_s=10)
