"""Model cards (`GET /v1/models/{id}/card`) and license gates: a model with `license_acceptance =
true` serves an organization only once that organization accepted its license (an admin key of
its own, or the operator), recorded in the audit trail. The gateway in this process, engine off,
with fake upstreams (conftest's `gated` model)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from emporion.catalog.builtin import GEMMA_ID, MINILM_ID, build_catalog
from emporion.catalog.cards import card_object
from emporion.core.prices import Price
from emporion.settings import ModelCard, ModelConfig, Settings
from tests.conftest import emporion

USER = [{"role": "user", "content": "hello"}]
GATED = "gated"
FREE = Price()


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


def _http(gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def _org_of(gateway, key: str) -> str:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        return db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]


def _key(gateway, org: str, kind: str = "api") -> str:
    return emporion("keys", "create", "--org", org, "--kind", kind, data_dir=gateway.data_dir).stdout.strip()


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def _chat(gateway, key: str, model: str = GATED) -> httpx.Response:
    with _http(gateway, key) as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": USER, "max_tokens": 5})


@pytest.fixture(scope="module")
def admin(gateway) -> str:
    """An admin key of the tests' organization (the one gateway.key belongs to)."""
    return _key(gateway, "tests", "admin")


# --- cards ---------------------------------------------------------------------------------------


def test_the_builtin_cards_say_what_their_publishers_say(tmp_path: Path):
    catalog = build_catalog(Settings(data_dir=tmp_path), str(tmp_path / "gemma.gguf"), [])
    gemma = card_object(catalog.get(GEMMA_ID), FREE, False, set())
    assert gemma["license"] == "gemma" and gemma["license_terms_url"] == "https://ai.google.dev/gemma/terms"
    assert gemma["license_acceptance_required"] is False  # the operator's to turn on
    assert gemma["release"] == "open-weights" and gemma["provider"] == "emporion-local" and gemma["owned_by"] == "google"
    assert "6 trillion tokens" in gemma["training_data"] and "Prohibited Use Policy" in gemma["limitations"]
    assert gemma["modalities"] == {"input": ["text"], "output": ["text"]}
    assert gemma["deployments"] == [{"upstream": "local:gemma-3-270m", "model": GEMMA_ID, "local": True}]
    assert gemma["pricing"] == {"prompt": "0", "completion": "0"} and gemma["context_length"] == 8192
    minilm = card_object(catalog.get(MINILM_ID), FREE, False, set())
    assert minilm["license"] == "apache-2.0" and minilm["license_terms_url"] == "https://www.apache.org/licenses/LICENSE-2.0"
    assert minilm["modalities"]["output"] == ["embeddings"] and "256 word pieces" in minilm["limitations"]
    assert minilm["evaluations"] == []


def test_the_config_changes_a_builtin_card_field_by_field(tmp_path: Path):
    settings = Settings(
        data_dir=tmp_path,
        models={GEMMA_ID: ModelConfig(license_acceptance=True, card=ModelCard(limitations="Ours: not for medical advice."))},
    )
    gemma = build_catalog(settings, str(tmp_path / "gemma.gguf"), []).get(GEMMA_ID)
    card = card_object(gemma, FREE, False, set())
    assert card["license_acceptance_required"] is True
    assert card["limitations"] == "Ours: not for medical advice."
    assert "6 trillion tokens" in card["training_data"]  # what the config does not set stays
    assert card["license_terms_url"] == "https://ai.google.dev/gemma/terms"


def test_the_card_of_a_configured_model(gateway):
    with _http(gateway, gateway.key) as http:
        card = http.get(f"/v1/models/{GATED}/card").json()
        plain = http.get("/v1/models/fake-gpt/card").json()
        model = http.get(f"/v1/models/{GATED}")  # the model object still answers beside its card
        missing = http.get("/v1/models/no-such-model/card")
    assert card["object"] == "model.card" and card["id"] == GATED
    assert card["license"] == "llama3.1" and card["license_terms_url"] == "https://example.invalid/terms"
    assert card["license_acceptance_required"] is True and card["accepted"] is False
    assert card["intended_uses"] == "Testing license gates." and card["training_data"] is None
    assert card["evaluations"] == [{"name": "Fake-Bench", "metric": "accuracy", "value": 42.5, "source": "tests/conftest.py"}]
    assert card["modalities"] == {"input": ["text", "image"], "output": ["text"]}
    assert card["deployments"] == [{"upstream": "fake", "model": "gated-model", "local": False}]
    assert plain["license"] == "proprietary" and plain["license_terms_url"] is None
    assert plain["license_acceptance_required"] is False and plain["intended_uses"] is None
    assert plain["pricing"] == {"prompt": "0.00000015", "completion": "0.0000006"} and plain["context_length"] == 128000
    assert model.status_code == 200 and model.json()["object"] == "model"
    _error(missing, 404, "model_not_found")


# --- the gate ------------------------------------------------------------------------------------


def test_a_gated_model_refuses_before_acceptance_and_sends_nothing(gateway, fake_openai):
    before = fake_openai.count()
    error = _error(_chat(gateway, gateway.key), 403, "license_not_accepted")
    assert "llama3.1" in error["message"] and "https://example.invalid/terms" in error["message"]
    assert f"/admin/v1/organizations/{_org_of(gateway, gateway.key)}/licenses" in error["message"]
    assert error["param"] == "model"
    # a fallback that is gated refuses too
    with _http(gateway, gateway.key) as http:
        fallback = http.post("/v1/chat/completions", json={"model": "fake-gpt", "models": [GATED], "messages": USER})
    _error(fallback, 403, "license_not_accepted")
    assert fake_openai.count() == before
    assert _chat(gateway, gateway.key, "fake-gpt").status_code == 200  # an ungated model serves as before


def test_only_the_organization_itself_or_the_operator_accepts(gateway, admin):
    tests_org = _org_of(gateway, gateway.key)
    path = f"/admin/v1/organizations/{tests_org}/licenses"
    with _http(gateway, gateway.key) as api:
        _error(api.post(path, json={"model": GATED}), 403, "admin_key_required")
    with _http(gateway, _key(gateway, "outsider", "admin")) as outsider:
        _error(outsider.post(path, json={"model": GATED}), 404, "organization_not_found")
    # a reseller's admin key reaches its customer, but may not accept a license on its behalf
    with _http(gateway, _key(gateway, "reseller", "admin")) as reseller:
        customer = reseller.post("/admin/v1/organizations", json={"name": "customer"}).json()["id"]
        _error(reseller.post(f"/admin/v1/organizations/{customer}/licenses", json={"model": GATED}), 403, "own_organization_only")
        made = reseller.post(f"/admin/v1/organizations/{customer}/keys", json={"kind": "admin"})
        customer_admin = made.json()["key"]
    with _http(gateway, customer_admin) as own:
        accepted = own.post(f"/admin/v1/organizations/{customer}/licenses", json={"model": GATED})
    assert accepted.status_code == 200, accepted.text
    with _http(gateway, admin) as http:
        _error(http.post(path, json={"model": "fake-gpt"}), 400, "license_acceptance_not_required")
        _error(http.post(path, json={"model": "no-such-model"}), 404, "model_not_found")
        _error(http.post(path, json={}), 400, "missing_required_parameter")
        assert http.get(path).json()["data"] == []  # nothing of that was recorded


def test_acceptance_is_audited_serves_the_organization_and_only_it(gateway, admin, fake_openai):
    tests_org = _org_of(gateway, gateway.key)
    path = f"/admin/v1/organizations/{tests_org}/licenses"
    _error(_chat(gateway, gateway.key), 403, "license_not_accepted")  # cached as not accepted, then forgotten
    with _http(gateway, admin) as http:
        accepted = http.post(path, json={"model": GATED})
        assert accepted.status_code == 200, accepted.text
        row = accepted.json()
        assert row["object"] == "license_acceptance" and row["model"] == GATED and row["license"] == "llama3.1"
        assert row["org_id"] == tests_org and row["accepted_by"] == f"key:{_admin_key_id(gateway, admin)}"
        again = http.post(path, json={"model": GATED})  # accepting again changes nothing
        assert again.status_code == 200 and again.json()["id"] == row["id"]
        events = http.get("/admin/v1/audit", params={"action": "license.accept", "org_id": tests_org}).json()["data"]
        listed = http.get(path).json()["data"]
    assert len(events) == 1
    assert events[0]["object_id"] == row["id"] and events[0]["org_id"] == tests_org and events[0]["before"] is None
    assert events[0]["after"]["model"] == GATED and events[0]["actor"]["key_id"] == _admin_key_id(gateway, admin)
    assert [entry["model"] for entry in listed] == [GATED]
    before = fake_openai.count()
    served = _chat(gateway, gateway.key)
    assert served.status_code == 200, served.text
    assert fake_openai.count() == before + 1 and fake_openai.received[-1]["model"] == "gated-model"
    with _http(gateway, gateway.key) as http:
        assert http.get(f"/v1/models/{GATED}/card").json()["accepted"] is True
    # per organization: another one is still refused, and its card says so
    _error(_chat(gateway, gateway.bank_key), 403, "license_not_accepted")
    with _http(gateway, gateway.bank_key) as http:
        assert http.get(f"/v1/models/{GATED}/card").json()["accepted"] is False
    assert fake_openai.count() == before + 1


def _admin_key_id(gateway, key: str) -> str:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        return db.execute("SELECT id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]


def test_the_cli_accepts_and_lists_as_the_operator(gateway):
    key = _key(gateway, "cli-org")  # never used before: nothing cached of it
    refused = emporion("licenses", "accept", "cli-org", "fake-gpt", data_dir=gateway.data_dir, check=False)
    assert refused.returncode == 2 and "does not require" in refused.stderr
    unknown = emporion("licenses", "accept", "cli-org", "no-such-model", data_dir=gateway.data_dir, check=False)
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr
    emporion("licenses", "accept", "cli-org", GATED, data_dir=gateway.data_dir)
    listed = emporion("licenses", "list", "cli-org", data_dir=gateway.data_dir).stdout
    assert GATED in listed and "llama3.1" in listed and "cli:" in listed
    assert _chat(gateway, key).status_code == 200
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        actor = db.execute("SELECT actor_kind FROM audit_events WHERE action = 'license.accept' ORDER BY id DESC").fetchone()
    assert actor == ("cli",)
