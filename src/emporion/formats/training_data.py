"""Fine-tuning files, line by line, as OpenAI takes them: the chat format
``{"messages": [{"role", "content"}, ...]}`` (optionally with ``tools``; at least one assistant
message to learn from) or the completion format ``{"prompt": "...", "completion": "..."}``, one
format for the whole file. Every error names its line."""

from __future__ import annotations

from typing import Any

from emporion.formats.jsonl import LineError, json_lines

ROLES = {"system", "developer", "user", "assistant", "tool"}


def check(content: bytes, max_lines: int) -> list[LineError]:
    """What is wrong with a training file (nothing: an empty list)."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return [LineError(None, "invalid_file_encoding", "The file is not UTF-8 text.")]
    errors: list[LineError] = []
    kind: str | None = None
    count = 0
    for number, parsed, not_json in json_lines(content):
        count += 1
        if count > max_lines:
            errors.append(LineError(number, "too_many_lines", f"A training file takes at most {max_lines} lines."))
            break
        if not_json is not None:
            errors.append(LineError(number, "invalid_json_line", f"Line {number} is not valid JSON ({not_json})."))
            continue
        chat = isinstance(parsed, dict) and "messages" in parsed
        this = "chat" if chat else "completion"
        kind = kind or this
        problem = (
            LineError(number, "mixed_formats", f"Line {number} is in the {this} format, earlier lines in the {kind} format.")
            if this != kind
            else (_chat(number, parsed) if isinstance(parsed, dict) and chat else _completion(number, parsed))
        )
        if problem is not None:
            errors.append(problem)
    if count == 0:
        errors.append(LineError(None, "empty_file", "The file has no lines."))
    return errors


def _chat(number: int, line: dict[str, Any]) -> LineError | None:
    at = f"Line {number}"
    messages = line["messages"]
    if not isinstance(messages, list) or not messages:
        return LineError(number, "invalid_messages", f"{at}: `messages` must be a non-empty list.", "messages")
    for index, message in enumerate(messages):
        where = f"messages.[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return LineError(number, "invalid_role", f"{at}: {where} needs a `role` of {', '.join(sorted(ROLES))}.", where)
        content = message.get("content")
        if content is None and not (message["role"] == "assistant" and message.get("tool_calls")):
            return LineError(number, "missing_content", f"{at}: {where} has no `content`.", f"{where}.content")
        if content is not None and not isinstance(content, str | list):
            return LineError(number, "invalid_content", f"{at}: {where}.content must be a string or a list of parts.")
        if "weight" in message and message["weight"] not in (0, 1):
            return LineError(number, "invalid_weight", f"{at}: {where}.weight must be 0 or 1.", f"{where}.weight")
    if not any(message["role"] == "assistant" for message in messages):
        return LineError(number, "no_assistant_message", f"{at} has no assistant message to learn from.", "messages")
    unknown = set(line) - {"messages", "tools", "parallel_tool_calls", "functions"}
    if unknown:
        return LineError(number, "invalid_field", f"{at}: unknown field(s) {', '.join(sorted(unknown))}.")
    return None


def _completion(number: int, line: Any) -> LineError | None:
    at = f"Line {number}"
    if not isinstance(line, dict):
        return LineError(number, "invalid_line", f"{at} must be a JSON object.")
    for field in ("prompt", "completion"):
        if not isinstance(line.get(field), str):
            return LineError(
                number, "invalid_line", f"{at} needs `messages` (chat format) or `prompt` and `completion` strings.", field
            )
    if not line["completion"]:
        return LineError(number, "empty_completion", f"{at}: `completion` is empty.", "completion")
    unknown = set(line) - {"prompt", "completion"}
    if unknown:
        return LineError(number, "invalid_field", f"{at}: unknown field(s) {', '.join(sorted(unknown))}.")
    return None
