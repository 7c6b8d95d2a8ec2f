"""What a request may use before it runs: an upper bound of its prompt tokens (for the hold on
credit) and OpenAI's rough guess of them (for tokens-per-minute limits).

The bound: one token per UTF-8 byte of every string in the prompt (messages, tool definitions,
tool calls) plus 8 per message for the chat template, and ``image_tokens`` per image or audio
part. No tokenizer of the models served here makes a token of less than one byte, so the
bound holds whatever the model; it is about four times the real count for English text, and
the hold's unused part is released at settlement. The guess: characters / 4, as OpenAI's
limiter counts.
"""

from __future__ import annotations

from typing import Any

MEDIA_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "file", "input_file"})
PER_MESSAGE = 8


def prompt_bound(body: dict[str, Any], image_tokens: int) -> int:
    total = 0
    for field in ("messages", "prompt", "tools", "functions", "response_format"):
        if field in body:
            total += _bytes(body[field], image_tokens)
    total += PER_MESSAGE * len(body.get("messages") or ())
    return max(total, 1)


def prompt_guess(body: dict[str, Any], image_tokens: int) -> int:
    return max(1, prompt_bound(body, image_tokens) // 4)


def _bytes(value: Any, image_tokens: int) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float):
        return 1  # a token id in a completions prompt, or a number in a schema
    if isinstance(value, dict):
        if value.get("type") in MEDIA_PARTS:
            return image_tokens
        return sum(_bytes(k, image_tokens) + _bytes(v, image_tokens) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_bytes(item, image_tokens) for item in value)
    return len(str(value))
