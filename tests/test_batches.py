"""Files and batches through the official openai SDK, against the gateway in this process (engine
off) and, for a restart, an `emporion serve` killed mid-batch: uploads checked line by line, lines
run through the request path at the batch discount, a line that cannot be held failing alone,
cancel, expiry, and a batch that resumes after kill -9 without charging any line twice."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
from decimal import Decimal

import openai
import orjson
import pytest

from tests.conftest import emporion, start_gateway, stop_gateway
from tests.fakes.script import Script
from tests.test_metering import COMPLETION, PROMPT, nanos, new_key

pytestmark = pytest.mark.usefixtures("clean_fake_openai")


USER = [{"role": "user", "content": "hello"}]
FAKE_PRICE = (Decimal("0.00000015"), Decimal("0.0000006"))  # fake-gpt, USD per prompt / completion token


@pytest.fixture(scope="module")
def gateway(remote_gateway):
    return remote_gateway


def client(gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key or gateway.key, max_retries=0)


def jsonl(*lines: dict | str) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = "fake-gpt", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": USER, **body},
    }


def upload(api: openai.OpenAI, content: bytes, purpose: str = "batch", name: str = "lines.jsonl"):
    return api.files.create(file=(name, io.BytesIO(content)), purpose=purpose)


def wait_for(api: openai.OpenAI, batch_id: str, statuses=("completed", "failed", "cancelled", "expired"), timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        batch = api.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch.status}"
        time.sleep(0.1)


def read_lines(api: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    entries = [orjson.loads(line) for line in api.files.content(file_id).content.splitlines() if line]
    return {entry["custom_id"]: entry for entry in entries}


def balance(gateway, key: str) -> tuple[int, int]:
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
        return db.execute("SELECT balance_nanos, held_nanos FROM accounts WHERE id = ?", [f"customer:{org}"]).fetchone()


# --- files ---------------------------------------------------------------------------------------


def test_a_file_is_uploaded_listed_retrieved_read_and_deleted(gateway):
    api = client(gateway)
    content = jsonl(chat_line("a"), chat_line("b"))
    made = upload(api, content, name="two.jsonl")
    assert (made.object, made.purpose, made.filename, made.bytes, made.status) == (
        "file",
        "batch",
        "two.jsonl",
        len(content),
        "processed",
    )
    assert made.id.startswith("file-")
    assert made.id in [f.id for f in api.files.list(purpose="batch")]
    assert made.id not in [f.id for f in api.files.list(purpose="fine-tune")]
    assert api.files.retrieve(made.id).bytes == len(content)
    assert api.files.content(made.id).content == content
    assert api.files.delete(made.id).deleted is True
    with pytest.raises(openai.NotFoundError) as info:
        api.files.retrieve(made.id)
    assert info.value.body["code"] == "file_not_found"


def test_files_list_in_pages_newest_first(gateway):
    api = client(gateway, new_key(gateway, "files-pages"))
    made = [upload(api, jsonl(chat_line(str(i))), name=f"{i}.jsonl").id for i in range(3)]
    first = api.files.list(limit=2)
    assert [f.id for f in first.data] == made[::-1][:2] and first.has_more
    rest = api.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in rest.data] == [made[0]] and not rest.has_more
    assert [f.id for f in api.files.list(order="asc")] == made


def test_a_file_is_its_organizations_only(gateway):
    made = upload(client(gateway), jsonl(chat_line("a")))
    other = client(gateway, gateway.bank_key)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(made.id)
    with pytest.raises(openai.NotFoundError):
        other.files.delete(made.id)
    assert made.id not in [f.id for f in other.files.list()]
    with pytest.raises(openai.BadRequestError):
        other.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")


@pytest.mark.parametrize(
    "lines, said",
    [
        ((chat_line("a"), "{not json"), "Line 2 is not valid JSON"),
        ((chat_line("a"), chat_line("a")), "Line 2: the custom_id 'a' is used by an earlier line"),
        (({**chat_line("a"), "url": "/v1/images"},), "Line 1: `url` must be one of"),
        (({**chat_line("a"), "method": "GET"},), "Line 1: `method` must be 'POST'"),
        ((chat_line("a"), chat_line("b", temperature=7)), "Line 2: Invalid 'temperature'"),
        (
            ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": USER}},),
            "Line 1: Missing required parameter: 'model'",
        ),
        ((chat_line("a", stream=True),), "Line 1: batch requests cannot be streamed"),
        ((chat_line("a"), {"method": "POST"}), "Line 2 needs a `custom_id`"),
    ],
)
def test_a_batch_file_is_checked_line_by_line_on_upload(gateway, lines, said):
    with pytest.raises(openai.BadRequestError) as info:
        upload(client(gateway), jsonl(*lines))
    assert info.value.body["code"] == "invalid_file" and info.value.body["param"] == "file"
    assert said in info.value.body["message"]


@pytest.mark.parametrize(
    "lines, said",
    [
        (({"messages": [{"role": "user", "content": "hi"}]},), "Line 1 has no assistant message"),
        (
            (
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                {"prompt": "a", "completion": "b"},
            ),
            "Line 2 is in the completion format",
        ),
        (({"prompt": "a", "completion": "b"}, {"prompt": "a"}), "Line 2 needs `messages`"),
        (({"messages": [{"role": "robot", "content": "hi"}]},), "Line 1: messages.[0] needs a `role`"),
    ],
)
def test_a_training_file_is_checked_line_by_line_on_upload(gateway, lines, said):
    with pytest.raises(openai.BadRequestError) as info:
        upload(client(gateway), jsonl(*lines), purpose="fine-tune")
    assert said in info.value.body["message"]


def test_good_training_files_in_either_format_are_taken(gateway):
    api = client(gateway)
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    assert upload(api, jsonl(chat, chat), purpose="fine-tune").purpose == "fine-tune"
    assert upload(api, jsonl({"prompt": "2+2=", "completion": "4"}), purpose="fine-tune").bytes > 0


def test_upload_errors(gateway):
    api = client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        upload(api, b"x", purpose="selfies")
    assert info.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as info:
        upload(api, b"")
    assert "no lines" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):  # not multipart
        api.post("/files", cast_to=object, body={"purpose": "batch"})


# --- batches -------------------------------------------------------------------------------------


def test_a_chat_batch_runs_every_line_at_the_batch_discount(gateway, fake_openai):
    api = client(gateway)
    lines = [chat_line(f"q{i}", max_tokens=20) for i in range(5)]
    made = upload(api, jsonl(*lines))
    batch = api.batches.create(
        input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert (batch.object, batch.status, batch.metadata) == ("batch", "validating", {"job": "nightly"})
    assert batch.expires_at == batch.created_at + 86_400
    done = wait_for(api, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = read_lines(api, done.output_file_id)
    assert sorted(out) == [f"q{i}" for i in range(5)]
    full = 7 * FAKE_PRICE[0] + 5 * FAKE_PRICE[1]  # the fake's 7 prompt tokens, 5 words
    for entry in out.values():
        assert entry["id"].startswith("batch_req_") and entry["error"] is None
        response = entry["response"]
        assert response["status_code"] == 200 and response["request_id"] == response["body"]["id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Hello from the fake upstream."
        assert Decimal(str(body["usage"]["cost"])) == full / 2  # [batches] discount_percent = 50
        record = api.get("/generation", cast_to=object, options={"params": {"id": response["request_id"]}})["data"]
        assert record["total_cost_nanos"] == int(full / 2 * 10**9)
    assert done.usage.input_tokens == 35 and done.usage.output_tokens == 25
    assert fake_openai.received[-1]["max_tokens"] == 20
    output = api.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output" and output.expires_at is not None
    assert done.id in [b.id for b in api.batches.list()]
    by_tag = api.get("/usage", cast_to=object, options={"params": {"group_by": "tag"}})["data"]
    assert {row["group"]: row["requests"] for row in by_tag}[f"batch:{done.id}"] == 5  # its lines, tagged


def test_a_line_that_cannot_be_held_fails_alone_with_insufficient_credits(gateway):
    key = new_key(gateway, "batch-poor")  # $100 of free credit
    api = client(gateway, key)
    lines = [chat_line("cheap", model="luxury", max_tokens=10), chat_line("dear", model="luxury", max_tokens=900_000)]
    batch = api.batches.create(
        input_file_id=upload(api, jsonl(*lines)).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(api, batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    errors = read_lines(api, done.error_file_id)
    assert list(errors) == ["dear"]
    assert errors["dear"]["response"]["status_code"] == 402
    assert errors["dear"]["response"]["body"]["error"]["code"] == "insufficient_credits"
    cheap = read_lines(api, done.output_file_id)["cheap"]["response"]["body"]
    paid = nanos(cheap["usage"]["prompt_tokens"], cheap["usage"]["completion_tokens"]) // 2
    assert balance(gateway, key) == (100 * 10**9 - paid, 0)  # charged the one line, at half price, nothing left held
    assert cheap["usage"]["completion_tokens"] * COMPLETION > 0 and PROMPT > 0


def test_a_responses_batch(gateway):
    api = client(gateway)
    line = {
        "custom_id": "r",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "fake-gpt", "input": "hi", "store": False},
    }
    batch = api.batches.create(input_file_id=upload(api, jsonl(line)).id, endpoint="/v1/responses", completion_window="24h")
    body = read_lines(api, wait_for(api, batch.id).output_file_id)["r"]["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Hello from the fake upstream."


def test_lines_for_another_endpoint_fail_the_batch_with_every_error_named(gateway, fake_openai):
    api = client(gateway)
    completion = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "fake-gpt", "prompt": "x"}}
    calls = fake_openai.count()
    made = upload(api, jsonl(chat_line("a"), completion, {**completion, "custom_id": "d"}))
    batch = wait_for(api, api.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert [(e.line, e.code) for e in batch.errors.data] == [(2, "mismatched_endpoint"), (3, "mismatched_endpoint")]
    assert fake_openai.count() == calls  # nothing ran


def test_batch_errors(gateway):
    api = client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        api.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert info.value.body["param"] == "input_file_id"
    training = upload(api, jsonl({"prompt": "a", "completion": "b"}), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as info:
        api.batches.create(input_file_id=training.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert info.value.body["code"] == "invalid_file_purpose"
    with pytest.raises(openai.BadRequestError):
        api.batches.create(input_file_id=training.id, endpoint="/v1/chat/completions", completion_window="48h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        api.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client(gateway, gateway.bank_key).batches.cancel(api.batches.list().data[0].id)


def test_a_cancelled_batch_stops_starting_lines_and_keeps_what_was_answered(gateway, fake_openai):
    api = client(gateway)
    fake_openai.enqueue(*[Script(delay_s=0.3) for _ in range(40)])
    made = upload(api, jsonl(*[chat_line(f"s{i}") for i in range(40)]))
    batch = api.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(api, batch.id, statuses=("in_progress",))
    with pytest.raises(openai.ConflictError):  # its input cannot be deleted while it runs
        api.files.delete(made.id)
    assert api.batches.cancel(batch.id).status == "cancelling"
    done = wait_for(api, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    answered = read_lines(api, done.output_file_id)
    assert 0 < len(answered) < 40 and done.request_counts.completed == len(answered)
    with pytest.raises(openai.BadRequestError):
        api.batches.cancel(batch.id)
    assert api.files.delete(made.id).deleted


def test_an_expired_batch_sends_the_lines_left_to_the_error_file(gateway, fake_openai):
    api = client(gateway)
    fake_openai.enqueue(*[Script(delay_s=0.3) for _ in range(30)])
    batch = api.batches.create(
        input_file_id=upload(api, jsonl(*[chat_line(f"e{i}") for i in range(30)])).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(api, batch.id, statuses=("in_progress",))
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:  # its 24 hours are up
        db.execute("UPDATE batches SET expires_at = ? WHERE id = ?", [int(time.time()), batch.id])
    done = wait_for(api, batch.id)
    assert done.status == "expired" and done.expired_at
    answered, left = read_lines(api, done.output_file_id), read_lines(api, done.error_file_id)
    assert sorted(answered | left) == sorted(f"e{i}" for i in range(30))
    assert left and all(entry["error"]["code"] == "batch_expired" and entry["response"] is None for entry in left.values())


def test_a_batch_resumes_after_the_server_is_killed_and_charges_no_line_twice(tmp_path, fake_openai):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text(
        f"""
[engine]
enabled = false

[embeddings]
enabled = false

[batches]
concurrency = 2
poll_s = 0.2
lease_s = 2

[[upstreams]]
name = "fake"
base_url = "{fake_openai.url}/v1"

[models."luxury"]
upstream = "fake"
upstream_model = "luxury-model"
context_length = 1000000
pricing = {{ prompt = "0.000001", completion = "0.001" }}
"""
    )
    key = emporion("keys", "create", "--org", "resume", data_dir=data_dir).stdout.strip()
    fake_openai.enqueue(*[Script(delay_s=0.4) for _ in range(12)])
    server = start_gateway(data_dir, key)
    try:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        lines = [chat_line(f"k{i}", model="luxury", max_tokens=10) for i in range(12)]
        batch = api.batches.create(
            input_file_id=upload(api, jsonl(*lines)).id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while api.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)  # mid-batch, lines running
        server.process.wait()
        with sqlite3.connect(data_dir / "emporion.db") as db:
            states = dict(
                db.execute("SELECT state, count(*) FROM batch_lines WHERE batch_id = ? GROUP BY state", [batch.id]).fetchall()
            )
        assert states.get("running", 0) >= 1 and 3 <= states["done"] < 12
    finally:
        if server.process.poll() is None:
            stop_gateway(server.process)
    server = start_gateway(data_dir, key)
    try:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        done = wait_for(api, batch.id, timeout=90)
        answered, failed = read_lines(api, done.output_file_id), read_lines(api, done.error_file_id)
        assert done.status == "completed" and sorted(answered | failed) == sorted(f"k{i}" for i in range(12))
        assert not set(answered) & set(failed)
        assert all(entry["error"]["code"] == "batch_line_interrupted" for entry in failed.values())
        with sqlite3.connect(data_dir / "emporion.db") as db:
            org = db.execute("SELECT org_id FROM api_keys WHERE prefix = ?", [key[:8]]).fetchone()[0]
            charged = db.execute("SELECT id, cost_nanos FROM requests WHERE org_id = ? AND cost_nanos > 0", [org]).fetchall()
            balance_nanos, held = db.execute(
                "SELECT balance_nanos, held_nanos FROM accounts WHERE id = ?", [f"customer:{org}"]
            ).fetchone()
            line_costs = db.execute("SELECT custom_id, cost_nanos FROM batch_lines WHERE batch_id = ?", [batch.id]).fetchall()
        # each line charged exactly once: one charged record a line, and the books agree with them
        assert len(charged) == 12 and len({request_id for request_id, _ in charged}) == 12
        assert sorted(cost for _, cost in charged) == sorted(cost for _, cost in line_costs)
        assert balance_nanos == 1 * 10**9 - sum(cost for _, cost in charged)  # the default $1 of free credit
        assert held >= 0
    finally:
        stop_gateway(server.process)


def test_a_batch_whose_input_expired_fails_naming_it(gateway, fake_openai):
    api = client(gateway)
    made = upload(api, jsonl(chat_line("x")))
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:  # its expires_after is up
        db.execute("UPDATE files SET expires_at = ? WHERE id = ?", [int(time.time()) - 1, made.id])
    with pytest.raises(openai.BadRequestError):  # no longer there for a new batch
        api.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        db.execute("UPDATE files SET expires_at = NULL WHERE id = ?", [made.id])
    # the worker takes one batch at a time: a slow one first, and the input expires while it waits
    fake_openai.enqueue(*[Script(delay_s=0.5) for _ in range(8)])
    busy = api.batches.create(
        input_file_id=upload(api, jsonl(*[chat_line(f"b{i}") for i in range(8)])).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(api, busy.id, statuses=("in_progress",))
    batch = api.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    with sqlite3.connect(gateway.data_dir / "emporion.db") as db:
        db.execute("UPDATE files SET expires_at = ? WHERE id = ?", [int(time.time()) - 1, made.id])
    assert api.batches.retrieve(batch.id).status == "validating"
    done = wait_for(api, batch.id)
    assert done.status == "failed" and [e.code for e in done.errors.data] == ["file_not_found"]
    assert wait_for(api, busy.id).status == "completed"
