"""What Emporion adds on top of the model: latency, throughput, CPU and memory, measured against
a baseline in the same run (only ratios hold on a shared 2-core machine).

Targets, all in front of one fake OpenAI upstream (bench/fake_upstream.py) that answers at once:
  direct    the fake upstream itself (the baseline: what the network path costs)
  floor     a bare pass-through proxy (bench/floor_proxy.py): the least any gateway adds
  emporion  Emporion's whole request path (auth, routing, adapter, provenance), one process

Scenarios, interleaved target by target at each load level:
  chat      non-streamed chat completions, with wrk at concurrency 1, 16, 64
  stream    streamed chat completions (20 chunks, 2 ms apart), with an aiohttp client:
            time to first chunk and total time
  soak      Emporion's RSS over a long run of requests (leak check)
Then the local engine against bare llama-server (bench/engine.py), and local embeddings against
the bare model (bench/embeddings.py).

    python -m bench.run            # full: 3 rounds of 10 s, a 10-minute soak, engine, embeddings (~25 min)
    python -m bench.run --quick    # 1 round of 3 s, 10,000-request soak, short engine run (< 3 min)

Writes bench/results/gateway.md, latency.png, engine.md and embeddings.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.engine import free_port, wait_ready

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 16, 64)
TARGETS = ("direct", "floor", "emporion")
CHAT_BODY = '{"model":"fake","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
STREAM_BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello."}], "stream": True}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_1k: float
    errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    url: str

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return _status_kb(self.popen.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _status_kb(self.popen.pid, "VmHWM") / 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Results:
    chat: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    stream: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    soak: list[tuple[int, float]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


def start(name: str, args: list[str], port: int, ready_path: str, log: Path) -> Process:
    popen = subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if ready_path:
        wait_ready(url + ready_path, popen, name)
    else:
        _wait_port(port, popen, name)
    return Process(name, popen, url)


def _wait_port(port: int, popen: subprocess.Popen, name: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise SystemExit(f"{name} exited with {popen.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{name} did not open port {port}")


def run_wrk(url: str, key: str, connections: int, duration_s: float, script_dir: Path) -> dict:
    script = script_dir / "chat.lua"
    script.write_text(WRK_SCRIPT % (CHAT_BODY, key))
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "-s", str(script), url + "/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[7:])


async def run_streams(url: str, key: str, concurrency: int, duration_s: float) -> tuple[int, list[float], list[float], int]:
    """Streams for ``duration_s`` at ``concurrency``: (completed, ttft_ms list, total_ms list, errors)."""
    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s
    headers = {"authorization": f"Bearer {key}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            first = None
            try:
                async with session.post(url + "/v1/chat/completions", json=STREAM_BODY, headers=headers) as response:
                    if response.status != 200:
                        errors += 1
                        await response.read()
                        continue
                    async for line in response.content:
                        if first is None and line.startswith(b"data: {"):
                            first = time.perf_counter()
            except aiohttp.ClientError:
                errors += 1
                continue
            done = time.perf_counter()
            ttfts.append(((first or done) - began) * 1000)
            totals.append((done - began) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return len(totals), ttfts, totals, errors


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure_chat(process: Process, url: str, key: str, level: int, duration_s: float, tmp: Path) -> Measure:
    cpu = process.cpu_s()
    out = run_wrk(url, key, level, duration_s, tmp)
    cpu = process.cpu_s() - cpu
    requests = max(1, out["requests"])
    return Measure(
        rps=requests / (out["duration_us"] / 1e6),
        p50_ms=out["p50_us"] / 1000,
        p99_ms=out["p99_us"] / 1000,
        cpu_s_per_1k=cpu / requests * 1000,
        errors=out["errors"],
    )


def measure_stream(process: Process, url: str, key: str, level: int, duration_s: float) -> Measure:
    cpu = process.cpu_s()
    began = time.perf_counter()
    done, ttfts, totals, errors = asyncio.run(run_streams(url, key, level, duration_s))
    elapsed = time.perf_counter() - began
    cpu = process.cpu_s() - cpu
    return Measure(
        rps=done / elapsed,
        p50_ms=pct(totals, 50),
        p99_ms=pct(totals, 99),
        cpu_s_per_1k=cpu / max(1, done) * 1000,
        errors=errors,
        ttft_p50_ms=pct(ttfts, 50),
        ttft_p99_ms=pct(ttfts, 99),
    )


def soak(emporion: Process, key: str, requests: int, minutes: float, tmp: Path, samples: list[tuple[int, float]]) -> None:
    """Requests in 2-second slices at concurrency 16 until both ``requests`` were sent and
    ``minutes`` have passed, sampling RSS after each slice."""
    sent = 0
    samples.append((0, emporion.rss_mb()))
    deadline = time.monotonic() + minutes * 60
    while sent < requests or time.monotonic() < deadline:
        out = run_wrk(emporion.url, key, 16, 2, tmp)
        sent += out["requests"]
        samples.append((sent, emporion.rss_mb()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round (< 3 minutes in all)")
    parser.add_argument("--no-engine", action="store_true", help="skip the local engine and embeddings comparisons")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="length of the leak soak (full mode)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    rounds, duration_s = (1, 3) if args.quick else (3, 10)
    soak_requests = 10_000 if args.quick else 100_000
    soak_minutes = 0 if args.quick else args.soak_minutes

    tmp = Path(tempfile.mkdtemp(prefix="emporion-bench-"))
    log = tmp / "bench.log"
    ports = {name: free_port() for name in TARGETS}
    fake = start("fake upstream", [sys.executable, "-m", "bench.fake_upstream", "--port", str(ports["direct"]),
                                   "--chunks", "20", "--chunk-interval-ms", "2"], ports["direct"], "", log)  # fmt: skip
    processes = [fake]
    try:
        floor = start("floor proxy", [sys.executable, "-m", "bench.floor_proxy", "--port", str(ports["floor"]),
                                      "--upstream", fake.url], ports["floor"], "", log)  # fmt: skip
        processes.append(floor)
        (tmp / "config.toml").write_text(
            "[engine]\nenabled = false\n[embeddings]\nenabled = false\n"
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake.url}/v1"\n[models."fake"]\nupstream = "fake"\n'
            # Metering stays on the path (every request is limited, held, settled and recorded);
            # limits high enough that the load measures the gateway, not a 429.
            "[tiers.free]\nrequests_per_minute = 100000000\ntokens_per_minute = 1000000000000\nmax_concurrent = 100000\n"
        )
        key = subprocess.run([sys.executable, "-m", "emporion", "keys", "create", "--data-dir", str(tmp)],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        emporion = start("emporion", [sys.executable, "-m", "emporion", "serve", "--data-dir", str(tmp),
                                      "--port", str(ports["emporion"])], ports["emporion"], "/readyz", log)  # fmt: skip
        processes.append(emporion)
        # CPU is charged to the process that does the target's work: the fake itself for "direct".
        owners = {"direct": fake, "floor": floor, "emporion": emporion}
        results = Results()
        for round_ in range(rounds):
            order = TARGETS if round_ % 2 == 0 else TARGETS[::-1]
            for level in LEVELS:
                for name in order:
                    m = measure_chat(owners[name], owners[name].url, key, level, duration_s, tmp)
                    results.chat.setdefault((name, level), []).append(m)
                    print(f"chat   {name:9} c={level:<3} {m.rps:8.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms", flush=True)
            for level in LEVELS:
                for name in order:
                    m = measure_stream(owners[name], owners[name].url, key, level, duration_s)
                    results.stream.setdefault((name, level), []).append(m)
                    print(f"stream {name:9} c={level:<3} {m.rps:8.0f} req/s  ttft p50 {m.ttft_p50_ms:6.2f} ms", flush=True)
        soak(emporion, key, soak_requests, soak_minutes, tmp, results.soak)
        results.peak_rss_mb = {name: process.peak_rss_mb() for name, process in owners.items()}
    finally:
        for process in processes:
            process.popen.terminate()
            process.popen.wait(timeout=20)
    RESULTS.mkdir(exist_ok=True)
    text = report(results, rounds, duration_s)
    (RESULTS / "gateway.md").write_text(text)
    plot(results, RESULTS / "latency.png")
    print(text)
    if not args.no_engine:
        engine_args = ["--rounds", "1", "--tokens", "32"] if args.quick else []
        subprocess.run([sys.executable, "-m", "bench.engine", *engine_args], check=True)
        subprocess.run([sys.executable, "-m", "bench.embeddings", *(["--quick"] if args.quick else [])], check=True)


def median_measure(values: list[Measure]) -> Measure:
    def med(attr: str) -> float | None:
        got = [getattr(v, attr) for v in values if getattr(v, attr) is not None]
        return statistics.median(got) if got else None

    return Measure(rps=med("rps"), p50_ms=med("p50_ms"), p99_ms=med("p99_ms"), cpu_s_per_1k=med("cpu_s_per_1k"),
                   errors=sum(v.errors for v in values), ttft_p50_ms=med("ttft_p50_ms"), ttft_p99_ms=med("ttft_p99_ms"))  # fmt: skip


def report(results: Results, rounds: int, duration_s: float) -> str:
    chat = {key: median_measure(values) for key, values in results.chat.items()}
    stream = {key: median_measure(values) for key, values in results.stream.items()}
    lines = [
        f"# Gateway overhead ({time.strftime('%Y-%m-%d')}, 2 cores, medians of {rounds} round(s) of {duration_s} s; "
        "load from wrk / aiohttp on the same machine)",
        "",
        "## Non-streamed chat completions",
        "",
        "| target | concurrency | req/s | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | CPU s / 1k req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in LEVELS:
        direct = chat[("direct", level)]
        for name in TARGETS:
            m = chat[(name, level)]
            over = "" if name == "direct" else f"{m.p50_ms - direct.p50_ms:.2f} | {m.p99_ms - direct.p99_ms:.2f}"
            over = over or "– | –"
            lines.append(f"| {name} | {level} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {over} | {m.cpu_s_per_1k:.2f} | {m.errors} |")
    lines += [
        "",
        "## Streamed chat completions (20 chunks, 2 ms apart)",
        "",
        "| target | concurrency | req/s | TTFT p50 ms | TTFT p99 ms | TTFT overhead p50 ms | total p50 ms | total p99 ms | CPU s / 1k req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in LEVELS:
        direct = stream[("direct", level)]
        for name in TARGETS:
            m = stream[(name, level)]
            over = "–" if name == "direct" else f"{m.ttft_p50_ms - direct.ttft_p50_ms:.2f}"
            lines.append(
                f"| {name} | {level} | {m.rps:,.0f} | {m.ttft_p50_ms:.2f} | {m.ttft_p99_ms:.2f} | {over} | "
                f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.cpu_s_per_1k:.2f} | {m.errors} |"
            )
    first, last = results.soak[0], results.soak[-1]
    middle = results.soak[len(results.soak) // 2]
    lines += [
        "",
        "## Memory",
        "",
        f"Peak RSS: direct (fake upstream) {results.peak_rss_mb['direct']:.0f} MB, floor proxy "
        f"{results.peak_rss_mb['floor']:.0f} MB, Emporion {results.peak_rss_mb['emporion']:.0f} MB (no local models loaded).",
        f"Emporion RSS over the soak: {first[1]:.0f} MB at start, {middle[1]:.0f} MB after {middle[0]:,} requests, "
        f"{last[1]:.0f} MB after {last[0]:,} requests.",
    ]
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    c1 = chat[("emporion", 1)]
    d1 = chat[("direct", 1)]
    rows = [
        ("overhead at concurrency 1, p50 <= 1 ms", c1.p50_ms - d1.p50_ms, lambda v: v <= 1, "{:.2f} ms"),
        ("overhead at concurrency 1, p99 <= 3 ms", c1.p99_ms - d1.p99_ms, lambda v: v <= 3, "{:.2f} ms"),
    ]
    for level in (16, 64):
        ratio = chat[("emporion", level)].rps / chat[("floor", level)].rps
        rows.append((f"throughput at concurrency {level} >= 50% of the floor proxy", ratio, lambda v: v >= 0.5, "{:.0%}"))
        rows.append((f"throughput at concurrency {level} >= 20x LiteLLM's 65-81 req/s (>= 1,620)",
                     chat[("emporion", level)].rps, lambda v: v >= 1620, "{:,.0f} req/s"))  # fmt: skip
    ttft = stream[("emporion", 1)].ttft_p50_ms - stream[("direct", 1)].ttft_p50_ms
    rows.append(("streaming TTFT overhead p50 <= 2 ms (concurrency 1)", ttft, lambda v: v <= 2, "{:.2f} ms"))
    for level in (16, 64):
        ratio = stream[("emporion", level)].rps / stream[("floor", level)].rps
        rows.append((f"streamed throughput at concurrency {level} >= 50% of the floor proxy", ratio, lambda v: v >= 0.5, "{:.0%}"))
    rows.append((f"RSS without local models <= 150 MB after {last[0]:,} requests", last[1], lambda v: v <= 150, "{:.0f} MB"))
    growth = last[1] - middle[1]
    rows.append(("no RSS growth over the second half of the soak (<= 5 MB)", growth, lambda v: v <= 5, "{:+.1f} MB"))
    for label, value, check, fmt in rows:
        lines.append(f"| {label} | {fmt.format(value)} | {'yes' if check(value) else 'no'} |")
    lines += ["", "Full path with metering on SQLite, and on PostgreSQL + Redis, join this table with the metering issue."]
    return "\n".join(lines) + "\n"


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in TARGETS:
        p50 = [median_measure(results.chat[(name, level)]).p50_ms for level in LEVELS]
        p99 = [median_measure(results.chat[(name, level)]).p99_ms for level in LEVELS]
        rps = [median_measure(results.chat[(name, level)]).rps for level in LEVELS]
        axes[0].plot(LEVELS, p50, marker="o", label=f"{name} p50")
        axes[0].plot(LEVELS, p99, marker="x", linestyle="--", label=f"{name} p99")
        axes[1].plot(LEVELS, rps, marker="o", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="Chat completion latency")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="requests/s", title="Throughput")
    for axis in axes:
        axis.set_xticks(LEVELS, [str(level) for level in LEVELS])
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
