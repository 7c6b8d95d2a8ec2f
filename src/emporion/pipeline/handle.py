"""The request path, top to bottom: every generation and embedding request goes through ``handle``.

    authenticate (the route, before it reads the body) → preset → screen → limit → plan → hold
    → execute → settle → observe

Each step is one module of this package; the stages (``stages.py``) are the seam that later
features plug into. What refuses a request does so as early as it can: a screen or a limit
before anything is planned, a plan (unknown model, policy, parameters...) before anything is
held, a hold (402) before any upstream is called; each refusal undoes what came before it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from decimal import Decimal

from emporion.auth.principal import Principal
from emporion.core.money import Nanos
from emporion.core.requests import Ask, EmbeddingRequest
from emporion.engine.openai_tokens import texts_of
from emporion.limits import ratelimit_headers
from emporion.pipeline.deps import Deps
from emporion.pipeline.execute import Embeddings, Streamed, answer, stream
from emporion.pipeline.hold import held
from emporion.pipeline.limit import limited
from emporion.pipeline.plan import plan
from emporion.pipeline.sizing import size
from emporion.pipeline.stages import Call
from emporion.providers.base import Completion
from emporion.routing.router import Route


@dataclass(frozen=True, slots=True)
class Answer:
    route: Route
    result: Completion | Embeddings
    cost: Nanos  # what the customer paid
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*


async def handle(
    deps: Deps,
    principal: Principal,
    ask: Ask,
    request_id: str,
    *,
    streamed: bool = False,
    price_factor: Decimal = Decimal(1),
    tags: tuple[str, ...] = (),
) -> Answer | Streamed:
    """``price_factor``: what the request pays of its price (a batch line pays less); ``tags``:
    what its cost is attributed to, recorded with it (metering/attribution.py)."""
    call = Call(request_id, principal, _as_text(ask), streamed, price_factor, tags)
    async with contextlib.AsyncExitStack() as path:
        path.push_async_callback(deps.stages.observe, call)  # last of all, however the request ends
        try:
            if deps.presets is not None:  # "@preset/NAME": the organization's settings, before anything sees it
                call.ask = await deps.presets.apply(principal, call.ask)
            await deps.stages.screen(call)
            sizing = size(call.ask, deps.settings.metering.image_tokens)
            limits = await path.enter_async_context(limited(deps, principal, sizing))
            call.plan = plan(deps, principal, call.ask, sizing.body)
            bill = await path.enter_async_context(held(deps, call, sizing, limits))
            if streamed:
                opened = await stream(deps, call, bill, path)
                opened.own(path.pop_all())  # the rest of the path closes when the stream does
                opened.headers = ratelimit_headers(limits.decision)
                return opened
            result = await answer(deps, call, bill)
        except BaseException as exc:
            call.error = exc
            raise
    route = result.route if isinstance(result, Embeddings) else bill.route
    assert route is not None, "an answered request has a route"
    return Answer(route, result, bill.charged, ratelimit_headers(limits.decision))


def _as_text(ask: Ask) -> Ask:
    """Embedding inputs given as token ids (OpenAI's cl100k_base, what LangChain sends) are read
    as the text they spell, before anything sizes or screens them."""
    if isinstance(ask, EmbeddingRequest) and not isinstance(ask.input, str) and not isinstance(ask.input[0], str):
        return ask.model_copy(update={"input": texts_of(ask.inputs())})
    return ask
