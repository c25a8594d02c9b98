"""The twin's Whisper against a published run: large-v3 on an RTX 4090, short clips.

Starts `labctl sim serve --model openai/whisper-large-v3 --gpu rtx-4090` in real
time (weights load instantly, the rest of startup as vLLM's) and sends 4.7 s
clips with ``labctl bench --backend openai-audio`` (streamed, as vLLM's benchmark
sends them) at concurrency 1, 32 and 64, a fixed number of requests each, then
prints measured against published: requests per second, mean and p95 latency,
RTFx, with their ratios.

The published run is SGLang-Omni's (sglang-omni#1888: 1,088 SeedTTS clips of
~4.7 s, three repeats per level), not vLLM's. Its engine admits at most 32
running requests and four 1,504-token requests per prefill batch; the twin runs
with the same limits in vLLM's flags (``--max-num-seqs 32
--max-num-batched-tokens 6144``: four 1,500-position clips a step). With
vLLM's own defaults on a 24 GB card (2,048 batched tokens: one new clip a
step) the encoder admits fewer clips and c=32 is slower (``--vllm-defaults``
adds that run).

Targets: req/s and p95 latency within 25% of the published ones at c=1 and
c=32; at c=64 no throughput gain (within 10% of c=32) and about twice c=32's
mean latency (1.6-2.4×).

    python benchmarks/twin_speech.py [--requests-c1 N] [--requests N] [--vllm-defaults] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
from typing import Any

from twin_vla import start_twin  # the benchmarks' folder is on the path of its scripts

MODEL = "openai/whisper-large-v3"
CLIP_S = 4.7
#: sglang-omni#1888, Layer 3 (means of three repeats): concurrency → (req/s, mean s, p95 s, RTFx).
PUBLISHED = {
    1: (9.74, 0.102, 0.124, 46.1),
    32: (47.68, 0.668, 0.923, 225.8),
    64: (47.15, 1.339, 1.626, 223.3),
}
#: The published engine's limits in vLLM's flags.
PUBLISHED_LIMITS = ("--max-num-seqs", "32", "--max-num-batched-tokens", "6144")


def load(url: str, home: str, concurrency: int, requests: int) -> dict[str, Any]:
    """``labctl bench --backend openai-audio``: ``requests`` transcriptions of 4.7 s clips,
    ``concurrency`` at a time, streamed as vLLM's benchmark streams them."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [sys.executable, "-m", "labctl", "bench", "--backend", "openai-audio",
             "--base-url", url + "/v1/audio/transcriptions", "--model", MODEL,
             "--audio-seconds", str(CLIP_S), "--num-prompts", str(requests),
             "--max-concurrency", str(concurrency), "--warmup", str(min(concurrency, 8)),
             "--percentiles", "95", "--json-out", out.name],
            check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, LABCTL_HOME=home),
        )  # fmt: skip
        result = json.loads(Path(out.name).read_text())
    if result["failed"]:
        raise SystemExit(f"{result['failed']} requests failed: {result['errors_by_reason']}")
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wall_s": result["duration"],
        "request_throughput": result["request_throughput"],
        "mean_latency_s": result["mean_e2el_ms"] / 1000,
        "p95_latency_s": result["p95_e2el_ms"] / 1000,
        "rtfx": result["rtfx"],
        "audio_seconds": result["audio_seconds"],
    }


def measure(extra: tuple[str, ...], levels: list[tuple[int, int]]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as home:
        proc, url = start_twin(home, MODEL, "rtx-4090", extra)
        try:
            return [load(url, home, c, n) for c, n in levels]
        finally:
            proc.terminate()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests-c1", type=int, default=60, help="requests at concurrency 1")
    ap.add_argument("--requests", type=int, default=640, help="requests at concurrency 32 and 64")
    ap.add_argument("--vllm-defaults", action="store_true",
                    help="also run c=32 with vLLM's default limits")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    levels = [(1, args.requests_c1), (32, args.requests), (64, args.requests)]
    runs = measure(PUBLISHED_LIMITS, levels)
    for r in runs:
        rps, mean, p95, rtfx = PUBLISHED[r["concurrency"]]
        r["published"] = {"request_throughput": rps, "mean_latency_s": mean,
                          "p95_latency_s": p95, "rtfx": rtfx}  # fmt: skip
        r["ratio"] = {k: r[k] / v for k, v in r["published"].items()}
    by = {r["concurrency"]: r for r in runs}
    checks = {
        f"c={c} {what} within 25%": abs(by[c]["ratio"][key] - 1) <= 0.25
        for c in (1, 32) for what, key in (("req/s", "request_throughput"), ("p95", "p95_latency_s"))
    }  # fmt: skip
    checks["c=64 no throughput gain"] = (
        by[64]["request_throughput"] <= 1.1 * by[32]["request_throughput"]
    )
    checks["c=64 about twice c=32's latency"] = 1.6 <= by[64]["mean_latency_s"] / by[32]["mean_latency_s"] <= 2.4  # fmt: skip
    defaults = measure((), [(32, args.requests)])[0] if args.vllm_defaults else None
    doc = {"runs": runs, "vllm_defaults_c32": defaults, "checks": checks,
           "targets_met": all(checks.values())}  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Whisper large-v3 twin on rtx-4090 ({' '.join(PUBLISHED_LIMITS)}), {CLIP_S} s clips, "
          "vs sglang-omni#1888 (RTX 4090, SeedTTS)")  # fmt: skip
    print(f"{'conc':>4} {'requests':>8} | {'req/s':>6} {'pub':>6} {'ratio':>5} | {'mean s':>6} "
          f"{'pub':>6} {'ratio':>5} | {'p95 s':>6} {'pub':>6} {'ratio':>5} | {'RTFx':>6} {'pub':>6}")  # fmt: skip
    for r in runs:
        p, q = r["published"], r["ratio"]
        print(f"{r['concurrency']:>4} {r['requests']:>8} | {r['request_throughput']:6.2f} "
              f"{p['request_throughput']:6.2f} {q['request_throughput']:5.2f} | "
              f"{r['mean_latency_s']:6.3f} {p['mean_latency_s']:6.3f} {q['mean_latency_s']:5.2f} | "
              f"{r['p95_latency_s']:6.3f} {p['p95_latency_s']:6.3f} {q['p95_latency_s']:5.2f} | "
              f"{r['rtfx']:6.1f} {p['rtfx']:6.1f}")  # fmt: skip
    if defaults:
        print(f"vLLM's defaults (2,048 batched tokens, 256 sequences) at c=32: "
              f"{defaults['request_throughput']:.2f} req/s, mean {defaults['mean_latency_s']:.3f} s, "
              f"p95 {defaults['p95_latency_s']:.3f} s")  # fmt: skip
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'MISSED'} {name}")
    print("targets " + ("met" if doc["targets_met"] else "MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
