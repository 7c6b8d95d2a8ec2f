"""API keys: made from 32 random bytes, shown once, stored as a SHA-256 hash and a visible prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "emp-"
SHOWN_CHARS = 8  # "emp-" and four more: enough to tell keys apart in a list, useless to an attacker


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    prefix: str
    key_hash: str


def generate_key() -> NewKey:
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(plaintext=plaintext, prefix=plaintext[:SHOWN_CHARS], key_hash=hash_key(plaintext))


def hash_key(plaintext: str) -> str:
    """Keys carry 256 random bits, so one fast hash suffices (no salt or stretching needed)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def redact(plaintext: str) -> str:
    """How a presented key is echoed in an error: its start and end only, as OpenAI does."""
    if len(plaintext) <= 12:
        return "*" * len(plaintext)
    return f"{plaintext[:SHOWN_CHARS]}{'*' * 8}{plaintext[-4:]}"
