"""JSON Lines files as the API takes them (batch inputs, training data): one JSON value a line,
blank lines skipped, every error naming its line (1-based, as an editor shows it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class LineError:
    line: int | None  # None: the file as a whole
    code: str
    message: str
    param: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def json_lines(content: bytes) -> Iterator[tuple[int, Any | None, str | None]]:
    """(line number, the parsed JSON or None, why it is not JSON or None) for each non-blank line."""
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield number, orjson.loads(raw), None
        except orjson.JSONDecodeError as exc:
            yield number, None, str(exc).split(":")[0]


def describe(errors: list[LineError]) -> str:
    """The errors in one message (an upload's 400): the first few, and how many more."""
    shown = "; ".join(error.message for error in errors[:5])
    return shown + (f"; and {len(errors) - 5} more error(s)" if len(errors) > 5 else "")
