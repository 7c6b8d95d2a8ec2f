"""Who and what a request's cost is attributed to, beside its organization and key: the end user
(the request's ``user``, Anthropic's ``metadata.user_id``) and its tags — the ``x-emporion-tags``
header (comma-separated) and each ``metadata`` entry as ``key:value`` — recorded with the request,
and what usage reports and statements group by."""

from __future__ import annotations

import re
from typing import Any

from emporion.errors import InvalidRequest

HEADER = "x-emporion-tags"
MAX_TAGS = 16
MAX_TAG = 128
MAX_USER = 256
TAG = re.compile(r"[^\x00-\x1f\x7f,]{1,128}")


def tags_of(header: str | None, metadata: Any = None) -> tuple[str, ...]:
    """The request's tags, in order, without repeats; a 400 naming the header or field when they
    are not tags (control characters, too long, too many)."""
    tags: list[str] = []
    for raw in (header or "").split(","):
        tag = raw.strip()
        if not tag:
            continue
        if len(tag) > MAX_TAG or not TAG.fullmatch(tag):
            raise InvalidRequest(
                f"Invalid tag in the {HEADER} header: at most {MAX_TAG} characters, no control characters.", param=HEADER
            )
        tags.append(tag)
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if isinstance(key, str) and isinstance(value, str):
                tag = f"{key}:{value}"
                if TAG.fullmatch(tag):
                    tags.append(tag)
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InvalidRequest(f"A request has at most {MAX_TAGS} tags ({HEADER} and metadata together).", param=HEADER)
    return unique


def end_user_of(user: Any) -> str | None:
    """The end user a request names (``user``), as recorded: None when it names none."""
    if not isinstance(user, str) or not user:
        return None
    if "\x00" in user:
        raise InvalidRequest("Invalid 'user': it contains a NUL character.", param="user")
    return user[:MAX_USER]
