"""Trying candidates: retries with exponential backoff and jitter on retryable failures (429 with
its Retry-After, 5xx, connection errors, timeouts), then the next deployment; all before the
first byte reaches the client. After that a failure ends the stream: two models are never
spliced into one answer."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from emporion.core.usage import Usage
from emporion.errors import EmporionError, EngineOverloaded, UpstreamError, UpstreamNotFound
from emporion.limits.gate import Admission
from emporion.providers.base import Adapter, Chunk, Completion, Request
from emporion.routing.affinity import AffinityBook
from emporion.routing.candidates import Candidate
from emporion.routing.health import Health, HealthBook
from emporion.settings import RoutingSettings


@dataclass(frozen=True, slots=True)
class Attempted:
    candidate: Candidate
    attempts: int


class Executor:
    def __init__(
        self,
        settings: RoutingSettings,
        adapters: dict[str, Adapter],
        admissions: dict[str, Admission],
        health: HealthBook,
        sleep: Callable[[float], object] = asyncio.sleep,
        affinity: AffinityBook | None = None,
    ) -> None:
        self.settings = settings
        self.adapters = adapters
        self.admissions = admissions
        self.health = health
        self.sleep = sleep
        self.affinity = affinity  # told which deployment served a conversation asking for caching

    def _served(self, candidate: Candidate, usage: Usage | None) -> None:
        if self.affinity is not None and candidate.conversation is not None:
            self.affinity.remember(candidate.conversation, candidate.key, usage)

    async def complete(
        self, candidates: list[Candidate], request_for: Callable[[Candidate], Request]
    ) -> tuple[Attempted, Completion]:
        async with contextlib.aclosing(self._attempts(candidates)) as attempts:
            return await self._complete(attempts, request_for)

    async def _complete(
        self, attempts: AsyncIterator[tuple[Candidate, _Attempt]], request_for: Callable[[Candidate], Request]
    ) -> tuple[Attempted, Completion]:
        async for candidate, attempt in attempts:
            health = self.health[candidate.key]
            health.breaker.begin()
            began = time.monotonic()
            try:
                async with self._admitted(candidate):
                    completion = await self.adapters[candidate.upstream.adapter].complete(
                        request_for(candidate), candidate.upstream
                    )
            except UpstreamError as exc:
                _count_failure(health, exc)
                attempt.failed(exc)
                continue
            except BaseException:
                health.breaker.released()
                raise
            elapsed = time.monotonic() - began
            health.record_success(elapsed, completion.usage.output_tokens, elapsed)
            self._served(candidate, completion.usage)
            return Attempted(candidate, attempt.number), completion
        raise AssertionError("unreachable: _attempts raises when every attempt failed")

    async def stream(
        self, candidates: list[Candidate], request_for: Callable[[Candidate], Request], resources: contextlib.AsyncExitStack
    ) -> tuple[Attempted, AsyncIterator[Chunk]]:
        """Opens the first candidate that produces output. Leading chunks without content (the
        role delta) are held back, so a failure before any content can still fall back."""
        async with contextlib.aclosing(self._attempts(candidates)) as attempts:
            return await self._open(attempts, request_for, resources)

    async def _open(
        self,
        attempts: AsyncIterator[tuple[Candidate, _Attempt]],
        request_for: Callable[[Candidate], Request],
        resources: contextlib.AsyncExitStack,
    ) -> tuple[Attempted, AsyncIterator[Chunk]]:
        async for candidate, attempt in attempts:
            health = self.health[candidate.key]
            health.breaker.begin()
            began = time.monotonic()
            attempt_resources = contextlib.AsyncExitStack()
            try:
                await attempt_resources.enter_async_context(self._admitted(candidate))
                chunks = self.adapters[candidate.upstream.adapter].stream(request_for(candidate), candidate.upstream)
                attempt_resources.push_async_callback(chunks.aclose)
                held: list[Chunk] = []
                async for chunk in chunks:
                    held.append(chunk)
                    if _commits(chunk):
                        break
            except UpstreamError as exc:
                await attempt_resources.aclose()
                _count_failure(health, exc)
                attempt.failed(exc)
                continue
            except BaseException:
                await attempt_resources.aclose()
                health.breaker.released()
                raise
            resources.push_async_exit(attempt_resources)
            ttft = time.monotonic() - began
            self._served(candidate, None)  # a request that asked for caching: known at once
            return Attempted(candidate, attempt.number), self._watched(held, chunks, candidate, began, ttft)
        raise AssertionError("unreachable: _attempts raises when every attempt failed")

    async def _watched(
        self, held: list[Chunk], rest: AsyncIterator[Chunk], candidate: Candidate, began: float, ttft: float
    ) -> AsyncIterator[Chunk]:
        health = self.health[candidate.key]
        usage: Usage | None = None
        try:
            for chunk in held:
                usage = chunk.usage or usage
                yield chunk
            async for chunk in rest:
                usage = chunk.usage or usage
                yield chunk
        except UpstreamError:
            health.record_failure()
            raise
        except BaseException:
            health.breaker.released()
            raise
        health.record_success(ttft, usage.output_tokens if usage else 0, time.monotonic() - began)
        self._served(candidate, usage)  # one that the upstream served from (or into) its cache

    async def _attempts(self, candidates: list[Candidate]) -> AsyncGenerator[tuple[Candidate, _Attempt], None]:
        """Yields (candidate, attempt) until the caller returns; raises the last failure when the
        attempts are spent. A deployment is retried after a backoff only while it is worth it."""
        s = self.settings
        attempt = _Attempt()
        for candidate in candidates:
            tries = 0
            while attempt.number < s.max_attempts:
                attempt.number += 1
                tries += 1
                attempt.error = None
                yield candidate, attempt
                error = attempt.error
                if error is None:
                    return
                if not error.retryable or tries > s.retries_per_deployment:
                    break
                wait = self._backoff(tries, error)
                if wait is None or attempt.number >= s.max_attempts:
                    break
                await self.sleep(wait)
        assert attempt.last is not None
        raise attempt.last

    def _backoff(self, tries: int, error: UpstreamError) -> float | None:
        """Full jitter over an exponential ceiling; a Retry-After longer than the cap sends the
        request to the next deployment instead of waiting."""
        s = self.settings
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= s.max_backoff_s else None
        return random.uniform(0, min(s.max_backoff_s, s.backoff_base_s * 2 ** (tries - 1)))

    @contextlib.asynccontextmanager
    async def _admitted(self, candidate: Candidate) -> AsyncIterator[None]:
        admission = self.admissions.get(candidate.upstream.name)
        if admission is None:
            yield
        else:
            async with admission.admit():
                yield


class _Attempt:
    def __init__(self) -> None:
        self.number = 0
        self.error: UpstreamError | None = None
        self.last: EmporionError | None = None

    def failed(self, error: UpstreamError) -> None:
        self.error = error
        self.last = error


def _commits(chunk: Chunk) -> bool:
    """Past this chunk the stream is the client's (no fallback any more): output, an end, or usage."""
    return chunk.carries_output or any(choice.finish_reason for choice in chunk.choices) or chunk.usage is not None


def _count_failure(health: Health, error: UpstreamError) -> None:
    """Only failures of the upstream itself count against its health: a full local queue, or a
    request the upstream refused (its 404), says nothing about it."""
    if isinstance(error, EngineOverloaded | UpstreamNotFound):
        health.breaker.released()
    else:
        health.record_failure()
