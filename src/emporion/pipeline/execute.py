"""Execution: the planned request sent to its deployments (the router's executor tries them in
turn), a whole answer, a stream, or embeddings. Everything it learns on the way — where it went,
what came back, how it ended — it writes on the request's ``Bill`` for the settlement."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from emporion.core.money import Nanos
from emporion.core.requests import EmbeddingRequest, Generate
from emporion.core.usage import Usage
from emporion.engine.embeddings import Embedded
from emporion.pipeline.deps import Deps
from emporion.pipeline.hold import Bill
from emporion.pipeline.plan import Plan
from emporion.pipeline.stages import Call
from emporion.providers.base import Chunk, Completion, Request
from emporion.providers.folding import Fold
from emporion.routing.candidates import Candidate
from emporion.routing.router import Route


@dataclass(frozen=True, slots=True)
class Embeddings:
    route: Route
    embedded: Embedded


async def answer(deps: Deps, call: Call, bill: Bill) -> Completion | Embeddings:
    """A whole answer: one upstream call per prompt (several at once), or the embedder."""
    assert call.plan is not None
    plan = call.plan.capped(bill.output_cap)
    if isinstance(call.ask, EmbeddingRequest):
        return await _embed(deps, call.ask, plan, bill)
    parts = plan.parts()
    if len(parts) == 1:
        route, completion = await _one(deps, plan, parts[0], bill)
    else:
        results = await asyncio.gather(*(_one(deps, plan, part, bill) for part in parts), return_exceptions=True)
        answers: list[tuple[Route, Completion]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        route = answers[0][0]
        choices = [replace(completion.choices[0], index=index) for index, (_, completion) in enumerate(answers)]
        completion = Completion(choices=choices, usage=sum((completion.usage for _, completion in answers), Usage()))
    bill.answered(route, completion)
    call.completion = completion
    return completion


async def _one(deps: Deps, plan: Plan, part: Generate, bill: Bill) -> tuple[Route, Completion]:
    def request_for(candidate: Candidate) -> Request:
        return plan.request_for(candidate, part)

    if plan.folds():
        return await _folded(deps, plan, request_for, bill)
    attempted, completion = await deps.router.executor.complete(list(plan.candidates), request_for)
    return Route(attempted.candidate.model, attempted.candidate, attempted.attempts), completion


async def _folded(deps: Deps, plan: Plan, request_for: Callable[[Candidate], Request], bill: Bill) -> tuple[Route, Completion]:
    """One answer made from a stream (the local engine: so that a client who leaves stops the
    generation at once, and the bill knows what was made until then)."""
    fold = Fold(plan.endpoint)
    async with contextlib.AsyncExitStack() as resources:
        attempted, chunks = await deps.router.executor.stream(list(plan.candidates), request_for, resources)
        route = Route(attempted.candidate.model, attempted.candidate, attempted.attempts)
        bill.serving(route, request_for(attempted.candidate))
        async for chunk in chunks:
            before = fold.output_chunks
            fold.feed(chunk)
            bill.output_pieces += fold.output_chunks - before
    return route, fold.completion()


async def _embed(deps: Deps, ask: EmbeddingRequest, plan: Plan, bill: Bill) -> Embeddings:
    assert deps.embedder is not None, "planning refuses embeddings while the embedder is not ready"
    candidate = plan.candidates[0]
    route = Route(candidate.model, candidate)
    bill.serving(route)
    embedded = await deps.embedder.embed(ask.inputs())  # type: ignore[arg-type]  # texts: handle() decoded any token ids
    bill.answered(route, Completion(choices=[], usage=Usage(input_tokens=embedded.tokens)))
    return Embeddings(route, embedded)


# --- streams ---------------------------------------------------------------------------------------


class Streamed:
    """A started stream: its first output is already in hand (so a failure before any output is
    still a plain HTTP error, or falls back). Iterating it settles the request as soon as the
    upstream ends — before the client gets the last chunk — and ``aclose`` closes the rest of the
    request's path, which the stream owns (the upstream connection, the engine slot, the settlement
    of a stream cut short, the concurrency slots), whatever happened."""

    def __init__(self, deps: Deps, call: Call, bill: Bill, route: Route, chunks: AsyncIterator[Chunk]) -> None:
        self.route = route
        self.headers: dict[str, str] = {}
        self._bill = bill
        self._path = contextlib.AsyncExitStack()
        self._chunks = self._metered(deps, call, chunks)
        bill.status = "cancelled"  # until it ends: closed before its end, the client left

    def own(self, path: contextlib.AsyncExitStack) -> None:
        """Takes over the rest of the request's path (closed by ``aclose``)."""
        self._path = path

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks

    @property
    def charged(self) -> Nanos:
        """What the customer paid: known once the stream has been iterated to its end."""
        return self._bill.charged

    async def aclose(self) -> None:
        await self._path.aclose()

    async def _metered(self, deps: Deps, call: Call, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The stream as it goes by: the usage it reports, else the output it carried (one token
        per piece), and how it ended: ``completed``, ``partial`` (the upstream failed after output:
        with the last finish reason seen, else ``error``), ``failed`` (before any output), or —
        closed before its end — ``cancelled``."""
        bill = self._bill
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    bill.usage = chunk.usage
                for choice in chunk.choices:
                    if choice.carries_output:
                        bill.output_pieces += 1
                    bill.finish = choice.finish_reason or bill.finish
                deps.stages.on_chunk(call, chunk)
                yield chunk
        except Exception:
            bill.status = "partial" if bill.output_pieces else "failed"
            bill.finish = bill.finish or "error"
            raise
        bill.status = "completed"
        await self.aclose()  # settled before the client gets its last chunk and [DONE]: what it saw is charged


async def stream(deps: Deps, call: Call, bill: Bill, path: contextlib.AsyncExitStack) -> Streamed:
    """Opens the stream (one per prompt, merged), its upstream resources entered into ``path``."""
    assert call.plan is not None
    plan = call.plan.capped(bill.output_cap)
    parts = plan.parts()
    opened = [await _open(deps, plan, part, path) for part in parts]
    route, request, chunks = opened[0]
    bill.serving(route, request if len(parts) == 1 else None)
    merged = chunks if len(opened) == 1 else _merged([chunks for _, _, chunks in opened])
    return Streamed(deps, call, bill, route, merged)


async def _open(
    deps: Deps, plan: Plan, part: Generate, path: contextlib.AsyncExitStack
) -> tuple[Route, Request, AsyncIterator[Chunk]]:
    def request_for(candidate: Candidate) -> Request:
        return plan.request_for(candidate, part)

    attempted, chunks = await deps.router.executor.stream(list(plan.candidates), request_for, path)
    return Route(attempted.candidate.model, attempted.candidate, attempted.attempts), request_for(attempted.candidate), chunks


async def _merged(streams: list[AsyncIterator[Chunk]]) -> AsyncIterator[Chunk]:
    """Chunks of several streams as they come, each choice indexed by its prompt; one usage at the end."""
    queue: asyncio.Queue[tuple[int, Chunk | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, chunks: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in chunks:
                await queue.put((index, chunk, None))
        except Exception as exc:
            await queue.put((index, None, exc))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(index, chunks)) for index, chunks in enumerate(streams)]
    usage, open_streams = Usage(), len(tasks)
    try:
        while open_streams:
            index, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                open_streams -= 1
                continue
            if chunk.usage is not None:
                usage = usage + chunk.usage
            if chunk.choices:
                yield Chunk(choices=[replace(choice, index=index) for choice in chunk.choices])
        yield Chunk(choices=[], usage=usage)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
