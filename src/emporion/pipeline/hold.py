"""The hold and the settlement: one context manager around the upstream call.

On entry it reserves the worst case over the deployments the plan kept (402 when the balance or
a key budget cannot cover it). A request without ``max_tokens`` holds the most it may generate —
the context, or ``[engine] default_max_tokens`` on the local engine — or, when the credit cannot
cover that, as many output tokens as the credit pays for, and its generation is capped there:
a request never costs more than its hold.

On exit it settles exactly once, whatever happened, from what execution wrote on the ``Bill``:
- a whole answer: its usage, ``completed``;
- a client who left (cancelled): what was made until then — the upstream's usage where it gave
  one, else the prompt as the local engine tokenizes it (else its estimate) and one token per
  piece of output seen;
- a stream the upstream cut after output: ``partial`` (marked by the stream's meter);
- any other failure: ``failed``, at zero;
- zero-completion insurance: an answer with no output that ended in an error (finish reason
  ``error``, or a failed stream) is ``failed`` at zero too, even where the upstream reported
  prompt tokens (recorded, not charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from emporion.auth.principal import Principal
from emporion.core.money import Nanos
from emporion.core.usage import Usage
from emporion.metering.attribution import end_user_of
from emporion.metering.ledger import BudgetExceeded, InsufficientCredits, Settled
from emporion.metering.meter import Served, Status, Tab, UsageSource, affordable_output, budgets_of, worst_case
from emporion.pipeline.deps import Deps
from emporion.pipeline.limit import Limited
from emporion.pipeline.plan import Plan
from emporion.pipeline.sizing import Sizing
from emporion.pipeline.stages import Call
from emporion.providers.base import Completion, Request
from emporion.routing.router import Route


@dataclass
class Bill:
    """What a request is running up: written by execution, settled once by ``held``."""

    tab: Tab
    output_cap: int | None  # max_tokens imposed on each choice where the request named none
    prompt_estimate: int  # what its prompt is billed at when nobody can count it
    route: Route | None = None  # the deployment serving it, once one does
    request: Request | None = None  # as that deployment got it (to count its prompt)
    usage: Usage | None = None  # as the upstream reported it
    output_pieces: int = 0  # pieces of output seen (billed as one token each where no usage came)
    status: Status | None = None  # None until execution or failure says
    finish: str | None = None
    settled: Settled | None = None

    @property
    def charged(self) -> Nanos:
        return self.settled.charged if self.settled else Nanos(0)

    def serving(self, route: Route, request: Request | None = None) -> None:
        self.route, self.request = route, request

    def answered(self, route: Route, completion: Completion) -> None:
        self.route, self.usage, self.status, self.finish = route, completion.usage, "completed", completion.finish_reason


@contextlib.asynccontextmanager
async def held(deps: Deps, call: Call, sizing: Sizing, limited: Limited) -> AsyncIterator[Bill]:
    plan = call.plan
    assert plan is not None, "a request is planned before it is held"
    per_choice, hold = await _reserve(deps, call.principal, call.request_id, plan, sizing, call.price_factor)
    flexible = plan.kind != "embedding" and sizing.asked is None
    cap = per_choice if flexible and (per_choice < plan.output_per_choice or plan.local) else None
    end_user = end_user_of(getattr(call.ask, "user", None))
    tab = Tab(
        deps.ledger,
        deps.pricebook,
        call.principal,
        call.request_id,
        plan.kind,
        call.streamed,
        hold,
        price_factor=call.price_factor,
        end_user=end_user,
        tags=call.tags,
    )
    bill = Bill(tab, cap, sizing.prompt_guess)
    try:
        yield bill
    except asyncio.CancelledError:  # the client left (api/disconnect.py): what was made is billed
        bill.status = "cancelled"
        raise
    except BaseException:
        if bill.status is None:  # a whole answer that failed is free (a stream's meter marks its own end)
            bill.status, bill.route, bill.usage = "failed", None, None
        raise
    finally:
        await _settle(deps, bill, call, limited)


async def _reserve(
    deps: Deps, principal: Principal, request_id: str, plan: Plan, sizing: Sizing, price_factor: Decimal
) -> tuple[int, Nanos]:
    """Holds the worst case of ``plan.output_per_choice`` output tokens a choice; when that is more
    than the credit (or a budget) covers and the request set no max_tokens, holds what the credit
    covers instead. Returns the output tokens a choice may make, and the hold."""
    deployments = [(candidate.model, candidate.deployment) for candidate in plan.candidates]
    per_choice = 0 if plan.kind == "embedding" else plan.output_per_choice

    def cost_of(output_per_choice: int) -> Nanos:
        tokens = output_per_choice * sizing.choices
        return worst_case(principal, deps.pricebook, deployments, sizing.prompt_bound, tokens, price_factor)

    budgets = budgets_of(principal, time.time())
    try:
        hold = cost_of(per_choice)
        await _reserve_once(deps, principal, request_id, hold, budgets)
        return per_choice, hold
    except (InsufficientCredits, BudgetExceeded):
        if plan.kind == "embedding" or sizing.asked is not None:
            raise
        affordable = affordable_output(cost_of, per_choice, await deps.ledger.available(principal.org_id))
        if affordable < 1:
            raise
    hold = cost_of(affordable)
    await _reserve_once(deps, principal, request_id, hold, budgets)
    return affordable, hold


async def _reserve_once(deps: Deps, principal: Principal, request_id: str, hold: Nanos, budgets: list[tuple[str, int]]) -> None:
    try:
        await deps.ledger.reserve(principal.org_id, request_id, hold, deps.settings.metering.hold_ttl_s, budgets)
    except asyncio.CancelledError:
        deps.ledger.release_soon(request_id)
        raise


async def _settle(deps: Deps, bill: Bill, call: Call, limited: Limited) -> None:
    status = bill.status or "completed"
    route = bill.route
    source: UsageSource
    if route is None:
        usage, source = Usage(), "none"
    elif bill.usage is not None:
        usage, source = bill.usage, "upstream"
    else:
        usage, source = await _counted(deps, bill), "counted"
    # Zero-completion insurance: no output and an error is free, whatever prompt the upstream reported.
    insured = route is not None and usage.output_tokens == 0 and (status == "failed" or bill.finish == "error")
    if insured:
        status = "failed"
    served = Served(route.model, route.candidate.deployment, route.provider, route.attempts) if route else None
    bill.settled = await bill.tab.settle(served, usage, status=status, source=source, finish_reason=bill.finish, free=insured)
    limited.used_tokens = usage.prompt_tokens + usage.output_tokens
    call.route, call.usage, call.status, call.cost = route, usage, status, bill.charged


async def _counted(deps: Deps, bill: Bill) -> Usage:
    """Usage of a request that stopped before its upstream reported any: the prompt as the local
    engine tokenizes it (else its estimate), one output token per piece of output seen."""
    assert bill.route is not None
    engine = deps.engines.get(bill.route.candidate.upstream.name)
    counted = await engine.count_prompt_tokens(bill.request.body) if engine is not None and bill.request is not None else None
    return Usage(input_tokens=counted if counted is not None else bill.prompt_estimate, output_tokens=bill.output_pieces)
