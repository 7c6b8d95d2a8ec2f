"""The adapter of a local llama-server whose model runs with one of llama.cpp's built-in chat
templates (the built-in Gemma): OpenAI-compatible, plus function calling by grammar
(formats/tool_grammar.py), since those templates render no tools.

A streamed request with tools is generated whole, then sent as the chunks of a stream (the role,
the answer's text or its calls, the finish reason, usage): the grammar's JSON cannot be told
apart from text until it is complete. Requests without tools stream as they are generated."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import ClassVar

from emporion.core.answers import Delta, ToolCallDelta
from emporion.core.requests import ChatCompletionRequest
from emporion.formats import tool_grammar
from emporion.providers.base import Chunk, Completion, Request, Upstream
from emporion.providers.openai_compat import OpenAICompatAdapter


class LlamaCppAdapter(OpenAICompatAdapter):
    name: ClassVar[str] = "llama_cpp"

    async def complete(self, request: Request, upstream: Upstream) -> Completion:
        constrained = _constrained(request)
        if constrained is None:
            return await super().complete(request, upstream)
        return tool_grammar.answer(await super().complete(constrained, upstream))

    async def stream(self, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]:
        constrained = _constrained(request)
        if constrained is None:
            async for chunk in super().stream(request, upstream):
                yield chunk
            return
        whole = tool_grammar.answer(await super().complete(constrained, upstream))
        yield Chunk(choices=[Delta(role="assistant", text="")])
        for choice in whole.choices:
            if choice.text:
                yield Chunk(choices=[Delta(index=choice.index, text=choice.text)])
            calls = tuple(ToolCallDelta(i, call.id, call.name, call.arguments) for i, call in enumerate(choice.tool_calls))
            if calls:
                yield Chunk(choices=[Delta(index=choice.index, tool_calls=calls)])
            yield Chunk(choices=[Delta(index=choice.index, finish_reason=choice.finish_reason)])
        yield Chunk(choices=[], usage=whole.usage)

    async def count_tokens(self, request: Request, upstream: Upstream) -> int | None:
        return await super().count_tokens(_constrained(request) or request, upstream)


def _constrained(request: Request) -> Request | None:
    """The request with its tools turned into a grammar; None when it has none."""
    body = request.body
    if request.endpoint != "chat" or not tool_grammar.uses_tools(body):
        return None
    return replace(request, ask=ChatCompletionRequest.model_validate(tool_grammar.constrain(body)))
