"""The peers bench/run.py --peers measures beside Emporion: LiteLLM Proxy, from its own virtual
environment (.venv-peers, made by ``make bench-peers``: its pins are not Emporion's).

It runs as configured for a fair, offline comparison: one worker, no database (so no spend logs,
no key table: the master key authenticates every request), its model cost map read from the
package instead of downloaded, telemetry off, logging quiet. Its config routes model ``fake`` to
the fake upstream and ``fake-slow`` to the one that answers after a delay, as OpenAI-compatible
models priced like the Emporion money-on targets', exactly like their configs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import httpx

from bench.gateway_targets import COMPLETION_USD, PROMPT_USD, REPO

VENV = REPO / ".venv-peers"
LITELLM = VENV / "bin" / "litellm"
# Every switch LiteLLM has for what it would otherwise fetch at start or on first use (its model cost
# map, Anthropic beta headers, blog posts, policy templates, router presets) or report (telemetry);
# no DATABASE_URL, so no Prisma either. Offline, a fetch would fail and fall back to the bundled copy.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY_DISABLED": "True",
    "DISABLE_ADMIN_UI": "True",
    "LITELLM_LOG": "ERROR",  # also uvicorn's level: no access log
}


def require_litellm() -> None:
    if not LITELLM.exists():
        raise SystemExit(
            f"--peers needs LiteLLM Proxy in {VENV.name}/: run `make bench-peers` (it makes that venv and runs this)"
        )


def litellm_version() -> str:
    """The installed version, read from the package metadata (without importing LiteLLM, which takes seconds)."""
    result = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def target_name(version: str) -> str:
    return f"litellm {version} (1 worker, no database)"


def master_key() -> str:
    return "sk-bench-" + secrets.token_hex(16)  # LiteLLM wants its keys to start with "sk-"


def litellm_config(upstream_url: str, slow_upstream_url: str, key: str) -> str:
    """The proxy's config file. JSON is YAML, so it needs no YAML writer here. Both models are priced
    like the Emporion money-on targets' (LiteLLM computes every response's cost either way; an
    unpriced model also sends each response through its zero-cost diagnostic, about 15% slower)."""

    def model(name: str, url: str) -> dict:
        params = {"model": "openai/fake", "api_base": f"{url}/v1", "api_key": "anything"}
        prices = {"input_cost_per_token": float(PROMPT_USD), "output_cost_per_token": float(COMPLETION_USD)}
        return {"model_name": name, "litellm_params": {**params, **prices}}

    config = {
        "model_list": [model("fake", upstream_url), model("fake-slow", slow_upstream_url)],
        "general_settings": {"master_key": key},
        "litellm_settings": {"set_verbose": False},
    }
    return json.dumps(config, indent=2) + "\n"


def litellm_command(config: Path, port: int) -> list[str]:
    return [
        str(LITELLM),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def litellm_environment() -> dict[str, str]:
    """The bench's environment without any database URL or proxy setting, plus the offline switches."""
    drop = ("DATABASE_URL", "DIRECT_URL", "REDIS_URL", "REDIS_HOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop and not k.startswith("LITELLM_")}
    env.pop("PYTHONPATH", None)
    return {**env, **OFFLINE_ENV}


def probe(url: str, key: str, model: str) -> float:
    """One request, as a check that the peer routes ``model`` to its upstream and prices it: the cost
    it reports (its ``x-litellm-response-cost`` header)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    response = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)
    if response.status_code != 200:
        raise SystemExit(f"probe of LiteLLM ({model}) answered {response.status_code}: {response.text[:500]}")
    cost = float(response.headers.get("x-litellm-response-cost", 0))
    if not cost:
        raise SystemExit(f"LiteLLM charged nothing for a request to {model}: its pricing did not take")
    return cost
