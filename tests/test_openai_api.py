"""The OpenAI API as the official SDK sees it, served by the real local models."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest

GEMMA = "gemma-3-270m"
MINILM = "all-minilm-l6-v2"


def test_models_list_has_marketplace_fields(gateway):
    models = {m.id: m for m in gateway.client().models.list().data}
    assert {GEMMA, MINILM, "fake-gpt"} <= set(models)
    gemma = models[GEMMA].model_dump()
    assert gemma["object"] == "model" and gemma["owned_by"] == "google" and gemma["created"] > 0
    assert gemma["release"] == "open-weights" and gemma["license"] == "gemma"
    assert gemma["context_length"] == 8192
    assert gemma["pricing"] == {"prompt": "0", "completion": "0"}
    assert gemma["architecture"] == {"input_modalities": ["text"], "output_modalities": ["text"]}
    assert models["fake-gpt"].model_dump()["pricing"] == {"prompt": "0.00000015", "completion": "0.0000006"}
    assert models[MINILM].model_dump()["release"] == "open-source"


def test_model_retrieve_and_unknown(gateway):
    assert gateway.client().models.retrieve(GEMMA).id == GEMMA
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_chat_completion_with_gemma_has_text_and_usage(gateway):
    response = gateway.client().with_raw_response.chat.completions.create(
        model=GEMMA,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=12,
        temperature=0,
        seed=7,
    )
    completion = response.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == GEMMA
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    headers = response.headers
    assert headers["x-emporion-model"] == GEMMA
    assert headers["x-emporion-provider"] == "emporion-local"
    assert headers["x-emporion-release"] == "open-weights"
    assert headers["x-emporion-license"] == "gemma"


def test_max_completion_tokens_limits_output(gateway):
    completion = gateway.client().chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Count from one to one hundred."}], max_completion_tokens=3
    )
    assert completion.usage.completion_tokens == 3 and completion.choices[0].finish_reason == "length"


def test_seeded_sampling_is_repeatable(gateway):
    def ask():
        return (
            gateway.client()
            .completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=8, temperature=0.9, top_p=0.9, seed=1234)
            .choices[0]
            .text
        )

    assert ask() == ask()


def test_stop_sequence_ends_generation(gateway):
    completion = gateway.client().completions.create(model=GEMMA, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
    assert " 7" not in completion.choices[0].text and completion.choices[0].finish_reason == "stop"


def test_chat_stream_frames_and_usage(gateway):
    stream = gateway.client().chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == GEMMA for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 10
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_non_streamed_and_streamed(gateway):
    client = gateway.client()
    completion = client.completions.create(model=GEMMA, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage.completion_tokens <= 6
    streamed = list(
        client.completions.create(model=GEMMA, prompt="The quick brown fox", max_tokens=6, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text


async def test_async_client_concurrent_requests(gateway):
    client = gateway.aclient()
    results = await asyncio.gather(
        *(client.completions.create(model=GEMMA, prompt=f"Item {i}:", max_tokens=5, temperature=0) for i in range(4))
    )
    assert all(r.choices[0].text is not None and r.usage.completion_tokens <= 5 for r in results)
    stream = await client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
    )
    pieces = [chunk async for chunk in stream]
    assert pieces and pieces[-1].choices[0].finish_reason in ("length", "stop")


def test_embeddings_float_and_base64(gateway):
    client = gateway.client()
    response = client.embeddings.create(
        model=MINILM, input=["a cat sat on the mat", "a kitten rested on the rug", "stock markets fell"]
    )
    vectors = [np.array(item.embedding) for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(v.shape == (384,) for v in vectors)
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
    assert response.usage.prompt_tokens > 10 and response.usage.total_tokens == response.usage.prompt_tokens
    raw = gateway.http().post(
        "/v1/embeddings", json={"model": MINILM, "input": "a cat sat on the mat", "encoding_format": "base64"}
    )
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-5)


def test_embedding_input_too_long(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().embeddings.create(model=MINILM, input="word " * 400)
    assert info.value.code == "context_length_exceeded"


def test_wrong_endpoint_for_model_kind(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.client().embeddings.create(model=GEMMA, input="hello")
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])


def test_completion_with_several_prompts_counts_every_prompt(gateway):
    client = gateway.client()
    single = [client.completions.create(model=GEMMA, prompt=p, max_tokens=4, temperature=0) for p in ("The sky is", "Paris is")]
    both = client.completions.create(model=GEMMA, prompt=["The sky is", "Paris is"], max_tokens=4, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [s.choices[0].text for s in single]
    assert both.usage.completion_tokens == sum(s.usage.completion_tokens for s in single)
    assert both.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)
    chunks = list(
        client.completions.create(
            model=GEMMA,
            prompt=["The sky is", "Paris is"],
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [c.text for c in both.choices]
    assert chunks[-1].usage.completion_tokens == both.usage.completion_tokens


def test_embedding_inputs_given_as_token_ids_are_read_as_the_text_they_spell(gateway):
    """LangChain's OpenAIEmbeddings sends cl100k_base token ids by default: [15339, 1917] is "hello world"."""
    client = gateway.client()
    as_text = client.embeddings.create(model=MINILM, input=["hello world", "stock markets fell"])
    as_ids = client.embeddings.create(model=MINILM, input=[[15339, 1917], [13787, 11987, 11299]])
    one = client.embeddings.create(model=MINILM, input=[15339, 1917])
    assert np.allclose(as_ids.data[0].embedding, as_text.data[0].embedding, atol=1e-5)
    assert np.allclose(one.data[0].embedding, as_text.data[0].embedding, atol=1e-5)
    assert as_ids.usage.prompt_tokens > 0
    raw = gateway.http().post("/v1/embeddings", json={"model": MINILM, "input": [[15339, 1917]]})
    assert raw.headers["x-emporion-cost"] == "0"
    for bad in ([[]], [[-1]], [[2**31]], [[10**7]], [["a", 1]]):
        response = gateway.http().post("/v1/embeddings", json={"model": MINILM, "input": bad})
        assert response.status_code == 400, (bad, response.text)
        assert "constrained" not in response.text and "pydantic" not in response.text


def test_an_embeddings_batch_gives_the_vectors_a_live_request_gives(gateway):
    """Batch lines of /v1/embeddings on the local embedding model, at the batch discount's price."""
    import io
    import time

    import orjson

    api = gateway.client()
    texts = ["the first line", "and the second"]
    lines = b"".join(
        orjson.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": MINILM, "input": t}})
        + b"\n"
        for i, t in enumerate(texts)
    )
    made = api.files.create(file=("embed.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = api.batches.create(input_file_id=made.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + 120
    while (batch := api.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    out = {
        entry["custom_id"]: entry["response"]["body"]
        for entry in map(orjson.loads, api.files.content(batch.output_file_id).content.splitlines())
    }
    for i, text in enumerate(texts):
        live = api.embeddings.create(model=MINILM, input=text).data[0].embedding
        batched = out[f"e{i}"]["data"][0]["embedding"]
        assert out[f"e{i}"]["object"] == "list" and len(batched) == 384
        assert max(abs(a - b) for a, b in zip(live, batched, strict=True)) < 1e-5
