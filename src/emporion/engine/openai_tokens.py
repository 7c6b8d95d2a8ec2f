"""Token ids in OpenAI's ``cl100k_base`` vocabulary, read back as text for a local model with a
tokenizer of its own.

OpenAI's embeddings API takes token ids in place of text, and LangChain's ``OpenAIEmbeddings``
sends nothing else by default: it tokenizes every input with tiktoken's ``cl100k_base`` first.
The local embedding model has another vocabulary, so those ids are decoded to the text they
spell (as LiteLLM's proxy does for its non-OpenAI models) and embedded as text. The vocabulary
ships inside the ``bpe-openai`` package: nothing is downloaded. The encoding loads on first use.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from emporion.errors import InvalidRequest

ENCODING = "cl100k_base"


@functools.cache
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(ENCODING)


def texts_of(inputs: list[str] | list[list[int]], param: str = "input") -> list[str]:
    """Each input as text: strings as they are, token id lists decoded."""
    texts: list[str] = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(_encoding().decode(item))
        except Exception:  # the decoder's own error types; any id outside the vocabulary
            raise InvalidRequest(
                f"Invalid '{param}[{index}]': token ids must be in OpenAI's {ENCODING} vocabulary.",
                param=f"{param}[{index}]",
                code="invalid_value",
            ) from None
    return texts


def estimate_chat(body: dict[str, Any]) -> int:
    """A chat request's prompt tokens as OpenAI's ``cl100k_base`` counts them, with OpenAI's
    published framing (3 tokens a message, 3 to prime the reply) and the tools as their JSON: an
    estimate, for upstreams with no way to count (their own vocabulary and framing may differ)."""
    encoding = _encoding()
    total = 3
    for message in body.get("messages") or ():
        total += 3 + len(encoding.encode(str(message.get("role", ""))))
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or () if isinstance(p, dict)]
        total += sum(len(encoding.encode(text)) for text in parts if isinstance(text, str))
        for call in message.get("tool_calls") or ():
            total += len(encoding.encode(orjson.dumps(call).decode()))
    if body.get("tools"):
        total += len(encoding.encode(orjson.dumps(body["tools"]).decode()))
    return total
