"""Reading OpenAI-format messages, for the adapters that translate them into another format."""

from __future__ import annotations

from typing import Any

import orjson

from emporion.errors import InvalidRequest


def texts(content: Any) -> list[str]:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content if part.get("type") == "text"]


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, _, data = url.partition(",")
    if ";base64" not in header or not data:
        raise InvalidRequest("Image data URLs must be base64-encoded.", param="messages")
    return header[5:].split(";")[0], data


def arguments(raw: Any) -> Any:
    """A tool call's JSON arguments, parsed; a 400 when they are not JSON."""
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("A tool call's arguments are not valid JSON.", param="messages") from None
