"""Presets: `model: "@preset/NAME"` applies an organization's stored settings (model or models,
provider preferences, system prompt, parameters), managed through the admin API and the CLI.
The gateway in this process, engine off, with fake upstreams."""

from __future__ import annotations

import json
import sqlite3

import httpx
import openai
import pytest

from tests.conftest import emporion
from tests.fakes.script import Script

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


@pytest.fixture(scope="module")
def admin(gateway) -> httpx.Client:
    """An admin key of the tests' organization (the one gateway.key belongs to)."""
    key = emporion("keys", "create", "--org", "tests", "--kind", "admin", data_dir=gateway.data_dir).stdout.strip()
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def org_id(gateway) -> str:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        return db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [gateway.key[:8]]).fetchone()[0]


@pytest.fixture(autouse=True)
def clean_fake(fake_openai, fake_gemini):
    for fake in (fake_openai, fake_gemini):
        fake.scripts.clear()
    yield


def client(gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key or gateway.key, max_retries=0)


def test_a_preset_supplies_the_model_system_prompt_and_parameters(gateway, admin, org_id, fake_openai):
    preset = {
        "name": "support",
        "model": "fake-gpt",
        "system": "You are terse.",
        "parameters": {"temperature": 0.1, "max_tokens": 33},
    }
    made = admin.post(f"/admin/v1/organizations/{org_id}/presets", json=preset)
    assert made.status_code == 200, made.text
    assert made.json()["object"] == "preset" and made.json()["system"] == "You are terse."
    answer = client(gateway).chat.completions.with_raw_response.create(model="@preset/support", messages=USER, temperature=0.7)
    assert answer.parse().model == "fake-gpt" and answer.headers["x-emporion-model"] == "fake-gpt"
    sent = fake_openai.received[-1]
    assert sent["model"] == "gpt-fake-upstream"
    assert sent["messages"] == [{"role": "system", "content": "You are terse."}, *USER]
    assert sent["temperature"] == 0.7 and sent["max_tokens"] == 33  # the request's own field wins; the preset fills in


def test_a_preset_with_models_falls_back_in_order(gateway, admin, org_id, fake_openai, fake_gemini):
    preset = {"name": "resilient", "models": ["fake-gpt", "conf-gemini"]}
    assert admin.post(f"/admin/v1/organizations/{org_id}/presets", json=preset).status_code == 200
    fake_openai.enqueue(Script(status=404, error={"error": {"message": "no such model here", "type": "invalid_request_error"}}))
    answer = client(gateway).chat.completions.with_raw_response.create(model="@preset/resilient", messages=USER)
    assert answer.headers["x-emporion-model"] == "conf-gemini"
    assert fake_gemini.paths[-1].startswith("/v1beta/models/gemini-fake-1:generateContent")


def test_presets_work_through_the_responses_api_too(gateway, admin, org_id, fake_openai):
    preset = {"name": "resp", "model": "fake-gpt", "system": "Preset system."}
    assert admin.post(f"/admin/v1/organizations/{org_id}/presets", json=preset).status_code == 200
    response = client(gateway).responses.create(model="@preset/resp", input="hi", store=False)
    assert response.output_text == "Hello from the fake upstream."
    assert fake_openai.received[-1]["messages"][0] == {"role": "system", "content": "Preset system."}


def test_presets_are_listed_replaced_and_deleted_and_each_change_audited(gateway, admin, org_id):
    base = f"/admin/v1/organizations/{org_id}/presets"
    first = admin.post(base, json={"name": "cycle", "model": "fake-gpt"}).json()
    again = admin.post(base, json={"name": "cycle", "model": "conf-gemini"}).json()
    assert again["id"] == first["id"] and again["model"] == "conf-gemini"
    assert "cycle" in [p["name"] for p in admin.get(base).json()["data"]]
    assert admin.get(f"{base}/cycle").json()["model"] == "conf-gemini"
    assert admin.delete(f"{base}/cycle").json()["deleted"] is True
    assert admin.get(f"{base}/cycle").status_code == 404
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="@preset/cycle", messages=USER)
    assert info.value.body["code"] == "preset_not_found" and info.value.body["param"] == "model"
    actions = [e["action"] for e in admin.get("/admin/v1/audit", params={"object_id": first["id"]}).json()["data"]]
    assert actions[:3] == ["preset.delete", "preset.set", "preset.set"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"name": "x"}, "model"),
        ({"name": "Bad Name", "model": "fake-gpt"}, "name"),
        ({"name": "x", "model": "no-such-model"}, "model"),
        ({"name": "x", "model": "fake-gpt", "parameters": {"temperature": 9}}, "parameters.temperature"),
        ({"name": "x", "model": "fake-gpt", "parameters": {"messages": []}}, "parameters"),
    ],
)
def test_a_preset_that_could_not_serve_is_refused_when_set(admin, org_id, body, param):
    answer = admin.post(f"/admin/v1/organizations/{org_id}/presets", json=body)
    assert answer.status_code in (400, 404) and answer.json()["error"]["param"] == param


def test_a_preset_is_its_organizations_only(gateway, admin, org_id):
    assert admin.post(f"/admin/v1/organizations/{org_id}/presets", json={"name": "mine", "model": "fake-gpt"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client(gateway, gateway.bank_key).chat.completions.create(model="@preset/mine", messages=USER)


def test_the_cli_manages_presets(gateway, fake_openai):
    data = gateway.data_dir
    key = emporion("keys", "create", "--org", "presets-cli", data_dir=data).stdout.strip()
    made = ["presets", "set", "presets-cli", "cli-made", "--model", "fake-gpt", "--system", "From the CLI.", "--param", "seed=7"]
    emporion(*made, data_dir=data)
    assert "cli-made" in emporion("presets", "list", "presets-cli", data_dir=data).stdout
    shown = json.loads(emporion("presets", "show", "presets-cli", "cli-made", data_dir=data).stdout)
    assert shown["parameters"] == {"seed": 7} and shown["model"] == "fake-gpt"
    client(gateway, key).chat.completions.create(model="@preset/cli-made", messages=USER)
    assert fake_openai.received[-1]["seed"] == 7 and fake_openai.received[-1]["messages"][0]["content"] == "From the CLI."
    bad = emporion("presets", "set", "presets-cli", "broken", "--param", "temperature=hot", data_dir=data, check=False)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    emporion("presets", "delete", "presets-cli", "cli-made", data_dir=data)
    assert "cli-made" not in emporion("presets", "list", "presets-cli", data_dir=data).stdout
