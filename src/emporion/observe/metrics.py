"""Prometheus metrics of this replica: a stage that counts every call on the request path, and a
collector that reads, at scrape time, what the gateway keeps anyway (breakers, engines, holds).
``GET /metrics`` (api/metrics.py) renders them in Prometheus' text format.

Each replica (one ``emporion serve`` process) has its own registry and its own ``/metrics``:
Prometheus scrapes every replica and sums across them. The registry is this object's, never
prometheus-client's global one, so several apps in one process (tests) count apart.

Labels are bounded: ``model`` is a model of the catalog (``unknown`` for a name it does not
know), ``provider`` an upstream of the configuration (``none`` before one was chosen),
``organization`` one of the first ``[metrics] organizations`` organization ids this process has
seen (the rest count as ``other``), ``status``/``outcome``/``error`` come from fixed sets. No
request id, key or end user is ever a label. The histograms carry model and provider only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from emporion.errors import EmporionError, RateLimited
from emporion.observe.request_log import FIRST_TOKEN
from emporion.pipeline.deps import Deps
from emporion.pipeline.stages import Call, Stage
from emporion.providers.base import Chunk
from emporion.store.tables import Hold

log = logging.getLogger("emporion.metrics")

OTHER, UNKNOWN, NONE = "other", "unknown", "none"
MODERATION_FLAGS = "metrics.moderation_flags"  # the note screening leaves on a call: [(category, action), ...]
HOLDS_CACHE_S = 5.0  # the open holds are counted in the database at most this often
BREAKER_STATES = ("closed", "open", "half_open")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SPEED_BUCKETS = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
TOKEN_KINDS = ("input", "cached_input", "cache_write", "output")


def flag_moderation(call: Call, category: str, action: str) -> None:
    """What screening calls for each flag it raises on a call; counted in
    ``emporion_moderation_flags_total`` when the call is observed. ``category`` and ``action``
    come from fixed sets (the policy's categories; ``flag``, ``block``...), never from the request."""
    flags = call.extra.setdefault(MODERATION_FLAGS, [])
    assert isinstance(flags, list)
    flags.append((category, action))


class Organizations:
    """The organization label: the first ``limit`` organizations this process sees keep their id,
    every later one is ``other`` (counters cannot be relabelled, so it is first come, not top N)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def label(self, org_id: str) -> str:
        if org_id in self._seen:
            return org_id
        if len(self._seen) < self.limit:
            self._seen.add(org_id)
            return org_id
        return OTHER


def outcome_of(call: Call) -> tuple[str, str, str | None]:
    """(HTTP status, outcome, error code or None), as the request log has them; a stream that
    failed after its headers is a 200 whose outcome is ``partial`` or ``failed``."""
    error = call.error
    outcome = call.status or ("refused" if error is not None else "completed")
    if isinstance(error, EmporionError):
        return str(error.status), outcome, error.instance_code or error.code or error.type
    if isinstance(error, asyncio.CancelledError):
        return "499", call.status or "cancelled", "client_closed_request"
    if error is not None:
        return "500", outcome, "server_error"
    return "200", outcome, "interrupted" if outcome in ("partial", "failed") else None


class Metrics(Stage):
    """The stage: a few label lookups and increments at ``observe``, one dict lookup a chunk."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.registry = CollectorRegistry(auto_describe=False)
        self.organizations = Organizations(deps.settings.metrics.organizations)
        self.holds = OpenHolds(deps)
        per_call = ("model", "provider", "organization")
        per_route = ("model", "provider")
        registry = self.registry
        self.requests = Counter(
            "emporion_requests", "Requests on the request path.", (*per_call, "status", "outcome"), registry=registry
        )
        self.errors = Counter(
            "emporion_request_errors", "Requests that were refused or failed.", (*per_call, "status", "error"), registry=registry
        )
        self.latency = Histogram(
            "emporion_request_duration_seconds",
            "From the start of the request path to the end of the answer (a stream's last chunk).",
            per_route,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "emporion_time_to_first_token_seconds",
            "Streams: until the first output.",
            per_route,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.speed = Histogram(
            "emporion_output_tokens_per_second",
            "Streams: output tokens over the time from the first token to the end.",
            per_route,
            buckets=SPEED_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter("emporion_tokens", "Tokens as settled, by kind.", (*per_call, "kind"), registry=registry)
        self.cost = Counter("emporion_cost_nanos", "What customers were charged, in nano-USD.", per_call, registry=registry)
        self.refusals = Counter(
            "emporion_rate_limit_refusals",
            "Requests refused by a rate or concurrency limit (429).",
            ("model", "organization"),
            registry=registry,
        )
        self.flags = Counter(
            "emporion_moderation_flags",
            "Flags raised by screening, by category and action.",
            ("category", "action"),
            registry=registry,
        )
        registry.register(Live(deps, self.holds))

    def on_chunk(self, call: Call, chunk: Chunk) -> None:
        if FIRST_TOKEN not in call.extra and any(choice.carries_output for choice in chunk.choices):
            call.extra[FIRST_TOKEN] = time.monotonic()  # the request log's note: one clock for both

    async def observe(self, call: Call) -> None:
        ended = time.monotonic()
        route, usage = call.route, call.usage
        if route is not None:
            model, provider = route.model.id, route.provider
        else:
            asked = call.ask.model
            model, provider = (asked if self.deps.catalog.has(asked) else UNKNOWN), NONE
        org = self.organizations.label(call.principal.org_id)
        status, outcome, error = outcome_of(call)
        self.requests.labels(model, provider, org, status, outcome).inc()
        if error is not None:
            self.errors.labels(model, provider, org, status, error).inc()
        if isinstance(call.error, RateLimited):
            self.refusals.labels(model, org).inc()
        self.latency.labels(model, provider).observe(ended - call.started_at)
        first = call.extra.get(FIRST_TOKEN)
        if isinstance(first, float):
            self.ttft.labels(model, provider).observe(first - call.started_at)
            if usage is not None and usage.output_tokens > 1 and ended > first:
                self.speed.labels(model, provider).observe(usage.output_tokens / (ended - first))
        if usage is not None:
            counts = (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.output_tokens)
            for kind, count in zip(TOKEN_KINDS, counts, strict=True):
                if count:
                    self.tokens.labels(model, provider, org, kind).inc(count)
        if call.cost:
            self.cost.labels(model, provider, org).inc(call.cost)
        flags = call.extra.get(MODERATION_FLAGS)
        if isinstance(flags, list):
            for category, action in flags:
                self.flags.labels(category, action).inc()

    async def render(self) -> bytes:
        """The text a scrape gets."""
        await self.holds.refresh()
        return generate_latest(self.registry)


class OpenHolds:
    """Holds outstanding: the open ``holds`` rows of the database (every replica's: they share
    it), counted at most every ``HOLDS_CACHE_S``, and this replica's requests held in memory on
    its balance leases (metering/leases.py), read as they are."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.requests = self.request_nanos = self.leases = self.lease_nanos = 0
        self._read_at = -HOLDS_CACHE_S
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < HOLDS_CACHE_S:
                return
            is_lease = Hold.request_id.like("lease:%")
            query = (
                select(is_lease, func.count(), func.coalesce(func.sum(Hold.amount_nanos), 0))
                .where(Hold.state == "open")
                .group_by(is_lease)
            )
            try:
                async with self.deps.db.session() as session:
                    rows = (await session.execute(query)).all()
            except Exception as exc:  # the scrape goes on with the last count
                log.warning("could not count the open holds: %r", exc)
                return
            counts = {bool(lease): (int(count), int(nanos)) for lease, count, nanos in rows}
            self.requests, self.request_nanos = counts.get(False, (0, 0))
            self.leases, self.lease_nanos = counts.get(True, (0, 0))
            self._read_at = time.monotonic()

    def in_memory(self) -> int:
        leases = self.deps.ledger.leases
        if leases is None:
            return 0
        return sum(pool.lease.running for pool in leases.pools.values() if pool.lease is not None)


class Live(Collector):
    """What is read at scrape time: circuit breakers and upstream calls per deployment, local
    engines' slots and queues, holds outstanding."""

    def __init__(self, deps: Deps, holds: OpenHolds) -> None:
        self.deps = deps
        self.holds = holds

    def collect(self) -> Iterator[Metric]:
        yield from self._deployments()
        yield from self._engines()
        yield from self._holds()

    def _deployments(self) -> Iterator[Metric]:
        labels = ["upstream", "deployment"]
        breaker = GaugeMetricFamily(
            "emporion_circuit_breaker_state",
            "1 for the breaker's state (closed, open, half_open), 0 for the others.",
            labels=[*labels, "state"],
        )
        calls = CounterMetricFamily("emporion_upstream_requests", "Upstream calls (attempts, fallbacks included).", labels=labels)
        errors = CounterMetricFamily("emporion_upstream_errors", "Upstream calls that failed.", labels=labels)
        now = time.monotonic()
        for key, health in list(self.deps.router.health.items()):
            upstream, _, deployment = key.partition("/")
            state = health.breaker.state(now)
            for each in BREAKER_STATES:
                breaker.add_metric([upstream, deployment, each], 1.0 if each == state else 0.0)
            calls.add_metric([upstream, deployment], health.requests)
            errors.add_metric([upstream, deployment], health.errors)
        return iter((breaker, calls, errors))

    def _engines(self) -> Iterator[Metric]:
        labels = ["model"]
        up = GaugeMetricFamily("emporion_engine_up", "1 while the local engine can serve.", labels=labels)
        slots = GaugeMetricFamily("emporion_engine_slots", "Requests the local engine runs at once.", labels=labels)
        busy = GaugeMetricFamily("emporion_engine_slots_busy", "Slots running a request now.", labels=labels)
        queued = GaugeMetricFamily("emporion_engine_queue_depth", "Requests waiting for a slot.", labels=labels)
        queue_size = GaugeMetricFamily("emporion_engine_queue_size", "Requests that may wait; more get 503.", labels=labels)
        for engine in list(self.deps.engines.values()):
            admission = engine.admission
            up.add_metric([engine.model_id], 1.0 if engine.state == "ready" else 0.0)
            slots.add_metric([engine.model_id], admission.capacity)
            busy.add_metric([engine.model_id], admission.running)
            queued.add_metric([engine.model_id], admission.waiting)
            queue_size.add_metric([engine.model_id], admission.queue_size)
        return iter((up, slots, busy, queued, queue_size))

    def _holds(self) -> Iterator[Metric]:
        holds = self.holds
        return iter(
            (
                GaugeMetricFamily(
                    "emporion_holds_open", "Open holds of requests in the database (all replicas).", value=holds.requests
                ),
                GaugeMetricFamily(
                    "emporion_holds_open_nanos",
                    "What the open holds of requests reserve, in nano-USD.",
                    value=holds.request_nanos,
                ),
                GaugeMetricFamily(
                    "emporion_leases_open", "Open balance leases in the database (all replicas).", value=holds.leases
                ),
                GaugeMetricFamily(
                    "emporion_leases_open_nanos", "What the open leases reserve, in nano-USD.", value=holds.lease_nanos
                ),
                GaugeMetricFamily(
                    "emporion_holds_in_memory",
                    "This replica's requests running on a lease's memory holds.",
                    value=holds.in_memory(),
                ),
            )
        )
