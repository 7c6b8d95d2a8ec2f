"""What Emporion adds on top of the model, as it is sold: latency, throughput, CPU and memory of
its whole request path (auth, limits, routing, the hold and settlement of real money, records),
measured against a floor in the same run (only ratios hold on a shared 2-core machine).

Targets, all in front of one fake OpenAI upstream (bench/fake_upstream.py) that answers at once:
  direct                          the fake upstream itself (what the network path costs)
  floor                           a bare pass-through proxy (bench/floor_proxy.py): the least any gateway adds
  emporion, SQLite, money on      a priced model: every request is limited, held, settled and recorded
  emporion, SQLite, money off     the same with an unpriced model (cost 0): the cost of metering is the difference
  emporion, PG+Redis, money on    a priced model on PostgreSQL (a fresh database, dropped after) with Redis limits
  emporion@SHA, SQLite, money on  with --baseline REV: the first target run from another git revision's src/
  litellm X.Y.Z                   with --peers: LiteLLM Proxy, one worker, no database (bench/peers.py)
(bench/gateway_targets.py writes their configs.) A second fake upstream answers after 50 ms, with a
floor proxy of its own; every gateway target also routes model "fake-slow" to it.

Scenarios, interleaved target by target at each load level:
  chat      non-streamed chat completions, with wrk at concurrency 1, 16, 64
  slow      the same at concurrency 64 against the 50 ms upstream (what a gateway's overhead costs
            when the model takes time, as real ones do)
  stream    streamed chat completions (a role delta, then 20 chunks 2 ms apart), with an
            aiohttp client: time to first token (the first chunk with content) and total time
  soak      the SQLite money-on target's RSS over a long run of requests (leak check)
Then the local engine against bare llama-server (bench/engine.py), and local embeddings against
the bare model (bench/embeddings.py).

    python -m bench.run                        # full: 3 rounds of 10 s, a 10-minute soak, engine, embeddings (~35 min)
    python -m bench.run --quick                # 1 round of 3 s, 10,000-request soak, short engine run (~4 min)
    python -m bench.run --quick --no-engine --baseline HEAD~8   # proves a change did not make the path slower
    python -m bench.run --current HEAD         # the Emporion targets from a revision instead of the working tree
    python -m bench.run --quick --no-engine --peers   # with LiteLLM Proxy beside them (`make bench-peers`)
    python -m bench.run --quick --rounds 3 ...  # medians of 3 short rounds: steadier on a noisy machine

Needs wrk, PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and Redis (127.0.0.1:6379).
Writes bench/results/gateway.md and gateway.png (bench/gateway_report.py), engine.md and embeddings.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from bench import gateway_targets as targets
from bench import peers
from bench.engine import free_port, wait_ready
from bench.gateway_report import LEVELS, SLOW_DELAY_MS, SLOW_LEVEL, Measure, Results, plot, report

RESULTS = Path(__file__).parent / "results"
CHAT_BODY = '{"model":"%s","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
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
class Process:
    name: str
    popen: subprocess.Popen
    url: str
    tree: bool = False  # its descendants count as its own too (a CLI that serves from a child process)

    def pids(self) -> list[int]:
        return [self.popen.pid, *(_descendants(self.popen.pid) if self.tree else [])]

    def cpu_s(self) -> float:
        return sum(_cpu_s(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        return sum(_status_kb(pid, "VmRSS") for pid in self.pids()) / 1024

    def peak_rss_mb(self) -> float:
        """The peak RSS of the process (of a tree: the sum of its processes' peaks, a ceiling)."""
        return sum(_status_kb(pid, "VmHWM") for pid in self.pids()) / 1024


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"


def _cpu_s(pid: int) -> float:
    try:
        fields = _stat(pid)
    except OSError:  # a child gone between listing and reading
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid``, children first, found by their parent ids in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except OSError:
                continue
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += parents.get(child, [])
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Live:
    """A target under load: where to send it, with which key, and whose CPU is its own."""

    name: str
    process: Process  # CPU and memory are charged to it (the fake itself for "direct")
    key: str = "unused"
    stores: targets.StoreCpu | None = None  # PG+Redis: the stores' CPU, reported beside the process's
    cost_usd: float | None = None  # what the probe request was charged
    model: str = "fake"  # "fake-slow": the gateway's route to the 50 ms upstream


@dataclass
class Run:
    tmp: Path
    processes: list[Process] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "bench.log"

    def start(
        self,
        name: str,
        args: list[str],
        port: int,
        ready_path: str,
        env: dict[str, str] | None = None,
        tree: bool = False,
        cwd: Path | None = None,
    ) -> Process:
        popen = subprocess.Popen(args, stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=env, cwd=cwd)
        process = Process(name, popen, f"http://127.0.0.1:{port}", tree)
        self.processes.append(process)
        if ready_path:
            wait_ready(process.url + ready_path, popen, name)
        else:
            _wait_port(port, popen, name)
        return process

    def stop(self) -> None:
        for process in self.processes:
            for pid in process.pids()[1:]:  # a tree's children too, should its parent not pass the signal on
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
        for name in self.databases:
            targets.drop_database(name)


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


def start_emporion(run: Run, target: targets.Target, name: str, src: Path | None, upstream_url: str, slow_url: str) -> Live:
    """Its own data dir and config, a key of a customer organization, ``emporion serve``, one probe."""
    data_dir = run.tmp / name.replace(", ", "-").replace("+", "").replace("@", "-").replace(" ", "-")
    data_dir.mkdir()
    database = None
    if target.store == "postgresql":
        database = targets.create_database()
        run.databases.append(database)
    url = targets.PG_URL.format(name=database) if database else None
    (data_dir / "config.toml").write_text(targets.config_toml(target, upstream_url, url, slow_url))
    env = targets.environment(src)
    key = targets.create_key(data_dir, env)
    port = free_port()
    process = run.start(
        name, [sys.executable, "-m", "emporion", "serve", "--data-dir", str(data_dir), "--port", str(port)], port, "/readyz", env
    )
    cost = targets.probe_cost(process.url, key)
    if target.priced and cost == 0:  # None: a revision that does not report the cost
        raise SystemExit(f"{name}: the priced model charged nothing for a request")
    if not target.priced and cost:
        raise SystemExit(f"{name}: the unpriced model charged {cost!r} for a request")
    return Live(name, process, key, targets.StoreCpu(database) if database else None, cost)


def start_litellm(run: Run, version: str, upstream_url: str, slow_url: str) -> tuple[Live, float]:
    """LiteLLM Proxy from .venv-peers with its config in the run's tmp dir, waited for on its
    liveliness endpoint, then probed on both models: (the target, seconds it took to be ready)."""
    name = peers.target_name(version)
    key = peers.master_key()
    config = run.tmp / "litellm.yaml"
    config.write_text(peers.litellm_config(upstream_url, slow_url, key))
    (run.tmp / "litellm").mkdir()
    port = free_port()
    began = time.monotonic()
    command = peers.litellm_command(config, port)
    process = run.start(
        name, command, port, "/health/liveliness", peers.litellm_environment(), tree=True, cwd=run.tmp / "litellm"
    )
    ready_s = time.monotonic() - began
    cost = peers.probe(process.url, key, "fake")
    peers.probe(process.url, key, "fake-slow")
    return Live(name, process, key, cost_usd=cost), ready_s


def start_upstream(run: Run, name: str, delay_ms: float) -> Process:
    """A fake upstream that answers after ``delay_ms`` (streams: 20 chunks, 2 ms apart)."""
    port = free_port()
    args = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port), "--chunks", "20", "--chunk-interval-ms", "2"]
    return run.start(name, [*args, "--delay-ms", str(delay_ms)], port, "")


def start_floor(run: Run, name: str, upstream: Process) -> Process:
    port = free_port()
    return run.start(name, [sys.executable, "-m", "bench.floor_proxy", "--port", str(port), "--upstream", upstream.url], port, "")


def run_wrk(url: str, key: str, connections: int, duration_s: float, script_dir: Path, model: str = "fake") -> dict:
    """wrk's summary of ``duration_s`` of chat completions at ``connections``. Its timeout is 10 s, not its
    default 2 s: a slower answer would count as an error and drop out of the latency percentiles."""
    script = script_dir / "chat.lua"
    script.write_text(WRK_SCRIPT % (CHAT_BODY % model, key))
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[7:])


def _carries_token(line: bytes) -> bool:
    """An SSE line with generated text: time to first token counts to the first of these, not to
    the role delta OpenAI streams open with (a gateway may hold that back until content comes, to
    fall back to another deployment should none come; the fake sends it a chunk interval early)."""
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or []
    return any((choice.get("delta") or {}).get("content") for choice in choices)


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
                        if first is None and _carries_token(line):
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


def _cpu(live: Live) -> tuple[float, float | None]:
    return live.process.cpu_s(), (live.stores.cpu_s() if live.stores else None)


def _per_1k(before: tuple[float, float | None], after: tuple[float, float | None], requests: int) -> tuple[float, float | None]:
    stores = None if before[1] is None or after[1] is None else (after[1] - before[1]) / requests * 1000
    return (after[0] - before[0]) / requests * 1000, stores


def measure_chat(live: Live, level: int, duration_s: float, tmp: Path) -> Measure:
    cpu = _cpu(live)
    out = run_wrk(live.process.url, live.key, level, duration_s, tmp, live.model)
    requests = max(1, out["requests"])
    own, stores = _per_1k(cpu, _cpu(live), requests)
    return Measure(
        rps=requests / (out["duration_us"] / 1e6),
        p50_ms=out["p50_us"] / 1000,
        p99_ms=out["p99_us"] / 1000,
        cpu_s_per_1k=own,
        stores_cpu_s_per_1k=stores,
        errors=out["errors"],
    )


def measure_stream(live: Live, level: int, duration_s: float) -> Measure:
    cpu = _cpu(live)
    began = time.perf_counter()
    done, ttfts, totals, errors = asyncio.run(run_streams(live.process.url, live.key, level, duration_s))
    elapsed = time.perf_counter() - began
    own, stores = _per_1k(cpu, _cpu(live), max(1, done))
    return Measure(
        rps=done / elapsed,
        p50_ms=pct(totals, 50),
        p99_ms=pct(totals, 99),
        cpu_s_per_1k=own,
        stores_cpu_s_per_1k=stores,
        errors=errors,
        ttft_p50_ms=pct(ttfts, 50),
        ttft_p99_ms=pct(ttfts, 99),
    )


def soak(live: Live, requests: int, minutes: float, tmp: Path, samples: list[tuple[int, float]]) -> None:
    """Requests in 2-second slices at concurrency 16 until both ``requests`` were sent and
    ``minutes`` have passed, sampling RSS after each slice."""
    sent = 0
    samples.append((0, live.process.rss_mb()))
    deadline = time.monotonic() + minutes * 60
    while sent < requests or time.monotonic() < deadline:
        out = run_wrk(live.process.url, live.key, 16, 2, tmp)
        sent += out["requests"]
        samples.append((sent, live.process.rss_mb()))


def _machine_cpu_s(lives: list[Live]) -> tuple[float, float, float]:
    """(wall clock, CPU busy on the whole machine, CPU of this bench: its targets, their stores, its load
    generators): the difference is what other processes took from the measurements. A process or a
    store that serves two lives (a gateway's fast and slow routes) counts once."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    mine = os.times()
    ours = mine.user + mine.system + mine.children_user + mine.children_system  # wrk, once reaped, is a child
    processes = {live.process.popen.pid: live.process for live in lives}
    stores = {live.stores.database: live.stores for live in lives if live.stores}
    ours += sum(p.cpu_s() for p in processes.values()) + sum(s.cpu_s() for s in stores.values())
    return time.monotonic(), busy, ours


def _other_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    wall, busy, ours = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, (busy - ours) / wall)


def plan(baseline: str | None, current: str | None) -> list[tuple[str, targets.Target]]:
    """(role, target) in table order; the roles are what the report's targets section reads."""
    planned = [
        ("sqlite_on", targets.Target(rev=current)),
        ("sqlite_off", targets.Target(priced=False, rev=current)),
        ("pg_on", targets.Target(store="postgresql", rev=current)),
        ("sqlite_on_unobserved", targets.Target(rev=current, observed=False)),
    ]
    if baseline:
        planned.append(("baseline", targets.Target(rev=baseline)))
        # the path alone, at the baseline's durability (synchronous=NORMAL, the default before da6014f)
        planned.append(("sqlite_on_normal", targets.Target(rev=current, sqlite_synchronous="normal")))
    return planned


def start_targets(run: Run, planned: list[tuple[str, targets.Target]], upstream_url: str, slow_url: str) -> dict[str, Live]:
    """Each revision's src/ extracted once; the Emporion targets started side by side."""
    shas: dict[str | None, str] = {rev: targets.short_sha(rev) for rev in {t.rev for _, t in planned} if rev is not None}
    sources: dict[str | None, Path] = {rev: targets.extract_src(rev, run.tmp / f"src-{sha}") for rev, sha in shas.items() if rev}
    names = {role: t.name(shas.get(t.rev)) for role, t in planned}
    if len(set(names.values())) != len(names):
        raise SystemExit(f"two targets would have the same name: {sorted(names.values())}")
    with ThreadPoolExecutor(max_workers=len(planned)) as pool:
        futures = {
            role: pool.submit(start_emporion, run, t, names[role], sources.get(t.rev), upstream_url, slow_url)
            for role, t in planned
        }
        return {role: future.result() for role, future in futures.items()}


def sources(planned: list[tuple[str, targets.Target]], emporion: dict[str, Live]) -> dict[str, str]:
    return {emporion[role].name: targets.describe(t.rev) for role, t in planned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round (about 4 minutes in all)")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved measurements (default: 1 with --quick, else 3)")
    parser.add_argument("--no-engine", action="store_true", help="skip the local engine and embeddings comparisons")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="length of the leak soak (full mode)")
    parser.add_argument("--baseline", metavar="REV", help="also run the SQLite money-on target from this git revision")
    parser.add_argument("--current", metavar="REV", help="run the Emporion targets from this revision, not the working tree")
    parser.add_argument("--peers", action="store_true", help="also run LiteLLM Proxy from .venv-peers (make bench-peers)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    targets.require_stores()
    if args.peers:
        peers.require_litellm()
    rounds, duration_s = (1, 3) if args.quick else (3, 10)
    rounds = args.rounds or rounds
    soak_requests = 10_000 if args.quick else 100_000
    soak_minutes = 0 if args.quick else args.soak_minutes

    run = Run(Path(tempfile.mkdtemp(prefix="emporion-bench-")))
    began = time.monotonic()
    try:
        fake, slow_fake = start_upstream(run, "fake upstream", 0), start_upstream(run, "slow fake upstream", SLOW_DELAY_MS)
        floor, slow_floor = start_floor(run, "floor proxy", fake), start_floor(run, "slow floor proxy", slow_fake)
        planned = plan(args.baseline, args.current)
        emporion = start_targets(run, planned, fake.url, slow_fake.url)
        gateways = list(emporion.values())
        results = Results(
            names=[],
            roles={role: live.name for role, live in emporion.items()},
            probe_cost_usd={live.name: live.cost_usd for live in emporion.values()},
            sources=sources(planned, emporion),
        )
        if args.peers:  # after the others, so that its start is timed alone
            version = peers.litellm_version()
            litellm, ready_s = start_litellm(run, version, fake.url, slow_fake.url)
            print(f"{litellm.name} ready after {ready_s:.1f} s", flush=True)
            gateways.append(litellm)
            results.roles["litellm"] = litellm.name
            results.sources[litellm.name] = f"litellm[proxy]=={version} from {peers.VENV.name}/"
            results.ready_s[litellm.name] = ready_s
            results.probe_cost_usd[litellm.name] = litellm.cost_usd
        lives = [Live("direct", fake), Live("floor", floor), *gateways]
        # the same targets on their route to the 50 ms upstream: direct and floor are other processes
        slow_lives = [Live("direct", slow_fake), Live("floor", slow_floor), *(replace(g, model="fake-slow") for g in gateways)]
        results.names = [live.name for live in lives]
        print(f"targets ready after {time.monotonic() - began:.0f} s (log: {run.log})", flush=True)
        machine = _machine_cpu_s(lives + slow_lives)
        for round_ in range(rounds):
            order = lives if round_ % 2 == 0 else lives[::-1]
            slow_order = slow_lives if round_ % 2 == 0 else slow_lives[::-1]
            for level in LEVELS:
                for live in order:
                    m = measure_chat(live, level, duration_s, run.tmp)
                    results.chat.setdefault((live.name, level), []).append(m)
                    print(
                        f"chat   {live.name:38} c={level:<3} {m.rps:8.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  "
                        f"errors {m.errors}",
                        flush=True,
                    )
            for live in slow_order:
                m = measure_chat(live, SLOW_LEVEL, duration_s, run.tmp)
                results.slow.setdefault(live.name, []).append(m)
                print(
                    f"slow   {live.name:38} c={SLOW_LEVEL:<3} {m.rps:8.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  "
                    f"errors {m.errors}",
                    flush=True,
                )
            for level in LEVELS:
                for live in order:
                    m = measure_stream(live, level, duration_s)
                    results.stream.setdefault((live.name, level), []).append(m)
                    print(
                        f"stream {live.name:38} c={level:<3} {m.rps:8.0f} req/s  ttft p50 {m.ttft_p50_ms:6.2f} ms  "
                        f"errors {m.errors}",
                        flush=True,
                    )
        results.other_cores = _other_cores(machine, _machine_cpu_s(lives + slow_lives))
        print(f"other processes used {results.other_cores:.2f} cores meanwhile", flush=True)
        soak(emporion["sqlite_on"], soak_requests, soak_minutes, run.tmp, results.soak)
        results.peak_rss_mb = {live.name: live.process.peak_rss_mb() for live in lives}
    finally:
        run.stop()
    results.wall_s = time.monotonic() - began
    RESULTS.mkdir(exist_ok=True)
    text = report(results, rounds, duration_s)
    (RESULTS / "gateway.md").write_text(text)
    plot(results, RESULTS / "gateway.png")
    print(text)
    print(f"gateway bench: {results.wall_s:.0f} s", flush=True)
    if not args.no_engine:
        engine_args = ["--rounds", "1", "--tokens", "32"] if args.quick else []
        subprocess.run([sys.executable, "-m", "bench.engine", *engine_args], check=True)
        subprocess.run([sys.executable, "-m", "bench.embeddings", *(["--quick"] if args.quick else [])], check=True)


if __name__ == "__main__":
    main()
