"""A batch input file, line by line: each line a JSON object ``{"custom_id", "method": "POST",
"url", "body"}`` whose body is a request of the endpoint it names, validated by the very schema
that endpoint's route validates with. Every error names its line (1-based), as OpenAI's do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from emporion.core.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from emporion.errors import invalid_request
from emporion.formats.jsonl import LineError, json_lines
from emporion.formats.responses_schemas import ResponsesRequest

SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
}
MAX_CUSTOM_ID = 255
MAX_ERRORS = 100  # reported at most; the rest are counted


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, as an editor shows it
    custom_id: str
    url: str
    body: dict[str, Any]


def parse(content: bytes, max_lines: int, endpoint: str | None = None) -> tuple[list[Line], list[LineError]]:
    """The lines of a batch input file, and what is wrong with it (nothing: an empty list).
    ``endpoint``: the batch's; every line must name it (None: any endpoint batches take)."""
    lines: list[Line] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [LineError(None, "invalid_file_encoding", "The file is not UTF-8 text.")]
    for number, parsed, not_json in json_lines(content):
        if len(lines) + len(errors) >= max_lines:
            errors.append(LineError(number, "too_many_lines", f"A batch takes at most {max_lines} lines."))
            break
        problem = (
            LineError(number, "invalid_json_line", f"Line {number} is not valid JSON ({not_json}).")
            if not_json is not None
            else _check(number, parsed, endpoint, seen)
        )
        if problem is not None:
            errors.append(problem)
            continue
        assert isinstance(parsed, dict)
        seen.add(parsed["custom_id"])
        lines.append(Line(number, parsed["custom_id"], parsed["url"], parsed["body"]))
    if not lines and not errors:
        errors.append(LineError(None, "empty_file", "The file has no lines."))
    return lines, errors


def _check(number: int, parsed: Any, endpoint: str | None, seen: set[str]) -> LineError | None:
    at = f"Line {number}"
    if not isinstance(parsed, dict):
        return LineError(number, "invalid_request", f"{at} must be a JSON object.")
    custom_id = parsed.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(number, "missing_custom_id", f"{at} needs a `custom_id` string.", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID or "\x00" in custom_id:
        return LineError(
            number, "invalid_custom_id", f"{at}: `custom_id` is longer than {MAX_CUSTOM_ID} characters.", "custom_id"
        )
    if custom_id in seen:
        return LineError(
            number, "duplicate_custom_id", f"{at}: the custom_id '{custom_id}' is used by an earlier line.", "custom_id"
        )
    if parsed.get("method") != "POST":
        return LineError(number, "invalid_method", f"{at}: `method` must be 'POST'.", "method")
    url = parsed.get("url")
    if url not in SCHEMAS:
        return LineError(number, "invalid_url", f"{at}: `url` must be one of {', '.join(SCHEMAS)}.", "url")
    if endpoint is not None and url != endpoint:
        return LineError(
            number, "mismatched_endpoint", f"{at} is a request for {url}, but the batch's endpoint is {endpoint}.", "url"
        )
    body = parsed.get("body")
    if not isinstance(body, dict):
        return LineError(number, "invalid_body", f"{at}: `body` must be a JSON object.", "body")
    if body.get("stream"):
        return LineError(number, "invalid_body", f"{at}: batch requests cannot be streamed (`stream`).", "body.stream")
    unknown = set(parsed) - {"custom_id", "method", "url", "body"}
    if unknown:
        return LineError(number, "invalid_request", f"{at}: unknown field(s) {', '.join(sorted(unknown))}.")
    try:
        SCHEMAS[url].model_validate_json(orjson.dumps(body))
    except ValidationError as exc:
        error = invalid_request(exc)
        param = f"body.{error.param}" if error.param else "body"
        return LineError(number, "invalid_body", f"{at}: {error.message}", param)
    return None
