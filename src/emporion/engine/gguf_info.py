"""What a GGUF file says about itself: architecture, name, context length, chat template, license.

Only the key-value header is read (the tensors are never touched), so this takes milliseconds
even for large files. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    architecture: str
    name: str | None
    context_length: int
    has_chat_template: bool
    license: str | None


def read_gguf_info(path: Path) -> GGUFInfo:
    try:
        with path.open("rb") as file:
            metadata = _read_metadata(file)
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable GGUF file ({exc})") from None
    architecture = str(metadata.get("general.architecture") or "unknown")
    context = metadata.get(f"{architecture}.context_length")
    if not isinstance(context, int) or context <= 0:
        raise ValueError(f"{path} does not state its context length ({architecture}.context_length)")
    name, license = metadata.get("general.name"), metadata.get("general.license")
    return GGUFInfo(
        architecture=architecture,
        name=name if isinstance(name, str) else None,
        context_length=context,
        has_chat_template=isinstance(metadata.get("tokenizer.chat_template"), str),
        license=license if isinstance(license, str) else None,
    )


def _read_metadata(file: BinaryIO) -> dict[str, object]:
    if file.read(4) != MAGIC:
        raise ValueError("no GGUF magic number")
    version, _tensors, count = struct.unpack("<IQQ", file.read(20))
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    metadata: dict[str, object] = {}
    for _ in range(count):
        key = _string(file)
        (kind,) = struct.unpack("<I", file.read(4))
        metadata[key] = _value(file, kind)
    return metadata


def _string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", file.read(8))
    return file.read(length).decode("utf-8")


def _value(file: BinaryIO, kind: int) -> object:
    if kind == STRING:
        return _string(file)
    if kind == ARRAY:
        item_kind, length = struct.unpack("<IQ", file.read(12))
        if item_kind in SCALARS:  # skipped: arrays (vocabularies, scores) are not needed here
            file.seek(length * struct.calcsize(SCALARS[item_kind]), 1)
        elif item_kind == STRING:
            for _ in range(length):
                file.seek(struct.unpack("<Q", file.read(8))[0], 1)
        else:
            for _ in range(length):
                _value(file, item_kind)
        return None
    if kind not in SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    fmt = SCALARS[kind]
    return struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]
