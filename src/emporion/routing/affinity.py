"""Prompt-cache affinity: a conversation served with prompt caching goes back to the deployment
that holds its cache, instead of being split or fallen back elsewhere, while it is healthy.

A provider's prompt cache lives on one deployment (Anthropic's for 5 minutes after its last use,
or an hour). A conversation whose request carried a ``cache_control`` breakpoint, or that was
served with cache reads or writes, is remembered for ``[routing] cache_affinity_s`` after its last
turn, keyed by organization and a digest of its cacheable prefix: the tools, then each message,
in the order Anthropic caches them, ``cache_control`` itself left out (a breakpoint that moves to
the newest message does not change what was cached). A turn remembers the digests of its whole
prompt and of the prefix up to each breakpoint; the next turn of the conversation starts with one
of those prefixes, and is sent first to the deployment that served it. Only prefixes that reach
the conversation's first message count: a system prompt and tools that many conversations share
do not pull every new conversation onto one deployment (the split still decides those).

A weighted split picks the first deployment of a cached conversation from a digest of its start
(the tools, the system prompt and the first message) rather than at random: every turn, on every
replica, lands on the same deployment without any shared state. What is remembered after a
fallback stays in this replica (see README, "Prompt caching"): a miss costs one cache write, never
a wrong answer, and no request pays a round trip to Redis for it.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from emporion.core.requests import ChatCompletionRequest
from emporion.core.usage import Usage

MAX_ENTRIES = 100_000  # prefixes remembered per replica; the least recently used go first


class Conversation:
    """A chat request as prompt caching sees it: its organization, whether it asks for caching,
    and the digests of its prefixes (computed when first needed, once)."""

    __slots__ = ("_digests", "ask", "body", "org_id")

    def __init__(self, org_id: str, ask: ChatCompletionRequest, body: dict[str, Any]) -> None:
        self.org_id = org_id
        self.ask = ask  # the typed request: its cache_control breakpoints (never dumped)
        self.body = body  # the request dumped (what the plan reads): what the digests are of
        self._digests: list[bytes] | None = None

    @property
    def _tools_offset(self) -> int:
        return 1 if self.body.get("tools") else 0

    def breakpoints(self) -> list[int]:
        """The prefixes (counted in items: the tools, then each message) that end at a breakpoint."""
        ask, offset = self.ask, self._tools_offset
        ends = [offset] if offset and any(tool.cache_control for tool in ask.tools or ()) else []
        for position, message in enumerate(ask.messages):
            parts = message.content if isinstance(message.content, list) else ()
            if message.cache_control or any(part.cache_control for part in parts):
                ends.append(offset + position + 1)
        if ask.cache_control:  # automatic caching: the breakpoint is on the last block
            ends.append(offset + len(ask.messages))
        return ends

    @property
    def cacheable(self) -> bool:
        """The request asks for prompt caching: a ``cache_control`` breakpoint anywhere in it."""
        return bool(self.breakpoints())

    def digests(self) -> list[bytes]:
        """The digest of each prefix: ``digests()[n - 1]`` is that of the first ``n`` items. A
        message's text is the same whether it comes as a string or as one text part."""
        if self._digests is None:
            self._digests = self._hashed(len(self.body.get("messages") or ()))
        return self._digests

    def _hashed(self, messages: int) -> list[bytes]:
        """The digests of the prefixes of the tools and the first ``messages`` messages."""
        running = hashlib.sha256(self.org_id.encode() + b"\0")
        items = [self.body["tools"]] if self._tools_offset else []
        items += [_canonical(m) for m in (self.body.get("messages") or ())[:messages]]
        digests = []
        for item in items:
            running.update(orjson.dumps(item, option=orjson.OPT_SORT_KEYS, default=str) + b"\0")
            digests.append(running.copy().digest())
        return digests

    def start(self) -> int:
        """The shortest prefix that is this conversation's own: through its first message after
        the system prompt (the whole prompt when there is none)."""
        messages = self.body.get("messages") or ()
        firsts = [i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")]
        return max(self._tools_offset + (firsts[0] + 1 if firsts else len(messages)), 1)

    def seed(self) -> str | None:
        """The digest of the conversation's start, the same on every turn: what a weighted split
        picks a cached conversation by (the start alone is hashed)."""
        digests = self._digests or self._hashed(self.start() - self._tools_offset)
        return digests[min(self.start(), len(digests)) - 1].hex() if digests else None


class AffinityBook:
    """Which deployment holds which conversation's cache, for ``ttl_s`` after its last turn.
    ``clock`` is injectable (tests); monotonic by default."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[str, str, float]] = OrderedDict()  # digest -> (org, deployment, until)
        self._per_org: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def pinned(self, conversation: Conversation) -> str | None:
        """The deployment (a candidate key) that served the longest remembered prefix of the
        conversation, while remembered; None when none is."""
        if not self.enabled or not self._per_org[conversation.org_id]:
            return None  # nothing remembered for this organization: no digest to compute
        now = self.clock()
        for digest in reversed(conversation.digests()[conversation.start() - 1 :]):
            entry = self._entries.get(digest)
            if entry is None:
                continue
            if entry[2] <= now:
                self._drop(digest)
                continue
            return entry[1]
        return None

    def remember(self, conversation: Conversation, deployment: str, usage: Usage | None = None) -> None:
        """``deployment`` served the conversation: remembered if the request asked for caching or
        the upstream read or wrote its cache (``usage``)."""
        cached = usage is not None and (usage.cached_input_tokens or usage.cache_write_tokens)
        if not self.enabled or not (cached or conversation.cacheable):
            return
        digests = conversation.digests()
        if not digests:
            return
        until = self.clock() + self.ttl_s
        for end in {*conversation.breakpoints(), len(digests)}:
            if end < conversation.start():
                continue  # a prefix the conversation shares with others (its tools, its system prompt)
            digest = digests[end - 1]
            if digest in self._entries:
                self._entries.move_to_end(digest)
            else:
                self._per_org[conversation.org_id] += 1
            self._entries[digest] = (conversation.org_id, deployment, until)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, digest: bytes) -> None:
        org_id = self._entries.pop(digest)[0]
        self._per_org[org_id] -= 1
        if self._per_org[org_id] <= 0:
            del self._per_org[org_id]


def _canonical(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {**message, "content": [{"type": "text", "text": content}]} if isinstance(content, str) else message
