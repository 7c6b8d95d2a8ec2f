"""GET /metrics: known traffic through the gateway in this process (engine off), then a scrape parsed
with prometheus-client's own parser, whose counts must match the traffic exactly; and who may scrape."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections import defaultdict

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from emporion.app import build_app
from emporion.settings import load_settings
from tests.conftest import emporion
from tests.fakes.script import Script

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]
NON_STREAMED, STREAMED = 3, 2
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def new_key(gateway, org: str, **columns) -> tuple[str, str, str]:
    """(key, its id, its organization's id) of a new organization, the key's columns set."""
    key = emporion("keys", "create", "--org", org, data_dir=gateway.data_dir).stdout.strip()
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        if columns:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(f"UPDATE api_keys SET {assignments} WHERE prefix = ?", [*columns.values(), key[:8]])
        key_id, org_id = db.execute("SELECT id, org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()
    return key, key_id, org_id


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def parse(text: str) -> Samples:
    """Sample name -> {sorted labels: value}."""
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def of(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    return {key: value for key, value in samples.get(name, {}).items() if set(labels.items()) <= set(key)}


def scrape(gateway) -> str:
    answer = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


def test_the_counts_after_known_traffic_match(remote_gateway, fake_openai):
    gateway = remote_gateway
    key_a, key_id_a, org_a = new_key(gateway, "metrics-a")
    key_b, key_id_b, org_b = new_key(gateway, "metrics-b", requests_per_minute=1)
    key_c, key_id_c, org_c = new_key(gateway, "metrics-c")
    ids: set[str] = set()
    input_tokens = output_tokens = 0

    for _ in range(NON_STREAMED):
        raw = client(gateway, key_a).chat.completions.with_raw_response.create(model="fake-gpt", messages=USER, max_tokens=20)
        completion = raw.parse()
        ids |= {completion.id, raw.headers["x-request-id"]}
        input_tokens += completion.usage.prompt_tokens
        output_tokens += completion.usage.completion_tokens
    for _ in range(STREAMED):
        stream = client(gateway, key_a).chat.completions.create(
            model="fake-gpt", messages=USER, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
        for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage is not None:
                input_tokens += chunk.usage.prompt_tokens
                output_tokens += chunk.usage.completion_tokens
    unknown = f"no-such-model-{secrets.token_hex(4)}"
    with pytest.raises(openai.NotFoundError) as not_found:
        client(gateway, key_a).chat.completions.create(model=unknown, messages=USER)
    fake_openai.enqueue(*[Script(status=500, error={"error": {"message": "boom", "type": "server_error"}})] * 3)
    with pytest.raises(openai.APIStatusError) as upstream_failed:
        client(gateway, key_a).chat.completions.create(model="breaker-test", messages=USER, max_tokens=10)
    upstream_calls = sum(1 for body in fake_openai.received if body.get("model") == "breaker-model")
    fake_openai.scripts.clear()

    client(gateway, key_b).chat.completions.create(model="fake-gpt", messages=USER, max_tokens=10)
    with pytest.raises(openai.RateLimitError) as limited:
        client(gateway, key_b).chat.completions.create(model="fake-gpt", messages=USER, max_tokens=10)
    with pytest.raises(openai.APIStatusError) as short:
        client(gateway, key_c).chat.completions.create(model="luxury", messages=USER, max_tokens=200_000)
    assert short.value.status_code == 402

    deadline = time.monotonic() + 10
    while True:  # a stream is observed as it closes, just after the client has its last chunk
        text = scrape(gateway)
        samples = parse(text)
        if sum(of(samples, "emporion_requests_total", organization=org_a).values()) >= NON_STREAMED + STREAMED + 2:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)

    requests = samples["emporion_requests_total"]
    served_a = (("model", "fake-gpt"), ("organization", org_a), ("outcome", "completed"), ("provider", "fake"), ("status", "200"))
    assert requests[served_a] == NON_STREAMED + STREAMED
    assert of(samples, "emporion_requests_total", organization=org_a, model="unknown") == {
        (("model", "unknown"), ("organization", org_a), ("outcome", "refused"), ("provider", "none"), ("status", "404")): 1
    }
    failed = of(samples, "emporion_requests_total", organization=org_a, model="breaker-test")
    assert list(failed.values()) == [1] and dict(next(iter(failed)))["status"] == str(upstream_failed.value.status_code)
    assert of(samples, "emporion_requests_total", organization=org_b) == {
        (("model", "fake-gpt"), ("organization", org_b), ("outcome", "completed"), ("provider", "fake"), ("status", "200")): 1,
        (("model", "fake-gpt"), ("organization", org_b), ("outcome", "refused"), ("provider", "none"), ("status", "429")): 1,
    }
    assert of(samples, "emporion_requests_total", organization=org_c) == {
        (("model", "luxury"), ("organization", org_c), ("outcome", "refused"), ("provider", "none"), ("status", "402")): 1
    }

    errors = {
        (dict(key)["organization"], dict(key)["status"], dict(key)["error"]): value
        for key, value in samples["emporion_request_errors_total"].items()
        if dict(key)["organization"] in (org_a, org_b, org_c)
    }
    upstream_error = upstream_failed.value.body["code"] or upstream_failed.value.body["type"]
    assert errors == {
        (org_a, "404", not_found.value.body["code"]): 1,
        (org_a, str(upstream_failed.value.status_code), upstream_error): 1,
        (org_b, "429", limited.value.body["code"]): 1,
        (org_c, "402", "insufficient_credits"): 1,
    }
    assert of(samples, "emporion_rate_limit_refusals_total", organization=org_b) == {
        (("model", "fake-gpt"), ("organization", org_b)): 1
    }
    assert not of(samples, "emporion_rate_limit_refusals_total", organization=org_a)

    # the histograms: every fake-gpt request served by "fake" (A's and B's), TTFT and speed of the streams
    routed = {"model": "fake-gpt", "provider": "fake"}
    assert of(samples, "emporion_request_duration_seconds_count", **routed) == {(("model", "fake-gpt"), ("provider", "fake")): 6}
    assert of(samples, "emporion_request_duration_seconds_bucket", le="+Inf", **routed).popitem()[1] == 6
    assert of(samples, "emporion_time_to_first_token_seconds_count", **routed).popitem()[1] == STREAMED
    assert of(samples, "emporion_output_tokens_per_second_count", **routed).popitem()[1] == STREAMED
    assert of(samples, "emporion_request_duration_seconds_sum", **routed).popitem()[1] > 0

    tokens = of(samples, "emporion_tokens_total", organization=org_a, model="fake-gpt")
    assert tokens[(("kind", "input"), ("model", "fake-gpt"), ("organization", org_a), ("provider", "fake"))] == input_tokens
    assert tokens[(("kind", "output"), ("model", "fake-gpt"), ("organization", org_a), ("provider", "fake"))] == output_tokens
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        charged = db.execute(
            "SELECT SUM(cost_nanos) FROM requests WHERE org_id = ? AND status = 'completed'", [org_a]
        ).fetchone()[0]
    assert charged > 0
    assert of(samples, "emporion_cost_nanos_total", organization=org_a, model="fake-gpt").popitem()[1] == charged

    # what is read at scrape time: the failing deployment's upstream calls and breaker, the holds
    deployment = {"upstream": "fake", "deployment": "breaker-model"}
    assert of(samples, "emporion_upstream_errors_total", **deployment).popitem()[1] == upstream_calls >= 1
    assert of(samples, "emporion_upstream_requests_total", **deployment).popitem()[1] == upstream_calls
    states = {dict(key)["state"]: value for key, value in of(samples, "emporion_circuit_breaker_state", **deployment).items()}
    assert sorted(states) == ["closed", "half_open", "open"] and sum(states.values()) == 1
    assert of(samples, "emporion_upstream_errors_total", upstream="fake", deployment="gpt-fake-upstream").popitem()[1] == 0
    assert samples["emporion_holds_open"][()] >= 0 and samples["emporion_holds_in_memory"][()] >= 0
    assert "emporion_engine_queue_depth" not in samples  # the engine is off: no engine, no series

    # no label carries a request id, a key, a key id, or a model name the client made up
    values = {value for series in samples.values() for key in series for _, value in key}
    secret = ids | {key_a, key_b, key_c, key_id_a, key_id_b, key_id_c, unknown}
    assert len(ids) > NON_STREAMED
    assert not [value for value in values if any(s in value for s in secret)]
    assert not [s for s in secret if s in text]


def test_moderation_flags_are_described_and_zero_until_screening_lands(remote_gateway):
    families = {family.name: family for family in text_string_to_metric_families(scrape(remote_gateway))}
    assert families["emporion_moderation_flags"].type == "counter"
    assert families["emporion_moderation_flags"].samples == []


def app_with(tmp_path, metrics: str, host: str = "203.0.113.7") -> TestClient:
    """An app of its own (engine off, no upstream) with this ``[metrics]``, its client at ``host``."""
    (tmp_path / "config.toml").write_text(f"[engine]\nenabled = false\n\n[embeddings]\nenabled = false\n\n[metrics]\n{metrics}\n")
    return TestClient(build_app(load_settings(tmp_path)), client=(host, 40000))


def test_a_configured_token_is_required_from_anywhere(tmp_path):
    with app_with(tmp_path, 'token = "scrape-secret"') as http:
        assert http.get("/metrics").status_code == 401
        wrong = http.get("/metrics", headers={"authorization": "Bearer not-it"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_metrics_token"
        right = http.get("/metrics", headers={"authorization": "Bearer scrape-secret"})
        assert right.status_code == 200
        assert "emporion_requests" in {family.name for family in text_string_to_metric_families(right.text)}


def test_without_a_token_only_loopback_clients_may_scrape(tmp_path):
    with app_with(tmp_path, "") as http:
        refused = http.get("/metrics")
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_denied"
    with TestClient(http.app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/metrics").status_code == 200
    with TestClient(http.app, client=("::1", 40000)) as local:
        assert local.get("/metrics").status_code == 200


def test_metrics_switched_off_answer_404(tmp_path):
    with app_with(tmp_path, "enabled = false", host="127.0.0.1") as http:
        answer = http.get("/metrics")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "metrics_disabled"
