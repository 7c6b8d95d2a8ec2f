"""How big a request is before anything runs, for the rate limits and the hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emporion.core.requests import Ask, EmbeddingRequest
from emporion.metering.estimate import prompt_bound, prompt_guess


@dataclass(frozen=True, slots=True)
class Sizing:
    prompt_bound: int  # the most prompt tokens it can be (what the hold prices)
    prompt_guess: int  # what it probably is (what the tokens-per-minute buckets are charged)
    asked: int | None  # the output tokens a choice may make, where the request says (max_tokens)
    choices: int  # n for each prompt
    body: dict[str, Any]  # the request as the estimators read it, dumped once for the whole path (the plan reads it too)

    @property
    def tokens(self) -> int:
        """What the tokens-per-minute buckets are charged up front (corrected once the usage is known)."""
        return self.prompt_guess + (self.asked or 0) * self.choices


def size(ask: Ask, image_tokens: int) -> Sizing:
    body = prompt_of(ask)
    if isinstance(ask, EmbeddingRequest):
        return Sizing(prompt_bound(body, image_tokens), prompt_guess(body, image_tokens), None, 1, body)
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    n = ask.n or 1  # each of the n choices is its own upstream request, which reads the prompt again
    return Sizing(
        n * prompt_bound(body, image_tokens), n * prompt_guess(body, image_tokens), ask.output_limit(), n * prompts, body
    )


def prompt_of(ask: Ask) -> dict[str, Any]:
    """The request's body as the estimators read it (an embedding's input is its prompt)."""
    if isinstance(ask, EmbeddingRequest):
        return {"prompt": ask.input}
    return ask.model_dump(exclude_none=True)
