"""Token usage, normalized once inside each adapter; the one place wire usage fields are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0  # excludes cached input tokens
    cached_input_tokens: int = 0  # read from the provider's prompt cache
    cache_write_tokens: int = 0
    output_tokens: int = 0  # includes reasoning tokens

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
        )

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's usage; tokens written to a prompt cache, where there were any, as OpenRouter
        reports them (``prompt_tokens_details.cache_write_tokens``)."""
        details = {"cached_tokens": self.cached_input_tokens}
        if self.cache_write_tokens:
            details["cache_write_tokens"] = self.cache_write_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
            "prompt_tokens_details": details,
        }


def usage_from_openai(wire: dict[str, Any] | None) -> Usage | None:
    """OpenAI's ``usage``: prompt_tokens includes cached ones (prompt_tokens_details.cached_tokens)
    and, where an upstream reports them as OpenRouter does, cache writes (``cache_write_tokens``);
    completion_tokens includes reasoning tokens."""
    if not isinstance(wire, dict):
        return None
    prompt = _count(wire.get("prompt_tokens"))
    details = wire.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = min(prompt, _count(details.get("cached_tokens")))
    written = min(prompt - cached, _count(details.get("cache_write_tokens")))
    return Usage(
        input_tokens=prompt - cached - written,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=_count(wire.get("completion_tokens")),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
