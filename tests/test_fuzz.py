"""Every route fuzzed from the published ``/openapi.json`` (schemathesis, valid and invalid input)
against a real ``emporion serve`` in front of fake upstreams: no 5xx, every error in its API's
envelope, every answer of the declared type, and the keep-alive connection kept throughout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from emporion.api.openapi import OPERATIONS, document
from emporion.app import build_app
from emporion.settings import load_settings
from tests.conftest import Gateway, emporion, start_gateway, stop_gateway

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))  # per operation, valid and invalid input: about 1,000 requests in all
MODELS = ["fake-gpt", "fake-claude"]  # a generation body's model is sometimes one that exists

CONFIG = """
[engine]
enabled = false

[embeddings]
enabled = false

[[upstreams]]
name = "fake"
base_url = "{openai}/v1"

[[upstreams]]
name = "anthropic-fake"
adapter = "anthropic"
base_url = "{anthropic}/v1"

[models."fake-gpt"]
upstream = "fake"
upstream_model = "gpt-fake-upstream"
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[models."fake-claude"]
upstream = "anthropic-fake"
upstream_model = "claude-fake-1"

[tiers.operator]
requests_per_minute = 1000000
tokens_per_minute = 1000000000
max_concurrent = 1000
"""


@dataclass
class Target:
    gateway: Gateway  # its key: the operator's, for /admin
    api_key: str  # for /v1
    session: requests.Session
    ids: dict[str, list[str]]  # path parameter -> ids that exist (organizations, a key, a generation)

    def headers(self, path: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway.key if path.startswith('/admin') else self.api_key}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory, fake_openai, fake_anthropic) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    (data_dir / "config.toml").write_text(CONFIG.format(openai=fake_openai.url, anthropic=fake_anthropic.url))
    key = emporion("keys", "create", "--kind", "operator", data_dir=data_dir).stdout.strip()
    api_key = emporion("keys", "create", data_dir=data_dir).stdout.strip()
    gateway = start_gateway(data_dir, key)
    with requests.Session() as session:
        yield Target(gateway, api_key, session, _existing(gateway))
    stop_gateway(gateway.process)
    assert "Traceback" not in gateway.log.read_text(), "the server logged an unexpected error"


def _existing(gateway: Gateway) -> dict[str, list[str]]:
    """Ids for the fuzzer to use beside the ones it makes up, so that it gets past the 404s: a
    reseller and its customer (with credit, a member and a key) and a generation of the customer."""
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=30) as http:
        reseller = http.post("/admin/v1/organizations", json={"name": "fuzz-reseller"}).json()["id"]
        customer = http.post("/admin/v1/organizations", json={"name": "fuzz-customer", "parent_id": reseller}).json()["id"]
        http.post(f"/admin/v1/organizations/{customer}/credits", json={"amount_usd": "5", "kind": "grant"}).raise_for_status()
        member = http.post(f"/admin/v1/organizations/{customer}/members", json={"email": "a@fuzz.example"}).json()["id"]
        created = http.post(f"/admin/v1/organizations/{customer}/keys", json={"label": "fuzz"}).json()
        chat = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        answer = http.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {created['key']}"})
        answer.raise_for_status()
        line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": chat}
        as_customer = {"Authorization": f"Bearer {created['key']}"}
        file = http.post(
            "/v1/files", files={"file": ("in.jsonl", orjson.dumps(line))}, data={"purpose": "batch"}, headers=as_customer
        ).json()["id"]
        batch = {"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch_id = http.post("/v1/batches", json=batch, headers=as_customer).json()["id"]
    return {
        "file_id": [file],
        "batch_id": [batch_id],
        "org_id": [reseller, customer],
        "member_id": [member],
        "key_id": [created["id"]],
        "request_id": [answer.json()["id"]],
        "month": ["2026-12", "2025-01"],
        "model_id": MODELS,
    }


@schemathesis.check
def connection_kept(ctx, response, case) -> bool | None:
    """No answer, errors included, closes the client's keep-alive connection."""
    if response.headers.get("connection", [""])[0].lower() == "close":
        raise AssertionError(f"{case.method} {case.path} answered {response.status_code} with Connection: close")
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, connection_kept]

schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@schema.given(model=st.sampled_from([None, *MODELS]), plain=st.booleans(), known=st.booleans(), pick=st.integers(0, 1))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests every run: a failure here is a regression, not luck
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_a_5xx_or_leaves_the_envelope(case, model, plain, known, pick, target):
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
        if plain and "messages" in case.body:  # past validation to the upstream, every other field fuzzed
            case.body["messages"] = [{"role": "user", "content": "hi"}]
    for name in case.path_parameters or {}:
        if known and name in target.ids:
            case.path_parameters[name] = target.ids[name][pick % len(target.ids[name])]
    response = case.call(base_url=target.gateway.url, session=target.session, headers=target.headers(case.path), timeout=30)
    case.validate_response(response, checks=CHECKS)


def test_the_description_covers_every_route(tmp_path):
    (tmp_path / "config.toml").write_text("[engine]\nenabled = false\n\n[embeddings]\nenabled = false\n")
    app = build_app(load_settings(tmp_path))
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(op.method, op.path) for op in OPERATIONS}
    assert served == described


def test_openapi_json_is_served_without_a_key(target):
    answer = httpx.get(f"{target.gateway.url}/openapi.json", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == document()
    assert "/v1/chat/completions" in answer.json()["paths"]
    loaded = schemathesis.openapi.from_url(f"{target.gateway.url}/openapi.json")  # valid OpenAPI 3.1, or it raises
    paths = {result.ok().path for result in loaded.get_all_operations()}  # .ok() raises on an invalid operation
    assert paths == {op.template for op in OPERATIONS} - {"/openapi.json"}  # it leaves out the description's own URL
