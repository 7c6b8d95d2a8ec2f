"""What bench/run.py measured, as bench/results/gateway.md (tables, side-by-side ratios, the peers
when measured, the targets met or not) and gateway.png (req/s and overhead p50 per target and
concurrency, and against the 50 ms upstream)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LEVELS = (1, 16, 64)
SLOW_LEVEL, SLOW_DELAY_MS = 64, 50  # the scenario against the upstream that takes its time: concurrency, delay
SLOW = f"{SLOW_LEVEL}, {SLOW_DELAY_MS} ms upstream"  # its row in the side-by-side tables
ROLES = {  # the report's roles for the gateway targets, and how the side-by-side tables head them
    "sqlite_on": "SQLite, money on",
    "sqlite_off": "SQLite, money off",
    "pg_on": "PG+Redis, money on",
    "baseline": "baseline",
    "sqlite_on_normal": "SQLite NORMAL, money on",
    "sqlite_on_unobserved": "SQLite, money on, no log or metrics",
    "litellm": "LiteLLM",  # with --peers: LiteLLM Proxy, the one role that is not Emporion
}
PEER_ROLES = ("litellm",)


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_1k: float  # CPU seconds per 1,000 requests = CPU milliseconds per request
    stores_cpu_s_per_1k: float | None = None
    errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None


@dataclass
class Results:
    names: list[str]  # in table order: direct, floor, the Emporion targets, then the peers
    roles: dict[str, str]  # role (a key of ROLES) -> target name
    probe_cost_usd: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # target name -> what code it ran
    chat: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    stream: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    slow: dict[str, list[Measure]] = field(default_factory=dict)  # non-streamed, SLOW_LEVEL, the 50 ms upstream
    ready_s: dict[str, float] = field(default_factory=dict)  # a peer's name -> seconds from its start to ready
    soak: list[tuple[int, float]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    other_cores: float = 0.0  # CPU other processes on the machine used during the measurements


def median_measure(values: list[Measure]) -> Measure:
    def med(attr: str) -> float | None:
        got = [getattr(v, attr) for v in values if getattr(v, attr) is not None]
        return statistics.median(got) if got else None

    return Measure(
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        cpu_s_per_1k=med("cpu_s_per_1k"),
        stores_cpu_s_per_1k=med("stores_cpu_s_per_1k"),
        errors=sum(v.errors for v in values),
        ttft_p50_ms=med("ttft_p50_ms"),
        ttft_p99_ms=med("ttft_p99_ms"),
    )


def _stores(m: Measure) -> str:
    return "–" if m.stores_cpu_s_per_1k is None else f"{m.stores_cpu_s_per_1k:.2f}"


def report(results: Results, rounds: int, duration_s: float) -> str:
    chat = {key: median_measure(values) for key, values in results.chat.items()}
    stream = {key: median_measure(values) for key, values in results.stream.items()}
    lines = [
        f"# Gateway overhead ({time.strftime('%Y-%m-%d')}, 2 cores, medians of {rounds} round(s) of {duration_s} s; "
        f"load from wrk / aiohttp on the same machine; {results.wall_s:.0f} s in all; other processes used "
        f"{results.other_cores:.2f} of the {os.cpu_count()} cores during the measurements)",
        "",
        *_preamble(results),
        "",
        "## Non-streamed chat completions",
        "",
        "| target | concurrency | req/s | % of floor | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | CPU ms / req "
        "| stores' CPU ms / req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in LEVELS:
        direct, floor = chat[("direct", level)], chat[("floor", level)]
        for name in results.names:
            m = chat[(name, level)]
            share = "–" if name == "direct" else f"{m.rps / floor.rps:.0%}"
            over = "– | –" if name == "direct" else f"{m.p50_ms - direct.p50_ms:.2f} | {m.p99_ms - direct.p99_ms:.2f}"
            lines.append(
                f"| {name} | {level} | {m.rps:,.0f} | {share} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {over} | "
                f"{m.cpu_s_per_1k:.2f} | {_stores(m)} | {m.errors} |"
            )
    slow = {name: median_measure(values) for name, values in results.slow.items()}
    lines += ["", *_slow(results, slow)]
    lines += [
        "",
        "## Streamed chat completions (20 chunks, 2 ms apart)",
        "",
        "TTFT is the time to the first token: to the first chunk with content, after the role delta the "
        "upstream opens with (a chunk interval earlier; Emporion holds it back until content comes, so that "
        "a stream that fails before any can still fall back to another deployment).",
        "",
        "| target | concurrency | req/s | TTFT p50 ms | TTFT p99 ms | TTFT overhead p50 ms | total p50 ms | total p99 ms "
        "| CPU ms / req | stores' CPU ms / req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in LEVELS:
        direct = stream[("direct", level)]
        for name in results.names:
            m = stream[(name, level)]
            over = "–" if name == "direct" else f"{m.ttft_p50_ms - direct.ttft_p50_ms:.2f}"
            lines.append(
                f"| {name} | {level} | {m.rps:,.0f} | {m.ttft_p50_ms:.2f} | {m.ttft_p99_ms:.2f} | {over} | "
                f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.cpu_s_per_1k:.2f} | {_stores(m)} | {m.errors} |"
            )
    lines += ["", *_side_by_side(results, chat, slow)]
    if any(role in results.roles for role in PEER_ROLES):
        lines += ["", *_peers(results, chat, stream, slow)]
    lines += ["", *_memory(results), "", *_targets(results, chat, stream)]
    return "\n".join(lines) + "\n"


def _slow(results: Results, slow: dict[str, Measure]) -> list[str]:
    """The 50 ms scenario: a second fake upstream that answers every request after 50 ms, its own
    floor proxy, and each gateway's route to it (model ``fake-slow``)."""
    direct, floor = slow["direct"], slow["floor"]
    lines = [
        f"## Non-streamed chat completions, concurrency {SLOW_LEVEL}, {SLOW_DELAY_MS} ms upstream",
        "",
        f"A second fake upstream answers every request after {SLOW_DELAY_MS} ms, as a model would; it has its own floor "
        f"proxy, and every gateway routes model `fake-slow` to it (priced like `fake` where money is on). At concurrency "
        f"{SLOW_LEVEL} no proxy can pass more than {SLOW_LEVEL} / {SLOW_DELAY_MS} ms = "
        f"{SLOW_LEVEL * 1000 / SLOW_DELAY_MS:,.0f} req/s. Overheads are over direct to this upstream.",
        "",
        "| target | req/s | % of floor | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | CPU ms / req "
        "| stores' CPU ms / req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in results.names:
        m = slow[name]
        share = "–" if name == "direct" else f"{m.rps / floor.rps:.0%}"
        over = "– | –" if name == "direct" else f"{m.p50_ms - direct.p50_ms:.2f} | {m.p99_ms - direct.p99_ms:.2f}"
        lines.append(
            f"| {name} | {m.rps:,.0f} | {share} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {over} | {m.cpu_s_per_1k:.2f} | "
            f"{_stores(m)} | {m.errors} |"
        )
    return lines


def _preamble(results: Results) -> list[str]:
    lines = [
        "Every Emporion target is its own `emporion serve` process with its own data directory, in front of the same fake "
        "upstream, called with an API key of a customer organization (first tier, limits far above the load, $1,000,000 "
        "of free credit). Money on: the model is priced ($2.50 / $10 per million prompt / completion tokens), so every "
        "request holds its worst case and settles its cost in the ledger; money off: the same model unpriced (cost 0). "
        "PG+Redis: a fresh PostgreSQL database (dropped after the run) and the Redis limiter. CPU is the target process's "
        'own; "stores\' CPU" adds the PostgreSQL backends serving its database and the Redis server (shared).',
        "",
        "| target | runs | cost of the probe request (USD) |",
        "| --- | --- | ---: |",
    ]
    for name in _emporion(results):
        lines.append(f"| {name} | {results.sources.get(name, '')} | {_usd(results.probe_cost_usd.get(name))} |")
    lines += [
        "",
        "Each revision runs with its own defaults: SQLite commits with `synchronous=FULL` since da6014f, `NORMAL` before.",
    ]
    for role in PEER_ROLES:
        if role in results.roles:
            name = results.roles[role]
            lines += ["", f"Peer: {name}, `{results.sources.get(name, '')}` (see Peers below)."]
    return lines


def _usd(cost: float | None) -> str:
    return "not reported" if cost is None else f"{cost:.8f}"


def _emporion(results: Results) -> list[str]:
    """The Emporion targets' names, in table order."""
    peer_names = {results.roles[role] for role in PEER_ROLES if role in results.roles}
    return [name for name in results.names[2:] if name not in peer_names]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def _side_by_side(results: Results, chat: dict[tuple[str, int], Measure], slow: dict[str, Measure]) -> list[str]:
    roles = {role: name for role, name in results.roles.items()}
    present = [role for role in ROLES if role in roles]
    comparisons = [
        ("sqlite_on", "sqlite_off", "money on / off"),
        ("sqlite_on", "sqlite_on_unobserved", "request log + metrics on / off"),
        ("pg_on", "sqlite_on", "PG+Redis / SQLite"),
        ("sqlite_on", "baseline", "current / baseline"),
        ("sqlite_on_normal", "baseline", "current / baseline, both NORMAL"),
    ]
    comparisons = [c for c in comparisons if c[0] in roles and c[1] in roles]
    heads = [roles[role] if role == "baseline" else ROLES[role] for role in present]
    scenarios = _scenarios(results, chat, slow)
    lines = [
        "## Side by side (non-streamed)",
        "",
        "req/s, and the ratios between targets:",
        "",
        "| concurrency | floor | " + " | ".join(heads) + " | " + " | ".join(c[2] for c in comparisons) + " |",
        "| ---: " * (2 + len(heads) + len(comparisons)) + "|",
    ]
    for label, measures in scenarios:
        rps = {role: measures[roles[role]].rps for role in present}
        cells = [f"{rps[role]:,.0f}" for role in present] + [_ratio(rps[a], rps[b]) for a, b, _ in comparisons]
        lines.append(f"| {label} | {measures['floor'].rps:,.0f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Overhead p50 over direct (ms), and the differences between targets:",
        "",
        "| concurrency | floor | "
        + " | ".join(heads)
        + " | "
        + " | ".join(c[2].replace(" / ", " − ") for c in comparisons)
        + " |",
        "| ---: " * (2 + len(heads) + len(comparisons)) + "|",
    ]
    for label, measures in scenarios:
        direct = measures["direct"].p50_ms
        over = {role: measures[roles[role]].p50_ms - direct for role in present}
        cells = [f"{over[role]:.2f}" for role in present] + [f"{over[a] - over[b]:+.2f}" for a, b, _ in comparisons]
        lines.append(f"| {label} | {measures['floor'].p50_ms - direct:.2f} | " + " | ".join(cells) + " |")
    return lines


def _scenarios(
    results: Results, chat: dict[tuple[str, int], Measure], slow: dict[str, Measure]
) -> list[tuple[str, dict[str, Measure]]]:
    """The non-streamed scenarios as (label, target name -> median): each concurrency, then the 50 ms upstream."""
    scenarios = [(str(level), {name: chat[(name, level)] for name in results.names}) for level in LEVELS]
    return scenarios + [(SLOW, slow)]


def _ttft_overhead(stream: dict[tuple[str, int], Measure], name: str, level: int) -> float:
    """Time to first chunk p50 over direct's, in ms (nan where a run got no chunk)."""
    theirs, direct = stream[(name, level)].ttft_p50_ms, stream[("direct", level)].ttft_p50_ms
    return float("nan") if theirs is None or direct is None else theirs - direct


def _peers(
    results: Results, chat: dict[tuple[str, int], Measure], stream: dict[tuple[str, int], Measure], slow: dict[str, Measure]
) -> list[str]:
    """Emporion against the peers, as ratios of this run's own medians (on a shared 2-core machine only
    ratios measured side by side mean anything)."""
    ours = [role for role in ("sqlite_on", "sqlite_off", "pg_on") if role in results.roles]
    lines = ["## Peers", ""]
    for peer in (role for role in PEER_ROLES if role in results.roles):
        name = results.roles[peer]
        lines += [
            f"{name}: `{results.sources.get(name, '')}`, started with `--num_workers 1` (uvicorn in the CLI's own "
            "process), no database (the master key is the only key: no key lookup and no spend written anywhere, so it "
            "does less per request than any Emporion target here), both models priced like Emporion's money-on ones "
            f"(it computes each response's cost: {_usd(results.probe_cost_usd.get(name))} for the probe request), its "
            "bundled model cost map, telemetry off, log level ERROR. Ready "
            f"{results.ready_s.get(name, float('nan')):.1f} s after its start, started alone; peak RSS "
            f"{results.peak_rss_mb.get(name, float('nan')):.0f} MB.",
            "",
            f"Measured in this run: req/s of each Emporion target ÷ {ROLES[peer]}'s, and overhead p50 over direct (ms):",
            "",
            f"| concurrency | {ROLES[peer]} req/s | "
            + " | ".join(f"{ROLES[role]} ÷ {ROLES[peer]}" for role in ours)
            + f" | {ROLES[peer]} overhead p50 | "
            + " | ".join(f"{ROLES[role]} overhead p50" for role in ours)
            + f" | {ROLES[peer]} CPU ms / req | {ROLES['sqlite_on']} CPU ms / req |",
            "| ---: " * (5 + 2 * len(ours)) + "|",
        ]
        for label, measures in _scenarios(results, chat, slow):
            theirs, direct = measures[name], measures["direct"].p50_ms
            cells = [f"{theirs.rps:,.0f}"]
            cells += [_ratio(measures[results.roles[role]].rps, theirs.rps) for role in ours]
            cells += [f"{theirs.p50_ms - direct:.2f}"]
            cells += [f"{measures[results.roles[role]].p50_ms - direct:.2f}" for role in ours]
            cells += [f"{theirs.cpu_s_per_1k:.2f}", f"{measures[results.roles['sqlite_on']].cpu_s_per_1k:.2f}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        ttft = {level: _ttft_overhead(stream, name, level) for level in LEVELS}
        mine = {level: _ttft_overhead(stream, results.roles["sqlite_on"], level) for level in LEVELS}
        lines += [
            "",
            f"Streamed, TTFT overhead p50 over direct: {ROLES[peer]} "
            + ", ".join(f"{ttft[level]:.2f} ms at {level}" for level in LEVELS)
            + f"; {ROLES['sqlite_on']} "
            + ", ".join(f"{mine[level]:.2f} ms at {level}" for level in LEVELS)
            + ".",
        ]
    return lines


def _memory(results: Results) -> list[str]:
    first, last = results.soak[0], results.soak[-1]
    middle = results.soak[len(results.soak) // 2]
    peaks = ", ".join(f"{name} {results.peak_rss_mb[name]:.0f} MB" for name in results.names)
    return [
        "## Memory",
        "",
        f"Peak RSS (no local models loaded): {peaks}.",
        f"{results.roles['sqlite_on']} over the soak: {first[1]:.0f} MB at start, {middle[1]:.0f} MB after {middle[0]:,} "
        f"requests, {last[1]:.0f} MB after {last[0]:,} requests.",
    ]


Row = tuple[str, Callable[[str], tuple[str, bool] | None]]


def _targets(results: Results, chat: dict[tuple[str, int], Measure], stream: dict[tuple[str, int], Measure]) -> list[str]:
    def check(value: float, ok: bool, fmt: str, extra: str = "") -> tuple[str, bool]:
        return fmt.format(value) + extra, ok

    def over(level: int, attr: str, limit: float) -> Callable[[str], tuple[str, bool]]:
        def measured(name: str) -> tuple[str, bool]:
            value = getattr(chat[(name, level)], attr) - getattr(chat[("direct", level)], attr)
            return check(value, value <= limit, "{:.2f} ms")

        return measured

    def cpu(name: str) -> tuple[str, bool]:
        m = chat[(name, 1)]
        extra = "" if m.stores_cpu_s_per_1k is None else f" (+{m.stores_cpu_s_per_1k:.2f} ms in PostgreSQL and Redis)"
        return check(m.cpu_s_per_1k, m.cpu_s_per_1k <= 1, "{:.2f} ms", extra)

    def share(level: int) -> Callable[[str], tuple[str, bool]]:
        def measured(name: str) -> tuple[str, bool]:
            value = chat[(name, level)].rps / chat[("floor", level)].rps
            return check(value, value >= 0.6, "{:.0%}", f" ({chat[(name, level)].rps:,.0f} req/s)")

        return measured

    def ttft(name: str) -> tuple[str, bool]:
        value = stream[(name, 1)].ttft_p50_ms - stream[("direct", 1)].ttft_p50_ms
        return check(value, value <= 2, "{:.2f} ms")

    middle, last = results.soak[len(results.soak) // 2], results.soak[-1]
    soaked = results.roles["sqlite_on"]

    def rss(name: str) -> tuple[str, bool] | None:
        return check(last[1], last[1] <= 150, "{:.0f} MB") if name == soaked else None

    def growth(name: str) -> tuple[str, bool] | None:
        return check(last[1] - middle[1], last[1] - middle[1] <= 5, "{:+.1f} MB") if name == soaked else None

    unobserved = results.roles.get("sqlite_on_unobserved")

    def observed_cost(name: str) -> tuple[str, bool] | None:
        if name != soaked or unobserved is None:
            return None
        value = 1 - chat[(name, 16)].rps / chat[(unobserved, 16)].rps
        return check(value, value <= 0.10, "{:.0%}", " of the req/s at concurrency 16")

    rows: list[Row] = [
        ("overhead at concurrency 1, p50 ≤ 1 ms", over(1, "p50_ms", 1)),
        ("overhead at concurrency 1, p99 ≤ 3 ms", over(1, "p99_ms", 3)),
        ("CPU per request at concurrency 1 ≤ 1 ms (the gateway process)", cpu),
        ("throughput at concurrency 16 ≥ 60% of the floor proxy", share(16)),
        ("throughput at concurrency 64 ≥ 60% of the floor proxy", share(64)),
        ("streaming TTFT overhead p50 ≤ 2 ms (concurrency 1)", ttft),
        (f"RSS without local models ≤ 150 MB after {last[0]:,} requests (soaked target only)", rss),
        ("no RSS growth over the second half of the soak (≤ 5 MB)", growth),
        (
            "request log + metrics cost ≤ 10% of throughput at concurrency 16 (against the same build with them off)",
            observed_cost,
        ),
    ]
    judged = [results.roles[role] for role in ("sqlite_on", "pg_on")]
    lines = [
        "## Targets",
        "",
        "The full path with a priced model, on SQLite and on PostgreSQL + Redis.",
        "",
        "| target | " + " | ".join(f"{ROLES[role]}: measured | met" for role in ("sqlite_on", "pg_on")) + " |",
        "| --- |" + " --- | --- |" * len(judged),
    ]
    for label, measured in rows:
        cells = []
        for name in judged:
            got = measured(name)
            cells += ["–", "–"] if got is None else [got[0], "yes" if got[1] else "no"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chat = {key: median_measure(values) for key, values in results.chat.items()}
    slow = {name: median_measure(values) for name, values in results.slow.items()}
    scenarios = _scenarios(results, chat, slow)
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = results.names
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(scenarios))]
        axes[0].bar(xs, [measures[name].rps for _, measures in scenarios], width, label=name, color=f"C{i}")
        if name != "direct":
            overhead = [max(0.01, measures[name].p50_ms - measures["direct"].p50_ms) for _, measures in scenarios]
            axes[1].bar(xs, overhead, width, label=name, color=f"C{i}")
    axes[0].set(yscale="log", xlabel="concurrency", ylabel="requests/s", title="Throughput, non-streamed (higher is better)")
    axes[1].set(yscale="log", xlabel="concurrency", ylabel="ms", title="Overhead p50 over direct, non-streamed (lower is better)")
    for axis in axes:
        axis.set_xticks(range(len(scenarios)), [label for label, _ in scenarios])
        axis.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
