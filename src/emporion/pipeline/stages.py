"""The seam of the request path: a ``Stage`` sees every call at three points, and a module adds
itself by registering one (screening, metrics, request logs, shadow traffic) instead of editing
the path.

- ``screen(call)``: first, before limits, plan, hold or any upstream call. Raising an
  ``EmporionError`` refuses the request there: it costs nothing and holds nothing.
- ``on_chunk(call, chunk)``: each chunk of a streamed answer, as it goes to the client (streams
  only: a whole answer is in ``call.completion`` at ``observe``). Raising ends the stream there
  (what was sent is billed).
- ``observe(call)``: last, after the request is settled (or refused, or failed), with everything
  known about it. It runs on the request's task, after the answer is complete: keep it short, and
  hand slow work (a database write) to a task of its own. Its errors are logged, never raised: the
  answer is already the client's.

Stages run in the order they were registered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

from emporion.auth.principal import Principal
from emporion.core.money import Nanos
from emporion.core.requests import Ask
from emporion.core.usage import Usage
from emporion.providers.base import Chunk, Completion

if TYPE_CHECKING:
    from emporion.pipeline.plan import Plan
    from emporion.routing.router import Route

log = logging.getLogger("emporion.stages")
# The address of the client whose request this task serves, set at the HTTP edge (api/middleware.py).
CLIENT_ADDRESS: ContextVar[str | None] = ContextVar("client_address", default=None)


@dataclass
class Call:
    """One request as it goes down the path: what each stage sees, filled in as it gets known."""

    request_id: str
    principal: Principal
    ask: Ask
    streamed: bool
    price_factor: Decimal = Decimal(1)  # what it pays of the price: less for a batch line
    tags: tuple[str, ...] = ()  # what its cost is attributed to (metering/attribution.py)
    plan: Plan | None = None
    route: Route | None = None  # the deployment that served it, once one did
    completion: Completion | None = None  # a whole answer (not a stream's)
    usage: Usage | None = None  # as settled
    status: str | None = None  # completed, partial, cancelled, failed (as settled); None: refused before a hold
    cost: Nanos | None = None  # what the customer was charged
    error: BaseException | None = None  # what refused or failed it
    extra: dict[str, object] = field(default_factory=dict)  # for stages to leave notes to each other
    client: str | None = field(default_factory=CLIENT_ADDRESS.get)  # the client's address (none for batch lines)
    started_at: float = field(default_factory=time.monotonic)


class Stage:
    """Override what you need; every hook does nothing by default."""

    async def screen(self, call: Call) -> None:
        return None

    def on_chunk(self, call: Call, chunk: Chunk) -> None:
        return None

    async def observe(self, call: Call) -> None:
        return None


S = TypeVar("S", bound=Stage)


class Stages:
    def __init__(self, stages: Iterable[Stage] = ()) -> None:
        self._stages: list[Stage] = list(stages)

    def register(self, stage: Stage) -> None:
        self._stages.append(stage)

    def __bool__(self) -> bool:
        return bool(self._stages)

    def find(self, kind: type[S]) -> S | None:
        """The first stage of this kind registered (the one the metrics route renders), else None."""
        return next((stage for stage in self._stages if isinstance(stage, kind)), None)

    async def screen(self, call: Call) -> None:
        for stage in self._stages:
            await stage.screen(call)

    def on_chunk(self, call: Call, chunk: Chunk) -> None:
        for stage in self._stages:
            stage.on_chunk(call, chunk)

    async def observe(self, call: Call) -> None:
        for stage in self._stages:
            try:
                await stage.observe(call)
            except Exception:
                log.exception("stage %s failed to observe request %s", type(stage).__name__, call.request_id)
