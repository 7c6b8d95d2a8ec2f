"""The request log: every call (refused ones too) recorded off the request path with what the
operator needs, read through /admin/v1/requests and `emporion requests`; bodies kept only under the
organization's retention policy and purged when their days are up. The gateway in this process,
engine off, with fake upstreams."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import openai
import pytest

from emporion.store import request_log as store
from emporion.store.session import open_database
from tests.conftest import emporion
from tests.fakes.script import Script
from tests.test_metering import nanos

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


def org_of(gateway, key: str) -> str:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        return db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]


def new_org(gateway, name: str) -> tuple[str, str, httpx.Client]:
    """An API key and an admin key of a new organization, and an admin client."""
    key = emporion("keys", "create", "--org", name, data_dir=gateway.data_dir).stdout.strip()
    admin = emporion("keys", "create", "--org", name, "--kind", "admin", data_dir=gateway.data_dir).stdout.strip()
    return key, org_of(gateway, key), httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {admin}"})


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def listed(admin: httpx.Client, **params) -> dict:
    answer = admin.get("/admin/v1/requests", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_every_call_is_logged_with_what_the_operator_needs(gateway, fake_openai):
    key, org, admin = new_org(gateway, "log-calls")
    api = client(gateway, key)
    fake_openai.enqueue(Script(prompt_tokens=10), Script(text="one two three", prompt_tokens=5, chunk_delay_s=0.01))
    done = api.chat.completions.with_raw_response.create(
        model="luxury", messages=USER, max_tokens=5, user="alice", extra_headers={"x-emporion-tags": "team-a"}
    ).parse()
    stream = api.chat.completions.create(model="luxury", messages=USER, max_tokens=5, stream=True)
    streamed_id = [chunk.id for chunk in stream][0]
    with pytest.raises(openai.APIStatusError):  # 402: the worst case is more than the credit
        api.chat.completions.create(model="luxury", messages=USER, max_tokens=900_000)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="no-such-model", messages=USER)
    fake_openai.enqueue(*[Script(status=500, error={"error": {"message": "down", "type": "server_error"}})] * 6)
    with pytest.raises(openai.APIStatusError):
        api.chat.completions.create(model="luxury", messages=USER, max_tokens=5)

    entries = listed(admin)["data"]
    assert len(entries) == 5
    by_id = {entry["id"]: entry for entry in entries}
    first = by_id[done.id]
    assert (first["status"], first["http_status"], first["model"], first["served_model"]) == (
        "completed",
        200,
        "luxury",
        "luxury",
    )
    assert (first["upstream"], first["deployment"], first["attempts"]) == ("fake", "fake/luxury-model", 1)
    assert (first["input_tokens"], first["output_tokens"], first["cost_nanos"]) == (10, 5, nanos(10, 5))
    assert (first["user"], first["tags"], first["client_address"], first["finish_reason"]) == (
        "alice",
        ["team-a"],
        "127.0.0.1",
        "stop",
    )
    assert first["org_id"] == org and first["latency_ms"] >= 0 and not first["streamed"] and first["ttft_ms"] is None
    streamed = by_id[streamed_id]
    assert streamed["streamed"] and streamed["status"] == "completed" and streamed["output_tokens"] == 3
    assert streamed["ttft_ms"] is not None and streamed["tokens_per_s"] > 0
    statuses = sorted((e["status"], e["http_status"], e["error_code"]) for e in entries if e["status"] != "completed")
    assert statuses == [
        ("failed", 502, "upstream_error"),
        ("refused", 402, "insufficient_credits"),
        ("refused", 404, "model_not_found"),
    ]
    assert all("body" not in entry for entry in entries)  # zero data retention by default
    with sqlite3.connect(gateway.data_dir / "request_log.db") as log, sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        logged = log.execute("SELECT count(*) FROM request_log WHERE org_id = ?", [org]).fetchone()[0]
        beside = db.execute("SELECT count(*) FROM request_log").fetchone()[0]
    assert (logged, beside) == (5, 0)  # on SQLite the log has a file of its own: no wait on the ledger's write lock
    assert admin.get(f"/admin/v1/requests/{done.id}").json().get("body") is None


def test_filters_pages_and_reach(gateway, fake_openai):
    key, org, admin = new_org(gateway, "log-pages")
    api = client(gateway, key)
    for _ in range(3):
        api.chat.completions.create(model="fake-gpt", messages=USER, max_tokens=5)
    api.chat.completions.create(model="conf-openai_compat", messages=USER, max_tokens=5)
    assert [e["model"] for e in listed(admin, model="fake-gpt")["data"]] == ["fake-gpt"] * 3
    first = listed(admin, limit=2)
    assert len(first["data"]) == 2 and first["has_more"]
    rest = listed(admin, limit=2, after=first["last_id"])
    assert len(rest["data"]) == 2 and not rest["has_more"]
    assert not {e["id"] for e in first["data"]} & {e["id"] for e in rest["data"]}
    newest = first["data"][0]["created_ms"]
    assert listed(admin, since=newest // 1000 + 10)["data"] == []
    # another organization's admin sees none of it, and its ids are unknown to it
    _, other_org, other = new_org(gateway, "log-other")
    assert listed(other)["data"] == []
    assert other.get("/admin/v1/requests", params={"org_id": org}).status_code == 404
    assert other.get(f"/admin/v1/requests/{first['data'][0]['id']}").status_code == 404
    bad = admin.get("/admin/v1/requests", params={"status": "weird"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    api_key_answer = httpx.get(f"{gateway.url}/admin/v1/requests", headers={"authorization": f"Bearer {key}"})
    assert api_key_answer.status_code == 403


def test_bodies_are_kept_only_under_a_retention_policy_and_purged_when_due(gateway, fake_openai):
    key, org, admin = new_org(gateway, "log-retained")
    api = client(gateway, key)
    changed = admin.patch(f"/admin/v1/organizations/{org}", json={"retention_days": 7})
    assert changed.status_code == 200 and changed.json()["retention_days"] == 7
    fake_openai.enqueue(Script(text="kept answer"), Script(text="streamed kept answer"))
    whole = api.chat.completions.create(model="fake-gpt", messages=USER, max_tokens=5)
    streamed = [c.id for c in api.chat.completions.create(model="fake-gpt", messages=USER, max_tokens=5, stream=True)][0]
    shown = admin.get(f"/admin/v1/requests/{whole.id}").json()
    assert shown["body"]["prompt"]["messages"] == USER and shown["body"]["completion"] == "kept answer"
    assert shown["body"]["expires_at"] > time.time() + 6 * 86_400
    assert admin.get(f"/admin/v1/requests/{streamed}").json()["body"]["completion"] == "streamed kept answer"

    async def purge():  # the sweeper's step, once the bodies are due
        with sqlite3.connect(gateway.data_dir / "request_log.db") as db:  # the log's own file, beside the ledger's
            db.execute("UPDATE request_bodies SET expires_at = ? WHERE org_id = ?", [int(time.time()) - 1, org])
        db = await open_database(f"sqlite+aiosqlite:///{gateway.data_dir / 'request_log.db'}")
        try:
            return await store.purge_expired(db)
        finally:
            await db.close()

    import asyncio

    assert asyncio.run(purge()) >= 2
    after = admin.get(f"/admin/v1/requests/{whole.id}").json()
    assert "body" not in after and after["status"] == "completed"  # the entry stays
    assert api.get("/generation", cast_to=object, options={"params": {"id": whole.id}})["data"]["id"] == whole.id  # and the bill
    admin.patch(f"/admin/v1/organizations/{org}", json={"retention_days": 0})
    fake_openai.enqueue(Script(text="not kept"))
    gone = api.chat.completions.create(model="fake-gpt", messages=USER, max_tokens=5)
    assert "body" not in admin.get(f"/admin/v1/requests/{gone.id}").json()


def test_the_cli_lists_and_shows_requests(gateway):
    key, org, admin = new_org(gateway, "log-cli")
    made = client(gateway, key).chat.completions.create(model="fake-gpt", messages=USER, max_tokens=5)
    listed(admin)  # the gateway has written its log
    table = emporion("requests", "list", "--org", "log-cli", data_dir=gateway.data_dir).stdout
    assert made.id[:20] in table and "completed" in table
    shown = json.loads(emporion("requests", "show", made.id, data_dir=gateway.data_dir).stdout)
    assert shown["id"] == made.id and shown["org_id"] == org and shown["model"] == "fake-gpt"
    missing = emporion("requests", "show", "chatcmpl-nope", data_dir=gateway.data_dir, check=False)
    assert missing.returncode == 1
    retention = emporion("orgs", "set-retention", "log-cli", "3", data_dir=gateway.data_dir)
    assert "3 days" in retention.stderr
