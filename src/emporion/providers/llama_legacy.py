"""Legacy completions on llama.cpp's server, in OpenAI's shape: ``logprobs`` and ``echo``.

llama-server answers ``/v1/completions`` with its logprobs in chat's shape (a ``content`` list of
``{id, token, bytes, logprob, top_logprobs}``) and ignores ``echo``. Here its stream becomes
OpenAI's legacy one: each chunk's ``logprobs`` is ``{tokens, token_logprobs, top_logprobs,
text_offset}`` for the tokens of that chunk, ``text_offset`` counted in characters of the text the
client gets (its echoed prompt included) and carried on from chunk to chunk.

``echo`` sends the prompt first. With ``logprobs`` its tokens get theirs too, which llama-server
computes for generated tokens only: the prompt's tokens are generated again, forced one by one by a
grammar of token ids (``<[id]>``), with the model's own (pre-sampling) probabilities reported for
each. The first token has nothing before it and no logprob (null), as on OpenAI — unless the model
reads a BOS token first (Gemma does), which conditions it.

What llama-server merges is merged here too: a token that ends inside a UTF-8 character is sent
with the next one (one entry, the last token's logprob), and a token held back as the possible
start of a stop sequence and then dropped is not listed. So ``''.join(tokens) == text`` always."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from emporion.core.answers import Choice, Chunk, Completion, Delta
from emporion.core.requests import CompletionRequest
from emporion.errors import UpstreamError

Post = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (path under the server's root, body) -> JSON
StreamOf = Callable[[dict[str, Any]], AsyncGenerator[Chunk, None]]  # a /v1/completions body -> its chunks
Legacy = dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class Scored:
    """One token as llama-server reports it: its text, its logprob, its top alternatives."""

    piece: str
    logprob: float | None = None
    top: dict[str, float] | None = None


def wants(ask: CompletionRequest) -> bool:
    """Whether the request needs this translation (anything else goes through as it is)."""
    return ask.logprobs is not None or bool(ask.echo)


async def chunks(ask: CompletionRequest, body: dict[str, Any], post: Post, stream_of: StreamOf) -> AsyncGenerator[Chunk, None]:
    """The request's stream in OpenAI's legacy shape: the echoed prompt first, then the completion."""
    top_n = ask.logprobs
    offset = 0
    if ask.echo:
        prompt = ask.prompts()[0]
        text = prompt if isinstance(prompt, str) else await _detokenized(post, prompt)
        logprobs = _or_none(legacy(await _prompt_scored(post, prompt, top_n), text, 0)) if top_n is not None else None
        if text:
            yield Chunk(choices=[Delta(text=text, logprobs=logprobs)])
        offset = len(text)
    sent = {key: value for key, value in body.items() if key != "echo"}
    if top_n is not None:
        sent["logprobs"] = max(top_n, 1)  # llama-server's n_probs: with 0 it reports nothing at all
    async with contextlib.aclosing(stream_of(sent)) as upstream:
        async for chunk in upstream:
            deltas = []
            for delta in chunk.choices:
                text = delta.text or ""
                logprobs = None
                if top_n is not None and text:
                    logprobs = _or_none(legacy(_from_llama(delta.logprobs, top_n), text, offset))
                offset += len(text)
                deltas.append(replace(delta, logprobs=logprobs))
            yield replace(chunk, choices=deltas)


async def folded(stream: AsyncGenerator[Chunk, None], logprobs: bool) -> Completion:
    """One answer from the stream of ``chunks``: its text and logprobs joined."""
    texts: list[str] = []
    joined: Legacy | None = _empty() if logprobs else None
    finish, usage = None, None
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            usage = chunk.usage or usage
            for delta in chunk.choices:
                texts.append(delta.text or "")
                finish = delta.finish_reason or finish
                if joined is not None and isinstance(delta.logprobs, dict):
                    for key, values in joined.items():
                        values.extend(delta.logprobs[key])
    if usage is None:
        raise UpstreamError("the local engine answered without usage")
    return Completion(choices=[Choice(text="".join(texts), finish_reason=finish, logprobs=joined)], usage=usage)


def legacy(scored: list[Scored], text: str, start: int) -> Legacy:
    """OpenAI's legacy logprobs of ``text`` (which begins at ``start`` in the choice's text), made of
    the tokens that spell it."""
    out = _empty()
    offset = start
    shares = align(text, [token.piece for token in scored])
    for i, share in enumerate(shares):
        if not share:
            continue
        token = scored[i] if i < len(scored) else Scored(share)
        out["tokens"].append(share)
        out["token_logprobs"].append(token.logprob)
        # OpenAI: the chosen token is always among them ("up to logprobs+1" of them)
        out["top_logprobs"].append(None if token.logprob is None else {**(token.top or {}), share: token.logprob})
        out["text_offset"].append(offset)
        offset += len(share)
    return out


def align(text: str, pieces: list[str]) -> list[str]:
    """Each piece's share of ``text``, so that the shares join into it exactly: a piece where it
    spells the text next (after any text no piece spells, such as a special token drawn as nothing),
    "" where it spells none of it; what is left over goes to the last share."""
    shares: list[str] = []
    cursor = 0
    for piece in pieces:
        at = text.find(piece, cursor) if piece else -1
        if at < 0:
            shares.append("")
            continue
        shares.append(text[cursor : at + len(piece)])
        cursor = at + len(piece)
    if cursor < len(text):
        if shares:
            shares[-1] += text[cursor:]
        else:
            shares.append(text[cursor:])
    return shares


def _from_llama(logprobs: Any, top_n: int) -> list[Scored]:
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [_scored(entry, top_n) for entry in content or () if isinstance(entry, dict)]


def _scored(entry: dict[str, Any], top_n: int) -> Scored:
    """The entry's token and its ``top_n`` most likely alternatives, less the token itself (named
    as the text it is given, which may hold text held back before it)."""
    top: dict[str, float] = {}
    alternatives = entry.get("top_logprobs")
    for alternative in alternatives[:top_n] if isinstance(alternatives, list) else ():
        if isinstance(alternative, dict) and alternative.get("id") != entry.get("id"):
            top.setdefault(_key(alternative), float(alternative.get("logprob", 0.0)))
    piece = entry.get("token")
    logprob = entry.get("logprob")
    return Scored(piece if isinstance(piece, str) else "", float(logprob) if isinstance(logprob, int | float) else None, top)


def _key(alternative: dict[str, Any]) -> str:
    """An alternative token as OpenAI names it: its text, or ``bytes:\\xNN…`` where its bytes end
    inside a UTF-8 character."""
    raw = alternative.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        data = bytes(raw)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)
    token = alternative.get("token")
    return token if isinstance(token, str) else ""


async def _prompt_scored(post: Post, prompt: str | list[int], top_n: int) -> list[Scored]:
    """The prompt's tokens with their logprobs: the first as it is (nothing before it), each other
    one generated again under a grammar that allows only it, a pass at a time (a pass stops early
    at an end-of-generation token in the prompt; the next one takes it as context)."""
    ids, first = await _tokenized(post, prompt)
    scored = [Scored(first)]
    done = 1
    while done < len(ids):
        forced = ids[done:]
        answer = await post(
            "/v1/completions",
            {
                "prompt": ids[:done],
                "max_tokens": len(forced),
                "temperature": 0,
                "logprobs": max(top_n, 1),
                "grammar": "root ::= " + " ".join(f"<[{token}]>" for token in forced),
            },
        )
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        consumed = 0
        for entry in content or ():
            try:  # tokens skipped were merged into this one (UTF-8)
                consumed = forced.index(entry["id"], consumed) + 1
            except (TypeError, KeyError, ValueError):
                break
            scored.append(_scored(entry, top_n))
        if consumed == 0:
            raise UpstreamError("the local engine could not score the prompt's tokens")
        done += consumed
    return scored


async def _tokenized(post: Post, prompt: str | list[int]) -> tuple[list[int], str]:
    """The prompt's token ids as the engine reads them (a text gets the BOS the model asks for),
    and the first one's text."""
    if not isinstance(prompt, str):
        return prompt, await _detokenized(post, prompt[:1])
    answer = await post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True, "with_pieces": True})
    tokens = answer.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in tokens):
        raise UpstreamError("the local engine answered /tokenize without tokens")
    if not tokens:
        return [], ""
    piece = tokens[0].get("piece")
    first = piece if isinstance(piece, str) else bytes(piece or ()).decode(errors="replace")
    return [t["id"] for t in tokens], first


async def _detokenized(post: Post, ids: list[int]) -> str:
    content = (await post("/detokenize", {"tokens": ids})).get("content")
    if not isinstance(content, str):
        raise UpstreamError("the local engine answered /detokenize without content")
    return content


def _empty() -> Legacy:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _or_none(logprobs: Legacy) -> Legacy | None:
    return logprobs if logprobs["tokens"] else None
