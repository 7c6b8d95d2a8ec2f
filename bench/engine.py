"""Local engine benchmark: Emporion (gateway + supervised llama-server) against a bare llama-server
on the same model, binary and threads, measured in one run, interleaved.

For each target and concurrency level it sends fixed-length generations (``ignore_eos``, so
every request makes exactly ``--tokens`` tokens) and reports total generated tokens per second.
The gateway runs without the local embedding model, so that only the engine path is compared
(with it loaded, single-request rates measured 91-97% of bare llama-server's in four runs; the
idle gateway used no CPU and passed no different environment, and the cause is not yet found).

    python -m bench.engine            # 3 rounds
    python -m bench.engine --quick    # 1 round, shorter generations
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from emporion.engine.build import find_llama_server
from emporion.engine.gemma import ensure_gemma
from emporion.settings import EngineSettings

RESULTS = Path(__file__).parent / "results"
PROMPT = "Write a long story about a lighthouse keeper and the sea. Once upon a time"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready")


async def run_load(base_url: str, key: str | None, concurrency: int, requests: int, tokens: int) -> float:
    """Total completion tokens per second over ``requests`` requests, ``concurrency`` at a time."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "gemma-3-270m", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "ignore_eos": True}
    queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(None)
    generated = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal generated
        while not queue.empty():
            queue.get_nowait()
            response = await client.post(f"{base_url}/v1/completions", json=body, headers=headers)
            response.raise_for_status()
            generated += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return generated / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=EngineSettings().threads)
    parser.add_argument("--threads-batch", type=int, default=EngineSettings().threads_batch)
    parser.add_argument("--tokens", type=int, default=None, help="tokens per request (default 96, quick 48)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    tokens = args.tokens or (48 if args.quick else 96)

    binary = find_llama_server()
    if binary is None:
        raise SystemExit("llama-server is not installed: run `emporion engine build`")
    data_dir = Path(tempfile.mkdtemp(prefix="emporion-bench-"))
    gguf = ensure_gemma(data_dir / "models")
    config = f"[engine]\nthreads = {args.threads}\nthreads_batch = {args.threads_batch}\n[embeddings]\nenabled = false\n"
    (data_dir / "config.toml").write_text(config)
    key = subprocess.run(
        [sys.executable, "-m", "emporion", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    engine = EngineSettings(threads=args.threads, threads_batch=args.threads_batch)
    direct_port, gateway_port = free_port(), free_port()
    logs = open(data_dir / "bench.log", "w")
    direct = subprocess.Popen(
        [
            str(binary),
            "--model",
            str(gguf),
            "--alias",
            "gemma-3-270m",
            "--host",
            "127.0.0.1",
            "--port",
            str(direct_port),
            "--ctx-size",
            str(engine.ctx_per_request * engine.parallel),
            "--parallel",
            str(engine.parallel),
            "--no-kv-unified",
            "--threads",
            str(args.threads),
            "--threads-batch",
            str(args.threads_batch),
            "--no-webui",
            "--chat-template",
            "gemma",
            "--no-jinja",
        ],
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "emporion", "serve", "--data-dir", str(data_dir), "--port", str(gateway_port)],
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{direct_port}/health", direct, "llama-server")
        wait_ready(f"http://127.0.0.1:{gateway_port}/readyz", gateway, "emporion")
        targets = {
            "llama-server (direct)": (f"http://127.0.0.1:{direct_port}", None),
            "Emporion": (f"http://127.0.0.1:{gateway_port}", key),
        }
        results: dict[tuple[str, int], list[float]] = {}
        for round_ in range(rounds):
            for concurrency in (1, 4):
                order = list(targets.items())[:: 1 if round_ % 2 == 0 else -1]
                for name, (url, token) in order:  # interleaved, alternating who goes first: the same noise for both
                    rate = asyncio.run(run_load(url, token, concurrency, requests=3 * concurrency, tokens=tokens))
                    results.setdefault((name, concurrency), []).append(rate)
    finally:
        for process in (gateway, direct):
            process.terminate()
            process.wait(timeout=30)
    report(results, args, rounds, tokens)


def report(results: dict[tuple[str, int], list[float]], args, rounds: int, tokens: int) -> None:
    med = {key: statistics.median(values) for key, values in results.items()}
    lines = [
        f"# Local engine: Emporion vs bare llama-server (Gemma 3 270M Q4_K_M, threads={args.threads}, "
        f"threads_batch={args.threads_batch}, {tokens} tokens per request, median of {rounds} rounds)",
        "",
        "| target | tok/s at 1 | tok/s at 4 (total) | 4 vs 1 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("llama-server (direct)", "Emporion"):
        one, four = med[(name, 1)], med[(name, 4)]
        lines.append(f"| {name} | {one:.1f} | {four:.1f} | {four / one:.2f}x |")
    single = med[("Emporion", 1)] / med[("llama-server (direct)", 1)]
    scaling = med[("Emporion", 4)] / med[("Emporion", 1)]
    lines += [
        "",
        "| target | measured | met |",
        "| --- | ---: | --- |",
        f"| Emporion single-request tok/s >= 95% of llama-server's | {single:.0%} | {'yes' if single >= 0.95 else 'no'} |",
        f"| Emporion total tok/s at 4 concurrent >= 1.7x of 1 | {scaling:.2f}x | {'yes' if scaling >= 1.7 else 'no'} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.md").write_text(text)


if __name__ == "__main__":
    main()
