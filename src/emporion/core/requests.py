"""OpenAI's request bodies, field for field, as Emporion holds a request from edge to upstream (the
API parses into them, the path and the adapters read them). Unknown fields are kept and passed upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emporion.errors import InvalidRequest

if TYPE_CHECKING:
    from typing_extensions import TypeIs


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# Prompt-cache breakpoints (Anthropic's ``cache_control``; on the OpenAI API, OpenRouter's convention
# puts it on a content part) and Anthropic's own fields: read by the Anthropic adapter, never dumped
# into the OpenAI body that other upstreams get (formats/anthropic.py ``with_hints``).
CacheControl = Annotated[dict[str, Any] | None, Field(exclude=True)]


class TextPart(Wire):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = None


class ImagePart(Wire):
    type: Literal["image_url"]
    image_url: dict[str, Any]
    cache_control: CacheControl = None


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    cache_control: CacheControl = None  # on the message's last block (a tool message: its tool_result)
    # An assistant turn as an Anthropic client sent it, thinking blocks and their signatures included:
    # what an Anthropic upstream gets back, unchanged (Anthropic requires it for tool use with thinking).
    anthropic_content: Annotated[list[dict[str, Any]] | None, Field(exclude=True)] = None

    @model_validator(mode="after")
    def _content_where_required(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"{'an' if self.role == 'assistant' else 'a'} {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class FunctionDefinition(Wire):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Wire):
    type: Literal["function"]
    function: FunctionDefinition
    cache_control: CacheControl = None


class ResponseFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(Wire):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Stop = str | Annotated[list[str], Field(max_length=4)]
INT64_MAX = 2**63 - 1  # what upstreams (and orjson) take: a larger integer is a 400 here, not a 500 there
PositiveInt = Annotated[int, Field(ge=1, le=INT64_MAX)]
MAX_CHOICES = 128  # n, as OpenAI bounds it


class Sampling(Wire):
    model: Annotated[str, Field(min_length=1)]
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None  # each choice its own upstream request (pipeline/plan.py)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Routing (OpenRouter's fields): consumed by Emporion, never sent upstream.
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] | None = None
    provider: dict[str, Any] | None = None
    route: Literal["fallback"] | None = None

    @model_validator(mode="after")
    def _stream_options_with_stream(self) -> Sampling:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_limit(self) -> int | None:
        return self.max_tokens


ROUTING_FIELDS = frozenset({"models", "provider", "route"})


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Anthropic's: extended thinking, and automatic caching (a breakpoint on the last cacheable block).
    thinking: Annotated[dict[str, Any] | None, Field(exclude=True)] = None
    cache_control: CacheControl = None
    # A Responses request as it came (formats/responses_upstream.py): what an upstream that serves
    # /v1/responses itself is sent instead of this chat form. Never dumped into the chat body.
    responses_body: Annotated[dict[str, Any] | None, Field(exclude=True)] = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# Token ids, as OpenAI accepts them in place of text: a list of ids, or a list of such lists.
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
Tokens = Annotated[list[TokenId], Field(min_length=1)]
Prompt = str | Annotated[list[str], Field(min_length=1)] | Tokens | Annotated[list[Tokens], Field(min_length=1)]


class CompletionRequest(Sampling):
    prompt: Prompt
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None

    @model_validator(mode="after")
    def _defaults_as_unset(self) -> CompletionRequest:
        """``echo: false`` and an empty ``suffix`` ask for nothing (OpenAI's defaults): unset, so
        that no deployment is refused for a parameter the request does not really use."""
        if self.echo is False:
            self.echo = None
        if self.suffix == "":
            self.suffix = None
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        """Each prompt: a text, or a list of token ids in the model's own vocabulary."""
        return _each(self.prompt)


def _each(value: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    """A text or a list of token ids is one item; a list of either, one item each."""
    if isinstance(value, str):
        return [value]
    if _is_token_ids(value):
        return [value]
    return value.copy()


def _is_token_ids(value: list[str] | list[int] | list[list[int]]) -> TypeIs[list[int]]:
    """One list of token ids (the validators allow no empty list)."""
    return isinstance(value[0], int)


class EmbeddingRequest(Wire):
    model: Annotated[str, Field(min_length=1)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | Tokens
        | Annotated[list[Tokens], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """Each input: a text, or a list of token ids (OpenAI's cl100k_base vocabulary)."""
        return _each(self.input)


Generate = ChatCompletionRequest | CompletionRequest
Ask = ChatCompletionRequest | CompletionRequest | EmbeddingRequest  # what the request path takes
