"""Legacy /v1/completions' ``logprobs``, ``echo`` and ``suffix``, in OpenAI's shape or a clear 400:
on the local Gemma (llama-server, translated), through an OpenAI-compatible upstream (passed on
as they are), and on Anthropic and Gemini upstreams (refused before anything is sent)."""

from __future__ import annotations

import math

import openai
import pytest

from tests.fakes.openai_upstream import Script

GEMMA = "gemma-3-270m"
PROMPT = "The capital of France is"


def assert_legacy_shape(logprobs, text: str, top_n: int, start: int = 0) -> None:
    """OpenAI's legacy logprobs of ``text`` (beginning at ``start`` of the choice's text): four
    lists of one length, tokens that spell the text, offsets that follow them, at most ``top_n``
    alternatives (plus the chosen token, always there)."""
    tokens, lps, tops, offsets = logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset
    assert len(tokens) == len(lps) == len(tops) == len(offsets) > 0
    assert "".join(tokens) == text
    assert all(token for token in tokens)
    assert offsets[0] == start
    for i in range(1, len(tokens)):
        assert offsets[i] == offsets[i - 1] + len(tokens[i - 1])
    for token, lp, top in zip(tokens, lps, tops, strict=True):
        if lp is None:
            assert top is None
            continue
        assert isinstance(lp, float) and lp <= 0
        assert len(top) <= top_n + 1 and top[token] == lp


def assert_greedy(logprobs, top_n: int) -> None:
    """At temperature 0 every generated token is the most likely one at its position: one of the
    ``top_n`` alternatives, no extra entry."""
    for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert lp == pytest.approx(max(top.values()), abs=1e-6) and len(top) <= top_n


def streamed(client, **kwargs) -> tuple[str, list, str | None]:
    """A streamed completion: its text, each chunk's (text, logprobs), and its finish reason."""
    chunks, finish = [], None
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            chunks.append((choice.text, choice.logprobs))
            finish = choice.finish_reason or finish
    return "".join(text for text, _ in chunks), chunks, finish


def joined(chunks: list) -> dict[str, list]:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for _, logprobs in chunks:
        if logprobs is not None:
            for key, values in out.items():
                values.extend(getattr(logprobs, key))
    return out


# --- the local model ------------------------------------------------------------------------------


def test_local_logprobs_come_in_openais_legacy_shape(gateway):
    completion = gateway.client().completions.create(model=GEMMA, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    choice = completion.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert set(choice.logprobs.model_dump()) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert_legacy_shape(choice.logprobs, choice.text, top_n=2)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)  # greedy: the chosen is among the top 2
    assert_greedy(choice.logprobs, top_n=2)
    assert len(choice.logprobs.tokens) <= completion.usage.completion_tokens == 8


def test_local_logprobs_zero_give_the_chosen_tokens_logprob_only(gateway):
    choice = gateway.client().completions.create(model=GEMMA, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0).choices[0]
    assert_legacy_shape(choice.logprobs, choice.text, top_n=0)
    assert [list(top) for top in choice.logprobs.top_logprobs] == [[token] for token in choice.logprobs.tokens]


def test_local_logprobs_are_null_when_not_asked(gateway):
    assert gateway.client().completions.create(model=GEMMA, prompt=PROMPT, max_tokens=3).choices[0].logprobs is None


def test_local_streamed_logprobs_are_per_chunk_with_offsets_carried_on(gateway):
    client = gateway.client()
    whole = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2).choices[0]
    text, chunks, finish = streamed(client, model=GEMMA, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    assert finish == "length" and text == whole.text
    offset = 0
    for chunk_text, logprobs in chunks:
        if not chunk_text:
            assert logprobs is None
            continue
        assert_legacy_shape(logprobs, chunk_text, top_n=2, start=offset)
        offset += len(chunk_text)
    assert joined(chunks)["tokens"] == whole.logprobs.tokens
    assert joined(chunks)["text_offset"] == whole.logprobs.text_offset


def test_local_stop_sequence_keeps_tokens_and_text_in_step(gateway):
    client = gateway.client()
    kwargs = {"model": GEMMA, "prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0, "stop": [" 7"], "logprobs": 1}
    choice = client.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "stop" and choice.text == " 5, 6,"
    assert_legacy_shape(choice.logprobs, choice.text, top_n=1)
    assert_greedy(choice.logprobs, top_n=1)  # a token sent with text held back before it is still named once
    text, chunks, finish = streamed(client, **kwargs)
    assert text == choice.text and finish == "stop"
    assert joined(chunks)["tokens"] == choice.logprobs.tokens


def test_local_echo_prepends_the_prompt(gateway):
    client = gateway.client()
    plain = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=6, temperature=0).choices[0]
    echoed = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=6, temperature=0, echo=True).choices[0]
    assert echoed.text == PROMPT + plain.text and echoed.logprobs is None
    text, chunks, _ = streamed(client, model=GEMMA, prompt=PROMPT, max_tokens=6, temperature=0, echo=True)
    assert chunks[0][0] == PROMPT and text == PROMPT + plain.text


def test_local_echo_with_logprobs_scores_the_prompt_tokens_too(gateway):
    client = gateway.client()
    plain = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2).choices[0]
    choice = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, echo=True).choices[0]
    assert choice.text == PROMPT + plain.text
    logprobs = choice.logprobs
    assert_legacy_shape(logprobs, choice.text, top_n=2)
    cut = logprobs.text_offset.index(len(PROMPT))  # where the completion begins
    assert "".join(logprobs.tokens[:cut]) == PROMPT and logprobs.tokens[:2] == ["The", " capital"]
    # Gemma reads a BOS first, so even the first prompt token has a logprob; all are real numbers
    assert all(isinstance(lp, float) for lp in logprobs.token_logprobs[:cut])
    assert logprobs.tokens[cut:] == plain.logprobs.tokens
    # the same up to llama.cpp's numerics, which differ with how the prompt's cache was computed
    assert logprobs.token_logprobs[cut:] == pytest.approx(plain.logprobs.token_logprobs, abs=0.3)
    assert logprobs.text_offset[cut:] == [len(PROMPT) + offset for offset in plain.logprobs.text_offset]


def test_local_echoed_prompt_logprobs_are_the_models_own(gateway):
    """A prompt token's logprob is what the model gives it after the tokens before it: the token
    that greedy generation picks after PROMPT, put at the prompt's end, is the top one there, with
    the logprob generation gave it (to within llama.cpp's batch-to-token numerics)."""
    client = gateway.client()
    generated = client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=2).choices[0]
    token, lp = generated.logprobs.tokens[0], generated.logprobs.token_logprobs[0]
    echoed = client.completions.create(model=GEMMA, prompt=PROMPT + token, max_tokens=1, temperature=0, logprobs=2, echo=True)
    logprobs = echoed.choices[0].logprobs
    at = logprobs.text_offset.index(len(PROMPT))
    assert logprobs.tokens[at] == token
    top = logprobs.top_logprobs[at]
    assert max(top, key=top.__getitem__) == token
    assert logprobs.token_logprobs[at] == pytest.approx(lp, abs=0.3)
    assert math.exp(logprobs.token_logprobs[0]) < 0.5  # the text's first token is no sure thing after BOS


def test_local_streamed_echo_with_logprobs_starts_with_the_prompt(gateway):
    client = gateway.client()
    kwargs = {"model": GEMMA, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 1, "echo": True}
    whole = client.completions.create(**kwargs).choices[0]
    text, chunks, _ = streamed(client, **kwargs)
    assert chunks[0][0] == PROMPT and text == whole.text
    assert_legacy_shape(chunks[0][1], PROMPT, top_n=1)
    assert joined(chunks)["tokens"] == whole.logprobs.tokens
    assert joined(chunks)["text_offset"] == whole.logprobs.text_offset


def test_local_echo_of_token_ids_spells_them(gateway):
    tokenized = [9259, 1902]  # "Hello", " world" in Gemma 3's vocabulary (no BOS: the ids are read as they are)
    choice = (
        gateway.client()
        .completions.create(model=GEMMA, prompt=tokenized, max_tokens=2, temperature=0, echo=True, logprobs=1)
        .choices[0]
    )
    assert choice.text.startswith("Hello world")
    assert_legacy_shape(choice.logprobs, choice.text, top_n=1)
    assert choice.logprobs.tokens[:2] == ["Hello", " world"] and choice.logprobs.token_logprobs[0] is None


def test_local_suffix_is_refused_before_anything_is_sent(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().completions.create(model=GEMMA, prompt="def add(a, b):", suffix="    return c", max_tokens=8)
    assert info.value.code == "unsupported_parameter" and info.value.param == "suffix"
    assert "suffix" not in gateway.client().models.retrieve(GEMMA).model_dump()["supported_parameters"]
    assert {"logprobs", "echo"} <= set(gateway.client().models.retrieve(GEMMA).model_dump()["supported_parameters"])


def test_suffix_routes_to_the_deployment_that_honours_it(gateway, fake_openai):
    """``hybrid`` runs on the fake OpenAI upstream and the local Gemma: asked to try the local one
    first, it still serves a ``suffix`` from the only one that takes it."""
    local_first = {"provider": {"order": ["local"]}}
    create = gateway.client().completions.with_raw_response.create
    response = create(model="hybrid", prompt="Begin", max_tokens=2, extra_body=local_first)
    assert response.headers["x-emporion-upstream"] == "local:gemma-3-270m"
    fake_openai.enqueue(Script(text="inserted"))
    response = create(model="hybrid", prompt="Begin", suffix=" end", max_tokens=5, extra_body=local_first)
    assert response.headers["x-emporion-upstream"] == "fake"
    assert fake_openai.received[-1]["suffix"] == " end" and response.parse().choices[0].text == "inserted"


@pytest.mark.parametrize("logprobs", [6, -1])
def test_logprobs_outside_0_to_5_is_400(gateway, logprobs):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, logprobs=logprobs)
    assert info.value.status_code == 400 and info.value.type == "invalid_request_error"
    assert info.value.param == "logprobs"


# --- remote upstreams -----------------------------------------------------------------------------


def test_openai_upstream_gets_the_parameters_and_its_logprobs_come_back(remote_gateway, fake_openai):
    script = Script(text="Paris is lovely", logprob=-0.25)
    fake_openai.enqueue(script)
    completion = remote_gateway.client().completions.create(
        model="fake-gpt", prompt="Say", max_tokens=5, logprobs=3, echo=True, suffix=" end"
    )
    sent = fake_openai.received[-1]
    assert sent["model"] == "gpt-fake-upstream" and sent["prompt"] == "Say"
    assert (sent["logprobs"], sent["echo"], sent["suffix"]) == (3, True, " end")
    assert completion.choices[0].logprobs.model_dump() == {
        "tokens": ["Paris", " is", " lovely"],
        "token_logprobs": [-0.25] * 3,
        "top_logprobs": [{"Paris": -0.25}, {" is": -0.25}, {" lovely": -0.25}],
        "text_offset": [0, 5, 8],
    }


def test_openai_upstream_streamed_logprobs_come_back_per_chunk(remote_gateway, fake_openai):
    fake_openai.enqueue(Script(text="Paris is lovely", logprob=-0.5))
    text, chunks, finish = streamed(remote_gateway.client(), model="conf-openai_compat", prompt="Say", max_tokens=5, logprobs=0)
    assert fake_openai.received[-1]["logprobs"] == 0 and text == "Paris is lovely" and finish == "stop"
    assert [lp.model_dump() for _, lp in chunks if lp is not None] == [
        {"tokens": [piece], "token_logprobs": [-0.5], "top_logprobs": [{piece: -0.5}], "text_offset": [offset]}
        for piece, offset in (("Paris", 0), (" is", 5), (" lovely", 8))
    ]


def test_echo_false_and_empty_suffix_ask_for_nothing(remote_gateway, fake_openai):
    fake_openai.enqueue(Script(text="ok"))
    remote_gateway.client().completions.create(model="fake-gpt", prompt="Say", max_tokens=2, echo=False, suffix="")
    assert "echo" not in fake_openai.received[-1] and "suffix" not in fake_openai.received[-1]


@pytest.mark.parametrize("model", ["conf-anthropic", "conf-gemini"])
def test_anthropic_and_gemini_refuse_logprobs_before_sending(remote_gateway, fake_anthropic, fake_gemini, model):
    before = fake_anthropic.count() + fake_gemini.count()
    with pytest.raises(openai.BadRequestError) as info:
        remote_gateway.client().completions.create(model=model, prompt="Say", max_tokens=2, logprobs=1)
    assert info.value.code == "unsupported_parameter" and info.value.param == "logprobs"
    assert fake_anthropic.count() + fake_gemini.count() == before


@pytest.mark.parametrize("model", ["conf-anthropic", "conf-gemini"])
@pytest.mark.parametrize("extra", [{"echo": True}, {"suffix": " end"}])
def test_anthropic_and_gemini_refuse_echo_and_suffix_before_sending(remote_gateway, fake_anthropic, fake_gemini, model, extra):
    before = fake_anthropic.count() + fake_gemini.count()
    with pytest.raises(openai.BadRequestError):
        remote_gateway.client().completions.create(model=model, prompt="Say", max_tokens=2, **extra)
    assert fake_anthropic.count() + fake_gemini.count() == before


@pytest.mark.parametrize("model", ["conf-anthropic", "conf-gemini"])
@pytest.mark.parametrize("extra", [{"echo": True}, {"suffix": " end"}])
def test_anthropic_and_gemini_name_echo_and_suffix_as_unsupported(remote_gateway, model, extra):
    with pytest.raises(openai.BadRequestError) as info:
        remote_gateway.client().completions.create(model=model, prompt="Say", max_tokens=2, **extra)
    assert info.value.code == "unsupported_parameter" and info.value.param == next(iter(extra))
