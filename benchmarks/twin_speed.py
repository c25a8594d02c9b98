"""How fast the twin runs: offline (simulated hour) and live (chunks per second).

1. One simulated hour of Poisson traffic at 10 requests/s (Llama-3.1-8B on an
   H100, 1024 prompt / 128 output tokens) through `labctl sim run`'s simulation:
   target ≤ 30 s of wall time.
2. `labctl sim serve --time-scale 0` streaming to a local aiohttp client that
   reads raw server-sent events over 64 concurrent streams: target ≥ 10,000
   chunks/s, so that the twin is never the bottleneck when it stands in for an
   engine.

    python benchmarks/twin_speed.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp

from labctl.sim.engine import TwinConfig, build_twin
from labctl.sim.offline import simulate
from labctl.sim.workload import arrival_times, synthetic

HOUR_TARGET_S, CHUNKS_TARGET = 30.0, 10_000


def simulated_hour() -> dict[str, Any]:
    twin = build_twin(
        TwinConfig("meta-llama/Llama-3.1-8B-Instruct", "h100-sxm", max_model_len=8192)
    )
    n = 36_000
    items = synthetic(n, 1024, 128, seed=1)
    send = arrival_times(n, 10.0, seed=1)
    t0 = time.perf_counter()
    summary, _ = simulate(twin, items, send)
    wall = time.perf_counter() - t0
    return {"requests": n, "simulated_s": summary["duration"], "wall_s": wall,
            "speedup": summary["duration"] / wall, "completed": summary["completed"]}  # fmt: skip


async def stream_chunks(url: str, streams: int, tokens: int) -> tuple[int, float]:
    body = {"model": "bench", "prompt": "w w w w", "max_tokens": tokens, "stream": True}
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            n = 0
            async with session.post(url + "/v1/completions", json=body) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        n += 1
            return n

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(streams)))
        return sum(counts), time.perf_counter() - t0


def live_chunks() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labctl", "sim", "serve", "--model", "Qwen/Qwen3-0.6B",
             "--served-model-name", "bench", "--time-scale", "0", "--port", "0", "--no-gpu-ledger"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=dict(os.environ, LABCTL_HOME=home),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            asyncio.run(stream_chunks(url, 8, 50))  # warm up
            chunks, wall = asyncio.run(stream_chunks(url, 64, 1000))
        finally:
            proc.terminate()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    return {"streams": 64, "chunks": chunks, "wall_s": wall, "chunks_per_s": chunks / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hour = simulated_hour()
    live = live_chunks()
    doc = {"simulated_hour": hour, "live_stream": live,
           "targets_met": hour["wall_s"] <= HOUR_TARGET_S and live["chunks_per_s"] >= CHUNKS_TARGET}  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"simulated hour: {hour['requests']:,} requests, {hour['simulated_s']:.0f} s simulated "
          f"in {hour['wall_s']:.1f} s wall ({hour['speedup']:.0f}× real time; target ≤ {HOUR_TARGET_S:g} s)")  # fmt: skip
    print(f"live twin at --time-scale 0: {live['chunks']:,} chunks over {live['streams']} streams "
          f"in {live['wall_s']:.2f} s = {live['chunks_per_s']:,.0f} chunks/s (target ≥ {CHUNKS_TARGET:,})")  # fmt: skip
    print("targets " + ("met" if doc["targets_met"] else "MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
