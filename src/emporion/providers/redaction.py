"""What of an upstream's own words may reach a client: its error text with credentials, URLs and
the operator's keys taken out, and cut to a readable length.

An upstream's error message is untrusted text: a proxy in front of a provider may echo the
request's headers (``Authorization: Bearer sk-…``, the operator's provider key) or name its
internal URLs. Every message relayed from an upstream passes through ``upstream_text`` once,
where the adapters turn it into an ``EmporionError``.
"""

from __future__ import annotations

import re

from emporion.providers.base import Upstream

MAX_CHARS = 500
REDACTED = "[redacted]"

_PATTERNS = [
    # Authorization schemes and their token: "Bearer sk-…", "Basic dXNlcj…"
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    # key = value pairs that carry secrets (headers, query strings, JSON dumps)
    re.compile(
        r"(?i)([\"']?\b(?:x-)?(?:api[-_]?key|apikey|access[-_]?token|secret|password|authorization|x-goog-api-key)"
        r"[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])(?:(?:bearer|basic)\s+)?[^\s\"'&,;}]{4,}"
    ),
    # well-known key shapes: OpenAI/Anthropic (sk-…), Emporion (emp-…), Google (AIza…), GitHub, AWS, Slack, JWTs
    re.compile(r"\b(?:sk|emp|rk|pk)-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,})"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # URLs (an upstream's own address, or internal hosts behind it)
    re.compile(r"(?i)\b(?:https?|wss?)://[^\s\"'<>]+"),
]


def upstream_text(upstream: Upstream, text: object) -> str:
    """``text`` from ``upstream`` as a client may read it."""
    cleaned = str(text)
    for secret in (upstream.api_key, upstream.base_url.rstrip("/")):
        if secret and len(secret) >= 4:
            cleaned = cleaned.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        cleaned = pattern.sub(_redacted, cleaned)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= MAX_CHARS else cleaned[: MAX_CHARS - 1] + "…"


def _redacted(match: re.Match[str]) -> str:
    """Keeps the name of what was redacted ("Bearer", "api_key=") where the pattern captured it."""
    if match.lastindex:
        head = match.group(1)
        return f"{head} {REDACTED}" if head[-1:].isalnum() else f"{head}{REDACTED}"
    return REDACTED
