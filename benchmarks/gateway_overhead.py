"""What the gateway costs: the same twin driven directly, through a bare relay, through
labctl, and through LiteLLM.

`labctl up` serves one twin deployment at `--time-scale 0` (it answers as fast as
it can, so what is measured is the path in front of it). `labctl bench` then
drives, at concurrency 1, 64 and 512:

- the twin directly (its own URL);
- a bare relay (`bare_relay.py`: bytes forwarded both ways on uvloop, nothing parsed): the
  floor under any proxy in Python on this machine, its CPU per chunk the system calls;
- labctl's gateway (`/v1` on the daemon's listener);
- LiteLLM's proxy (`litellm[proxy]`, not a labctl dependency) pointed at the same twin.

For each it prints median and p99 TTFT, requests/s and streamed chunks/s, and
the CPU seconds that the client, the proxy and the twin each used: all share
this machine's cores. For labctl it also prints the gateway's CPU per relayed
chunk: the daemon process's own CPU time over the run (its engines are other
processes, not counted), less what it spends idle at the same time (its GPU
sampler, engine scrapes and dashboard ticks, measured just before each run),
divided by the chunks the client received. The bare relay's is printed beside it, and the
gateway's as a multiple of it: that ratio is what carries to another machine.

Targets: labctl's gateway spends ≤ 12 µs of CPU per relayed chunk at
concurrency 64 and 512, adds ≤ 5 ms to the median TTFT at 64 and ≤ 1 ms at 1,
and, where LiteLLM is installed, sustains ≥ 10× its chunks/s at 64 and 512.
LiteLLM is optional: without it, its rows are left out.

With ``--repeat N`` every level and target runs N times, interleaved, and the summary takes
each figure's median (with the rounds' spread): one run's CPU per chunk swings by tens of
percent on a shared VM.

    python benchmarks/gateway_overhead.py [--litellm PATH] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from procs import admin, free_port, run_measured, start_lab, wait_http, wait_port

TTFT_TARGET_MS, RATIO_TARGET = 1.0, 10.0
#: Gateway CPU per relayed chunk at 64 and 512, and added median TTFT at 64.
CPU_TARGET_US, TTFT64_TARGET_MS = 12.0, 5.0
#: Seconds of idle daemon CPU measured before each labctl run (a whole engine-scrape period).
IDLE_S = 4.0
#: LiteLLM refuses to start without one; the twin and an unkeyed gateway ignore it.
MASTER_KEY = "sk-labctl-bench-" + "0123456789abcdef" * 2
LEVELS = (1, 64, 512)
CONFIG = """
[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
max_concurrency = 1024
queue_size = 4096
args = { max_model_len = 4096, time_scale = 0, max_num_seqs = 1024 }
"""
LITELLM = """
model_list:
  - model_name: chat
    litellm_params:
      model: openai/{served}
      api_base: {url}/v1
      api_key: {key}
"""


def tree_cpu(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def own_cpu(pid: int) -> float:
    """CPU seconds of this one process (not its children: the daemon's engines are its
    children, and their CPU is the twin's)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def idle_rate(pid: int, seconds: float = IDLE_S) -> float:
    """CPU seconds per second the process spends with no requests (its own background work)."""
    before, t0 = own_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return (own_cpu(pid) - before) / (time.monotonic() - t0)


def engine_key(pid: int) -> str:
    """The key the lab gave its engine (in the engine's environment, readable by its user)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"VLLM_API_KEY="):
            return entry.split(b"=", 1)[1].decode()
    raise SystemExit(f"the twin (pid {pid}) has no VLLM_API_KEY")


def bench(
    url: str, model: str, c: int, env: dict[str, str], out: Path, key: str = MASTER_KEY
) -> tuple[dict[str, Any], float]:
    n = 200 if c == 1 else max(1000, 4 * c)
    _, cpu = run_measured(
        [sys.executable, "-m", "labctl", "bench", "--base-url", url, "--model", model,
         "--num-prompts", str(n), "--max-concurrency", str(c), "--input-len", "32",
         "--output-len", "64", "--api-key", key, "--json-out", str(out)],
        env,
    )  # fmt: skip
    return json.loads(out.read_text()), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", default=str(Path(".venv-litellm/bin/litellm")))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="rounds of every level and target, interleaved; the summary "
                             "takes each figure's median over them (on a shared VM one run's "
                             "CPU per chunk swings by tens of percent)")  # fmt: skip
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat: give 1 or more rounds")
    litellm = args.litellm if Path(args.litellm).exists() else shutil.which("litellm")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "lab.toml").write_text(CONFIG)
        env = dict(os.environ, LABCTL_HOME=str(work / "home"))
        daemon, gateway = start_lab(work / "lab.toml", env)
        lport, rport = free_port(), free_port()
        proxy = relay = None
        try:
            status = admin(gateway, "/api/status", env)
            assert isinstance(status, dict)
            dep = status["deployments"][0]
            twin_url, twin_pid = dep["url"], dep["pid"]
            twin_key = engine_key(twin_pid)
            twin = urlsplit(twin_url)
            relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_relay.py")),
                                      str(rport), str(twin.hostname), str(twin.port)])  # fmt: skip
            wait_port(rport)
            targets = [
                ("direct", twin_url, dep["served_model"], None),
                ("relay", f"http://127.0.0.1:{rport}", dep["served_model"], relay.pid),
                ("labctl", gateway, "chat", daemon.pid),
            ]
            if litellm is not None:
                (work / "litellm.yaml").write_text(
                    LITELLM.format(url=twin_url, served=dep["served_model"], key=twin_key)
                )
                proxy = subprocess.Popen(
                    [litellm, "--config", str(work / "litellm.yaml"), "--port", str(lport),
                     "--host", "127.0.0.1", "--num_workers", "1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=dict(os.environ, LITELLM_LOG="ERROR", LITELLM_MASTER_KEY=MASTER_KEY),
                )  # fmt: skip
                wait_http(f"http://127.0.0.1:{lport}/health/liveliness", limit=300)
                targets.append(("litellm", f"http://127.0.0.1:{lport}", "chat", proxy.pid))
            for rnd, c in ((r, c) for r in range(args.repeat) for c in LEVELS):
                for name, url, model, pid in targets:
                    idle = idle_rate(pid) if name == "labctl" else 0.0
                    # the daemon alone (its engine is the twin, counted apart); others' trees
                    cpu = own_cpu if name == "labctl" else tree_cpu
                    before = (cpu(pid) if pid else 0.0, tree_cpu(twin_pid), time.monotonic())
                    key = twin_key if name in ("direct", "relay") else MASTER_KEY
                    doc, client_cpu = bench(url, model, c, env, work / f"{name}-{c}.json", key)
                    after = (cpu(pid) if pid else 0.0, tree_cpu(twin_pid), time.monotonic())
                    proxy_cpu = after[0] - before[0]
                    gateway_cpu = max(0.0, proxy_cpu - idle * (after[2] - before[2]))
                    chunks = doc["total_chunks"]
                    us_per_chunk = (
                        gateway_cpu / chunks * 1e6
                        if name in ("labctl", "relay") and chunks
                        else None
                    )
                    row = {
                        "target": name, "concurrency": c, "round": rnd,
                        "completed": doc["completed"],
                        "failed": doc["failed"], "median_ttft_ms": doc["median_ttft_ms"],
                        "p99_ttft_ms": doc["p99_ttft_ms"], "requests_per_s": doc["request_throughput"],
                        "chunks_per_s": doc["chunk_throughput"], "client_cpu_s": client_cpu,
                        "proxy_cpu_s": proxy_cpu, "twin_cpu_s": after[1] - before[1],
                        "client_limited": doc["client_limited"], "total_chunks": chunks,
                        "idle_cpu_per_s": idle, "gateway_us_per_chunk": us_per_chunk,
                    }  # fmt: skip
                    rows.append(row)
                    if not args.json:
                        print(
                            (f"#{rnd + 1} " if args.repeat > 1 else "")
                            + f"c={c:<4} {name:<8} TTFT median {row['median_ttft_ms']:7.2f} ms p99 "
                            f"{row['p99_ttft_ms']:8.2f} ms | {row['requests_per_s']:8.1f} req/s "
                            f"{row['chunks_per_s']:9,.0f} chunks/s | CPU s: client "
                            f"{client_cpu:5.1f} proxy {row['proxy_cpu_s']:5.1f} twin "
                            f"{row['twin_cpu_s']:5.1f} | failed {row['failed']}"
                            + (
                                f" | {us_per_chunk:5.1f} µs CPU/chunk"
                                + (f" (idle {idle * 1000:.0f} ms/s)" if name == "labctl" else "")
                                if us_per_chunk is not None
                                else ""
                            ),
                            flush=True,
                        )
        finally:
            for child in (proxy, relay):
                if child is not None:
                    child.terminate()
                    child.wait(30)
            daemon.terminate()
            daemon.wait(60)

    def rounds(name: str, c: int) -> list[dict[str, Any]]:
        return [r for r in rows if r["target"] == name and r["concurrency"] == c]

    def added(c: int, name: str = "labctl") -> float:  # each round's against its direct run
        return float(statistics.median(
            a["median_ttft_ms"] - b["median_ttft_ms"]
            for a, b in zip(rounds(name, c), rounds("direct", c), strict=True)))  # fmt: skip

    # a run that relayed no chunk has no figure: it fails the target rather than pass it
    def cpu_rounds(name: str) -> dict[int, list[float]]:
        return {c: [float(r["gateway_us_per_chunk"] or math.inf) for r in rounds(name, c)]
                for c in LEVELS if c > 1}  # fmt: skip

    each, floor_each = cpu_rounds("labctl"), cpu_rounds("relay")
    per_chunk = {c: float(statistics.median(v)) for c, v in each.items()}
    floor = {c: float(statistics.median(v)) for c, v in floor_each.items()}
    # each round's gateway against the same round's bare relay
    over_floor = {c: float(statistics.median(a / b for a, b in zip(each[c], floor_each[c], strict=True)))
                  for c in each}  # fmt: skip
    ratios: dict[int, float] = {}
    if litellm is not None:
        for c in per_chunk:
            ratios[c] = statistics.median(
                a["chunks_per_s"] / max(b["chunks_per_s"], 1e-9)
                for a, b in zip(rounds("labctl", c), rounds("litellm", c), strict=True)
            )
    met = (
        added(1) <= TTFT_TARGET_MS
        and added(64) <= TTFT64_TARGET_MS
        and all(us <= CPU_TARGET_US for us in per_chunk.values())
        and all(r >= RATIO_TARGET for r in ratios.values())
    )
    summary = {"added_median_ttft_ms_c1": added(1), "added_median_ttft_ms_c64": added(64),
               "gateway_us_per_chunk": per_chunk, "gateway_us_per_chunk_rounds": each,
               "bare_relay_us_per_chunk": floor, "bare_relay_us_per_chunk_rounds": floor_each,
               "gateway_over_bare_relay": over_floor,
               "bare_relay_added_median_ttft_ms_c64": added(64, "relay"),
               "rounds": args.repeat, "chunks_ratio_vs_litellm": ratios,
               "litellm": litellm is not None, "met": met, "cpu_count": os.cpu_count()}  # fmt: skip
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
    else:
        vs = (
            "chunks/s vs LiteLLM: " + ", ".join(f"{r:.1f}× at {c}" for c, r in ratios.items())
            + f" (target ≥ {RATIO_TARGET:g}×)"
            if ratios
            else "LiteLLM not installed: left out"
        )  # fmt: skip

        def spread(c: int) -> str:
            return f" (rounds {min(each[c]):.1f}–{max(each[c]):.1f})" if args.repeat > 1 else ""

        rounds_said = f", median of {args.repeat} rounds" if args.repeat > 1 else ""
        print(
            f"\nlabctl's gateway{rounds_said}: "
            + ", ".join(
                f"{us:.1f} µs CPU per chunk at {c}{spread(c)}" for c, us in per_chunk.items()
            )
            + f" (target ≤ {CPU_TARGET_US:g} µs); adds {added(64):.2f} ms to the median TTFT at "
            f"64 (target ≤ {TTFT64_TARGET_MS:g} ms) and {added(1):.2f} ms at 1 (target ≤ "
            f"{TTFT_TARGET_MS:g} ms); {vs}: {'targets met' if met else 'NOT met'}; "
            f"{os.cpu_count()} cores shared by client, proxy and twin"
        )
        print(
            "a bare relay (bytes both ways, nothing parsed) between the same client and twin: "
            + ", ".join(f"{us:.1f} µs CPU per chunk at {c}" for c, us in floor.items())
            + f"; adds {added(64, 'relay'):.2f} ms to the median TTFT at 64. labctl's gateway "
            "spends "
            + ", ".join(f"{r:.2f}× its CPU per chunk at {c}" for c, r in over_floor.items())
        )
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
