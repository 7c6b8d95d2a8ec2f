"""OpenAI's Responses request body (``POST /v1/responses``), field for field.

Unlike a chat request, whose unknown fields pass through to an OpenAI-compatible upstream, a
Responses request is translated into a chat request, where an unknown field would have nowhere to
go: it is a 400 naming the field, as OpenAI answers, never silently dropped."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emporion.core.requests import PositiveInt, Temperature
from emporion.errors import InvalidRequest


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextConfig(Wire):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(Wire):
    model: Annotated[str, Field(min_length=1)]
    input: Annotated[str, Field(min_length=1)] | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    user: str | None = None
    safety_identifier: Annotated[str, Field(max_length=128)] | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None  # None: stored, as OpenAI's default
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    background: bool | None = None
    # Routing (OpenRouter's fields, as on chat): consumed by Emporion.
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] | None = None
    provider: dict[str, Any] | None = None
    route: Literal["fallback"] | None = None

    @model_validator(mode="after")
    def _nothing_unknown(self) -> ResponsesRequest:
        for name in self.model_extra or {}:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        if self.background:
            raise InvalidRequest(
                "Background responses are not supported: send the request without 'background'.",
                param="background",
                code="unsupported_parameter",
            )
        if self.truncation == "auto":
            raise InvalidRequest(
                "truncation 'auto' is not supported: the input is never cut, and one too long for the model is a 400.",
                param="truncation",
                code="unsupported_value",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        return self

    @property
    def stored(self) -> bool:
        return self.store is not False
