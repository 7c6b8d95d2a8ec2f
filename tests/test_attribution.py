"""Cost attribution by end user and tags (the `user` field, `metadata`, the x-emporion-tags header)
in records, /v1/usage and statements; and zero-completion insurance. The gateway in this process,
engine off."""

from __future__ import annotations

import datetime as dt
import sqlite3

import httpx
import openai
import pytest

from tests.fakes.script import Script
from tests.test_metering import generation, nanos, new_key

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


def usage(gateway, key: str, **params) -> dict:
    response = httpx.get(f"{gateway.url}/v1/usage", params=params, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_user_metadata_and_header_tags_are_recorded_and_reported(gateway, fake_openai):
    key = new_key(gateway, "attribution")
    api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    ids = []
    for user, tags, metadata in (
        ("alice", "team-a, nightly", {"feature": "search"}),
        ("alice", "team-a", None),
        ("bob", "", {"feature": "search"}),
        (None, "team-b", None),
    ):
        fake_openai.enqueue(Script(prompt_tokens=10))
        extra = {"metadata": metadata} if metadata else {}
        answer = api.chat.completions.with_raw_response.create(
            model="luxury",
            messages=USER,
            max_tokens=5,
            user=user or openai.NOT_GIVEN,
            extra_headers={"x-emporion-tags": tags},
            extra_body=extra,
        )
        ids.append(answer.parse().id)
    first = generation(gateway, key, ids[0])["data"]
    assert first["user"] == "alice" and first["tags"] == ["team-a", "nightly", "feature:search"]
    assert generation(gateway, key, ids[3])["data"] == {
        **generation(gateway, key, ids[3])["data"],
        "user": None,
        "tags": ["team-b"],
    }
    each = nanos(10, 5)

    by_user = {row["group"]: row for row in usage(gateway, key, group_by="user")["data"]}
    assert {name: row["requests"] for name, row in by_user.items()} == {"alice": 2, "bob": 1, "": 1}
    assert by_user["alice"]["cost_nanos"] == 2 * each

    report = usage(gateway, key, group_by="tag")
    by_tag = {row["group"]: row["requests"] for row in report["data"]}
    assert by_tag == {"team-a": 2, "nightly": 1, "feature:search": 2, "team-b": 1}
    assert report["total"]["requests"] == 4 and report["total"]["cost_nanos"] == 4 * each  # each request once

    only_alice = usage(gateway, key, group_by="model", user="alice")
    assert only_alice["total"]["requests"] == 2 and only_alice["user"] == "alice"

    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    statement = httpx.get(f"{gateway.url}/v1/statements/{month}", headers={"authorization": f"Bearer {key}"}).json()
    assert {row["user"]: row["amount_nanos"] for row in statement["charges_by_user"]} == {
        "alice": -2 * each,
        "bob": -each,
        None: -each,
    }
    assert {row["tag"]: row["requests"] for row in statement["charges_by_tag"]}["feature:search"] == 2


@pytest.mark.parametrize("tags", ["a\tb", "x" * 200, ",".join(f"t{i}" for i in range(17))])
def test_tags_that_are_not_tags_are_a_400_naming_the_header(gateway, tags):
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "fake-gpt", "messages": USER},
        headers={"authorization": f"Bearer {gateway.key}", "x-emporion-tags": tags},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "x-emporion-tags"


def test_an_answer_with_no_output_that_ended_in_an_error_is_not_charged(gateway, fake_openai):
    key = new_key(gateway, "insured")
    api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    fake_openai.enqueue(Script(text="", finish_reason="error", prompt_tokens=5000))
    answer = api.chat.completions.with_raw_response.create(model="luxury", messages=USER, max_tokens=5)
    completion = answer.parse()
    assert completion.choices[0].finish_reason == "error" and answer.headers["x-emporion-cost"] == "0"
    record = generation(gateway, key, completion.id)["data"]
    assert (record["status"], record["tokens_prompt"], record["total_cost_nanos"]) == ("failed", 5000, 0)
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
        balance, held = db.execute("SELECT balance_nanos, held_nanos FROM accounts WHERE id = ?", [f"customer:{org}"]).fetchone()
    assert (balance, held) == (100 * 10**9, 0)
    # with output, or without an error, the prompt is charged as usual
    fake_openai.enqueue(Script(text="one", finish_reason="error", prompt_tokens=8), Script(text="", prompt_tokens=8))
    for _ in range(2):
        paid = api.chat.completions.create(model="luxury", messages=USER, max_tokens=5)
        record = generation(gateway, key, paid.id)["data"]
        assert record["total_cost_nanos"] == nanos(8, record["tokens_completion"]) > 0
