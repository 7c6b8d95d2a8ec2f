"""What a GGUF file says about itself: architecture, name, context length, chat template, license."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    architecture: str
    name: str | None
    context_length: int
    has_chat_template: bool
    license: str | None


def read_gguf_info(path: Path) -> GGUFInfo:
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # the gguf package raises bare ValueError/struct errors on bad files
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from None
    fields = reader.fields

    def text(key: str) -> str | None:
        field = fields.get(key)
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")

    def number(key: str) -> int | None:
        field = fields.get(key)
        if field is None or not field.data:
            return None
        return int(field.parts[field.data[0]][0])

    architecture = text("general.architecture") or "unknown"
    context = number(f"{architecture}.context_length")
    if not context:
        raise ValueError(f"{path} does not state its context length ({architecture}.context_length)")
    return GGUFInfo(
        architecture=architecture,
        name=text("general.name"),
        context_length=context,
        has_chat_template=text("tokenizer.chat_template") is not None,
        license=text("general.license"),
    )
