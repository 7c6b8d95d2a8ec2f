"""The Google Gemini adapter: OpenAI-format requests to ``generateContent`` and
``streamGenerateContent?alt=sse``, with roles, system instruction, function calling, JSON output
and usage metadata."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import orjson

from emporion.core.answers import Choice, Delta, ToolCall, ToolCallDelta
from emporion.core.usage import Usage
from emporion.errors import ContextLengthExceeded, EmporionError, InvalidRequest, UpstreamError
from emporion.formats.anthropic import Opening
from emporion.formats.openai_messages import arguments, data_url, texts
from emporion.providers.base import Chunk, Completion, Request, Upstream
from emporion.providers.http import (
    Transport,
    encode_body,
    error_json,
    mapped_transport_errors,
    parse_json,
    post_json,
    read_events,
    status_error,
    stream_timeout,
)
from emporion.providers.redaction import upstream_text

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "MALFORMED_FUNCTION_CALL": "stop"}
FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
UNSUPPORTED = ("logit_bias", "logprobs", "top_logprobs", "echo", "suffix")  # echo, suffix: legacy completions


class GeminiAdapter:
    name: ClassVar[str] = "gemini"
    unsupported_parameters: ClassVar[frozenset[str]] = frozenset(UNSUPPORTED)

    def __init__(self) -> None:
        self.transport = Transport()

    def _session(self, upstream: Upstream):
        headers = {"content-type": "application/json"}
        if upstream.api_key:
            headers["x-goog-api-key"] = upstream.api_key
        return self.transport.session(upstream, headers)

    async def complete(self, request: Request, upstream: Upstream) -> Completion:
        body = to_gemini(request)
        url = f"{upstream.base_url.rstrip('/')}/models/{request.ask.model}:generateContent"
        return from_gemini(await post_json(self._session(upstream), upstream, url, body, _status_error))

    async def stream(self, request: Request, upstream: Upstream) -> AsyncGenerator[Chunk, None]:
        body = to_gemini(request)
        url = f"{upstream.base_url.rstrip('/')}/models/{request.ask.model}:streamGenerateContent?alt=sse"
        with mapped_transport_errors(upstream):
            async with self._session(upstream).post(
                url, data=encode_body(body), timeout=stream_timeout(upstream), allow_redirects=False
            ) as response:
                if response.status >= 300:
                    raise _status_error(upstream, response.status, await response.read(), response.headers)
                translator = StreamTranslator()
                async for event in read_events(response):
                    data = parse_json(upstream, event.data)
                    if "error" in data:
                        raise UpstreamError(
                            f"upstream {upstream.name} failed mid-stream: {upstream_text(upstream, data['error'].get('message'))}"
                        )
                    for chunk in translator.feed(data):
                        yield chunk
                if not translator.finished:
                    raise UpstreamError(f"upstream {upstream.name} ended the stream without a finish reason")
                yield Chunk(choices=[], usage=translator.usage)

    async def count_tokens(self, request: Request, upstream: Upstream) -> int | None:
        """Gemini's own count (``models/{model}:countTokens``) of the whole generation request."""
        model = f"models/{request.ask.model}"
        body = {"generateContentRequest": {"model": model, **to_gemini(request)}}
        url = f"{upstream.base_url.rstrip('/')}/{model}:countTokens"
        counted = (await post_json(self._session(upstream), upstream, url, body, _status_error)).get("totalTokens")
        if not isinstance(counted, int):
            raise UpstreamError(f"upstream {upstream.name} counted no totalTokens")
        return counted

    async def aclose(self) -> None:
        await self.transport.aclose()


# --- OpenAI request -> Gemini request -----------------------------------------------------------


def to_gemini(request: Request) -> dict[str, Any]:
    body = request.body
    if request.endpoint != "chat":
        raise InvalidRequest("Gemini models serve chat completions only; use /v1/chat/completions.", param="model")
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise InvalidRequest(f"This model does not support the '{name}' parameter.", param=name, code="unsupported_parameter")
    system, contents = _contents(body["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    if body.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in body["tools"]]}]
    if body.get("tool_choice") is not None:
        out["toolConfig"] = {"functionCallingConfig": _calling_config(body["tool_choice"])}
    return out


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = (fmt.get("json_schema") or {}).get("schema", {})
    return config


def _contents(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that follow
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(texts(content))
            continue
        if role == "assistant":
            parts: list[dict[str, Any]] = [{"text": text} for text in texts(content) if text]
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                names[call.get("id", "")] = function.get("name", "")
                parts.append({"functionCall": {"name": function.get("name"), "args": _json_object(function.get("arguments"))}})
            gemini_role = "model"
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""))
            if name is None:
                raise InvalidRequest("A tool message answers no earlier tool call.", param="messages")
            text = "".join(texts(content))
            parts = [{"functionResponse": {"name": name, "response": _tool_response(text)}}]
            gemini_role = "user"
        else:
            parts = _user_parts(content)
            gemini_role = "user"
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    return system, contents


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            url = part["image_url"].get("url", "")
            inline = data_url(url)
            if inline is not None:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _json_object(raw: Any) -> dict[str, Any]:
    value = arguments(raw)
    return value if isinstance(value, dict) else {"value": value}


def _tool_response(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequest("Only function tools are supported.", param="tools")
    function = tool["function"]
    out = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parameters"] = function["parameters"]
    return out


def _calling_config(choice: Any) -> dict[str, Any]:
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "required":
        return {"mode": "ANY"}
    if choice == "none":
        return {"mode": "NONE"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")


# --- Gemini response -> OpenAI completion -------------------------------------------------------


def usage_from_gemini(wire: dict[str, Any] | None) -> Usage:
    """promptTokenCount includes cached content; thoughts are billed as output but counted apart."""
    wire = wire or {}

    def count(key: str) -> int:
        value = wire.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    prompt, cached = count("promptTokenCount"), count("cachedContentTokenCount")
    cached = min(cached, prompt)
    return Usage(
        input_tokens=prompt - cached,
        cached_input_tokens=cached,
        output_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
    )


def _finish(reason: str | None, has_calls: bool) -> str:
    if reason in FILTERED:
        return "content_filter"
    if has_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def _tool_call(call: dict[str, Any]) -> ToolCall:
    name = call.get("name")
    return ToolCall(
        call.get("id") or "call_" + secrets.token_hex(12),
        name if isinstance(name, str) else "",
        orjson.dumps(call.get("args") or {}).decode(),
    )


def from_gemini(data: dict[str, Any]) -> Completion:
    candidates = data.get("candidates") or []
    usage = usage_from_gemini(data.get("usageMetadata"))
    if not candidates:
        reason = (data.get("promptFeedback") or {}).get("blockReason")
        if reason:
            return Completion(choices=[Choice(text="", finish_reason="content_filter")], usage=usage)
        raise UpstreamError("Gemini answered without candidates")
    candidate = candidates[0]
    parts = (candidate.get("content") or {}).get("parts") or []
    text = "".join(part.get("text", "") for part in parts if "text" in part and not part.get("thought"))
    calls = tuple(_tool_call(part["functionCall"]) for part in parts if "functionCall" in part)
    finish = _finish(candidate.get("finishReason"), bool(calls))
    return Completion(choices=[Choice(text=text or (None if calls else ""), tool_calls=calls, finish_reason=finish)], usage=usage)


class StreamTranslator:
    """Gemini stream responses in, OpenAI chunks out. Function calls arrive whole, one tool call
    each. The first response's usageMetadata (the prompt's count) opens the stream; thoughts are
    never shown (they are no Anthropic thinking block: there is no signature to give back)."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.finished = False
        self._started = False
        self._calls = 0

    def feed(self, data: dict[str, Any]) -> list[Chunk]:
        chunks: list[Chunk] = []
        if data.get("usageMetadata"):
            self.usage = usage_from_gemini(data["usageMetadata"])
        if not self._started:
            self._started = True
            prompt = Usage(self.usage.input_tokens, self.usage.cached_input_tokens, self.usage.cache_write_tokens)
            chunks.append(Opening(choices=[Delta(role="assistant", text="")], prompt_usage=prompt))
        candidates = data.get("candidates") or []
        if not candidates:
            if (data.get("promptFeedback") or {}).get("blockReason"):
                self.finished = True
                chunks.append(Chunk(choices=[Delta(finish_reason="content_filter")]))
            return chunks
        candidate = candidates[0]
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "text" in part and not part.get("thought") and part["text"]:
                chunks.append(Chunk(choices=[Delta(text=part["text"])]))
            elif "functionCall" in part:
                call = _tool_call(part["functionCall"])
                chunks.append(
                    Chunk(choices=[Delta(tool_calls=(ToolCallDelta(self._calls, call.id, call.name, call.arguments),))])
                )
                self._calls += 1
        reason = candidate.get("finishReason")
        if reason:
            self.finished = True
            chunks.append(Chunk(choices=[Delta(finish_reason=_finish(reason, self._calls > 0))]))
        return chunks


def _status_error(upstream: Upstream, status: int, raw: bytes, headers) -> EmporionError:
    error = error_json(raw).get("error") or {}
    message = str(error.get("message") or f"HTTP {status}")
    if status == 400 and "token" in message.lower() and ("exceed" in message.lower() or "too long" in message.lower()):
        return ContextLengthExceeded(f"{upstream.name}: {message}", param="messages")
    return status_error(upstream, status, message, headers)
