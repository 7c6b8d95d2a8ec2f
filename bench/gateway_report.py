"""What bench/run.py measured, as bench/results/gateway.md (tables, side-by-side ratios, the targets
met or not) and gateway.png (req/s and overhead p50 per target and concurrency)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LEVELS = (1, 16, 64)
ROLES = {  # the report's roles for the Emporion targets, and how the side-by-side tables head them
    "sqlite_on": "SQLite, money on",
    "sqlite_off": "SQLite, money off",
    "pg_on": "PG+Redis, money on",
    "baseline": "baseline",
    "sqlite_on_normal": "SQLite NORMAL, money on",
}


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
    names: list[str]  # in table order: direct, floor, then the Emporion targets
    roles: dict[str, str]  # role (a key of ROLES) -> target name
    probe_cost_usd: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # target name -> what code it ran
    chat: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    stream: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
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
    lines += [
        "",
        "## Streamed chat completions (20 chunks, 2 ms apart)",
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
    lines += ["", *_side_by_side(results, chat), "", *_memory(results), "", *_targets(results, chat, stream)]
    return "\n".join(lines) + "\n"


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
    for name in results.names[2:]:
        cost = results.probe_cost_usd.get(name)
        lines.append(f"| {name} | {results.sources.get(name, '')} | {'not reported' if cost is None else f'{cost:.8f}'} |")
    lines += [
        "",
        "Each revision runs with its own defaults: SQLite commits with `synchronous=FULL` since da6014f, `NORMAL` before.",
    ]
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def _side_by_side(results: Results, chat: dict[tuple[str, int], Measure]) -> list[str]:
    roles = {role: name for role, name in results.roles.items()}
    present = [role for role in ROLES if role in roles]
    comparisons = [
        ("sqlite_on", "sqlite_off", "money on / off"),
        ("pg_on", "sqlite_on", "PG+Redis / SQLite"),
        ("sqlite_on", "baseline", "current / baseline"),
        ("sqlite_on_normal", "baseline", "current / baseline, both NORMAL"),
    ]
    comparisons = [c for c in comparisons if c[0] in roles and c[1] in roles]
    heads = [roles[role] if role == "baseline" else ROLES[role] for role in present]
    lines = [
        "## Side by side (non-streamed)",
        "",
        "req/s, and the ratios between targets:",
        "",
        "| concurrency | floor | " + " | ".join(heads) + " | " + " | ".join(c[2] for c in comparisons) + " |",
        "| ---: " * (2 + len(heads) + len(comparisons)) + "|",
    ]
    for level in LEVELS:
        rps = {role: chat[(roles[role], level)].rps for role in present}
        cells = [f"{rps[role]:,.0f}" for role in present] + [_ratio(rps[a], rps[b]) for a, b, _ in comparisons]
        lines.append(f"| {level} | {chat[('floor', level)].rps:,.0f} | " + " | ".join(cells) + " |")
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
    for level in LEVELS:
        direct = chat[("direct", level)].p50_ms
        over = {role: chat[(roles[role], level)].p50_ms - direct for role in present}
        cells = [f"{over[role]:.2f}" for role in present] + [f"{over[a] - over[b]:+.2f}" for a, b, _ in comparisons]
        lines.append(f"| {level} | {chat[('floor', level)].p50_ms - direct:.2f} | " + " | ".join(cells) + " |")
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

    rows: list[Row] = [
        ("overhead at concurrency 1, p50 ≤ 1 ms", over(1, "p50_ms", 1)),
        ("overhead at concurrency 1, p99 ≤ 3 ms", over(1, "p99_ms", 3)),
        ("CPU per request at concurrency 1 ≤ 1 ms (the gateway process)", cpu),
        ("throughput at concurrency 16 ≥ 60% of the floor proxy", share(16)),
        ("throughput at concurrency 64 ≥ 60% of the floor proxy", share(64)),
        ("streaming TTFT overhead p50 ≤ 2 ms (concurrency 1)", ttft),
        (f"RSS without local models ≤ 150 MB after {last[0]:,} requests (soaked target only)", rss),
        ("no RSS growth over the second half of the soak (≤ 5 MB)", growth),
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
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = results.names
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(LEVELS))]
        axes[0].bar(xs, [chat[(name, level)].rps for level in LEVELS], width, label=name, color=f"C{i}")
        if name != "direct":
            overhead = [max(0.01, chat[(name, level)].p50_ms - chat[("direct", level)].p50_ms) for level in LEVELS]
            axes[1].bar(xs, overhead, width, label=name, color=f"C{i}")
    axes[0].set(yscale="log", xlabel="concurrency", ylabel="requests/s", title="Throughput, non-streamed (higher is better)")
    axes[1].set(yscale="log", xlabel="concurrency", ylabel="ms", title="Overhead p50 over direct, non-streamed (lower is better)")
    for axis in axes:
        axis.set_xticks(range(len(LEVELS)), [str(level) for level in LEVELS])
        axis.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
