"""The batch worker: one per replica, in the background, never on a live request's path.

It takes one batch at a time (``store.batches.claim``: a batch no live replica holds), renews its
hold while it runs, and moves it on:

- ``validating``: reads the input file; a line that does not belong (another endpoint, a broken
  body) fails the batch with every error listed in ``errors``, naming its line;
- ``in_progress``: runs the lines not yet done, ``[batches] concurrency`` at a time, each through
  the request path like a live request of its key (limited, held, metered, at the batch's
  share of the price): a line whose hold is refused ends in the error file with
  ``insufficient_credits``, so a batch never overdraws. Rate limits and a busy engine are waited
  out, not failed. A cancelled batch stops starting lines; an expired one too, and the lines
  left go to the error file as ``batch_expired``;
- ``finalizing``: writes the output file (the lines answered 200) and the error file (the
  others), and ends the batch, in one transaction.

After a restart (or on another replica, once this one stopped renewing) the batch resumes where
it was: lines done stay done; a line that was running is looked up in the ledger by the request
id it ran under — charged means its answer was lost with the process (error file,
``batch_line_interrupted``, pointing at its record), not charged means it runs again. No line is
charged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson

from emporion.auth.principal import Principal
from emporion.batches.lines import Line, parse
from emporion.errors import EmporionError
from emporion.metering import records
from emporion.pipeline import Deps
from emporion.store import batches as stored
from emporion.store import files
from emporion.store.tables import Batch

log = logging.getLogger("emporion.batches")

RunLine = Callable[[Deps, Principal, Line, str, Decimal, str], Awaitable[stored.Outcome]]
NewRequestId = Callable[[str], str]
MAX_RETRIES = 20  # waits for a rate limit or a busy engine before the line is failed with that error
MAX_BACKOFF_S = 30.0


def retryable(exc: EmporionError) -> bool:
    """Worth waiting for: the key's own rate limits, a full local engine, an upstream's 429 or 503."""
    return exc.status in (429, 503)


class BatchWorker:
    def __init__(self, deps: Deps, run_line: RunLine, new_request_id: NewRequestId) -> None:
        self.deps = deps
        self.settings = deps.settings.batches
        self.run_line = run_line
        self.new_request_id = new_request_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.wake = asyncio.Event()  # set by the API when a batch is created or cancelled here
        self.stopping = False

    async def stop(self, task: asyncio.Task, grace_s: float) -> None:
        """At shutdown: no new line starts; the lines running get ``grace_s`` to finish (a line
        cut short is charged what it made and, its answer lost, reported as interrupted on resume)."""
        self.stopping = True
        self.wake.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        while not self.stopping:
            try:
                batch_id = await stored.claim(self.deps.db, self.owner, self.settings.lease_s)
                if batch_id is not None:
                    await self._run(batch_id)
                    continue
            except Exception:
                log.exception("the batch worker's round failed; it tries again")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.poll_s)

    async def _run(self, batch_id: str) -> None:
        """Holds the batch while it is worked on; gives it back however that ends."""
        renewing = asyncio.create_task(self._renew(batch_id, asyncio.current_task()))
        try:
            await self._advance(batch_id)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await stored.release(self.deps.db, batch_id, self.owner)

    async def _renew(self, batch_id: str, work: asyncio.Task | None) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            if await stored.renew(self.deps.db, batch_id, self.owner, self.settings.lease_s) is None and work is not None:
                log.warning("batch %s was taken over by another replica: stopping here", batch_id)
                work.cancel()
                return

    async def _advance(self, batch_id: str) -> None:
        db = self.deps.db
        batch = await stored.get(db, None, batch_id)
        if batch is None or batch.status not in stored.ACTIVE:
            return
        content = await files.content(db, batch.org_id, batch.input_file_id)
        if content is None:  # gone (expired) before the batch could read it, or while it ran
            missing = {"code": "file_not_found", "message": f"No such File object: {batch.input_file_id}", "param": None}
            await stored.failed_validation(db, batch_id, [{**missing, "line": None}], stored.ACTIVE)
            return
        lines, errors = parse(content, self.settings.max_lines, batch.endpoint)
        if batch.status == "validating":
            if errors:
                await stored.failed_validation(db, batch_id, [error.to_openai() for error in errors[:1000]])
                return
            if not await stored.started(db, batch_id, len(lines)):
                return  # cancelled meanwhile: finalized below on the next round
            batch.status = "in_progress"
        if batch.status == "in_progress":
            await self._run_lines(batch, lines)
        await self._finalize(batch_id, lines)

    async def _run_lines(self, batch: Batch, lines: list[Line]) -> None:
        done = await self._resume(batch)
        todo = [line for line in lines if line.number not in done]
        price_factor = Decimal(batch.price_factor)
        queue: asyncio.Queue[Line] = asyncio.Queue()
        for line in todo:
            queue.put_nowait(line)
        stop = asyncio.Event()

        async def lane() -> None:
            while not stop.is_set() and not queue.empty():
                if self.stopping or await self._should_stop(batch):
                    stop.set()
                    return
                await self._one(batch, queue.get_nowait(), price_factor, stop)

        await asyncio.gather(*(lane() for _ in range(min(self.settings.concurrency, len(todo)) or 1)))
        if not stop.is_set() and not self.stopping:
            await stored.finalizing(self.deps.db, batch.id)

    async def _should_stop(self, batch: Batch) -> bool:
        """Cancelled (asked through the API, on any replica) or past its window."""
        now = await stored.get(self.deps.db, None, batch.id)
        return now is None or now.status != "in_progress" or time.time() >= now.expires_at

    async def _resume(self, batch: Batch) -> set[int]:
        """The lines already done, after settling what a stopped process left running."""
        db = self.deps.db
        await self.deps.ledger.flush()
        done = set()
        for row in await stored.lines(db, batch.id):
            if row.state == "done":
                done.add(row.line)
                continue
            record = await records.find(db, batch.org_id, row.request_id)
            if record is None or record.cost_nanos == 0:
                continue  # never charged: it runs again
            message = (
                f"The server stopped while this line ran: it was charged once (request {row.request_id}, "
                "see GET /v1/generation?id=…) but its answer was lost. Send it again if you need it."
            )
            lost = stored.Outcome(None, None, "batch_line_interrupted", message, cost_nanos=record.cost_nanos)
            await stored.finish_line(db, batch.id, row.line, lost)
            done.add(row.line)
        return done

    async def _one(self, batch: Batch, line: Line, price_factor: Decimal, stop: asyncio.Event) -> None:
        db = self.deps.db
        for attempt in range(MAX_RETRIES + 1):
            request_id = self.new_request_id(line.url)
            await stored.start_line(db, batch.id, line.number, line.custom_id, request_id)
            try:
                principal = await self.deps.auth.of_key(batch.key_id)
                outcome = await self.run_line(self.deps, principal, line, request_id, price_factor, batch.id)
            except EmporionError as exc:
                if not retryable(exc):  # the key revoked, the organization suspended
                    outcome = stored.Outcome(exc.status, exc.envelope())
                elif self.stopping or stop.is_set() or await self._should_stop(batch):
                    return  # not charged: it runs on resume, or goes to the error file as expired
                elif attempt == MAX_RETRIES:
                    outcome = stored.Outcome(exc.status, exc.envelope())
                else:
                    await asyncio.sleep(min(exc.retry_after_s or 2.0**attempt, MAX_BACKOFF_S))
                    continue
            await stored.finish_line(db, batch.id, line.number, outcome)
            return

    async def _finalize(self, batch_id: str, lines: list[Line]) -> None:
        """Writes the output and error files and ends the batch (cancelled, expired or completed)."""
        db = self.deps.db
        batch = await stored.get(db, None, batch_id)
        if batch is None:
            return
        if batch.status == "cancelling":
            status, when = "cancelled", ("cancelling",)
        elif batch.status == "in_progress" and time.time() >= batch.expires_at:
            status, when = "expired", ("in_progress",)
        elif batch.status == "finalizing":
            status, when = "completed", ("finalizing",)
        else:
            return
        by_number = {row.line: row for row in await stored.lines(db, batch_id)}
        output: list[bytes] = []
        failed: list[bytes] = []
        for line in lines:
            row = by_number.get(line.number)
            outcome = row.outcome if row is not None else None
            if outcome is None:
                if status != "expired":
                    continue  # cancelled before it ran: in neither file, as on OpenAI
                code, message = "batch_expired", "This line could not be run before the batch's completion window expired."
                outcome = stored.Outcome(None, None, code, message)
            request_id = row.request_id if row is not None else None
            (output if outcome.ok else failed).append(_output_line(line, request_id, outcome))
        made: dict[str, dict[str, Any]] = {}
        days = self.deps.settings.files.output_days
        for kind, rows in (("output", output), ("error", failed)):
            if rows:
                name = f"{batch_id}_{kind}.jsonl"
                made[kind] = files.row(batch.org_id, name, "batch_output", b"".join(rows), days * 86_400)
        if await stored.finish(db, batch_id, status, made, when):
            log.info("batch %s %s: %d answered, %d in the error file", batch_id, status, len(output), len(failed))


def _output_line(line: Line, request_id: str | None, outcome: stored.Outcome) -> bytes:
    response = None
    if outcome.status_code is not None:
        response = {"status_code": outcome.status_code, "request_id": request_id, "body": outcome.body}
    error = None if outcome.error_code is None else {"code": outcome.error_code, "message": outcome.error_message}
    entry = {"id": "batch_req_" + secrets.token_hex(16), "custom_id": line.custom_id, "response": response, "error": error}
    return orjson.dumps(entry) + b"\n"
