"""The twin's OpenVLA against its published anchors: action rate and latency at batch 1.

Starts `labctl sim serve --model openvla/openvla-7b --gpu rtx-4090` in real time (weights
load instantly) in bf16, 8-bit and 4-bit (``--load-in-8bit``, ``--load-in-4bit``), and
OpenVLA-OFT (``moojink/openvla-7b-oft-finetuned-libero-spatial``: one image, 8×7 chunks) on
the RTX 4090 and on an A100 80GB, and drives each with one robot in a closed loop: a 256×256
frame and an instruction as OpenVLA's README client sends them (``labctl.vla.request``,
plain HTTP), the next request when the answer is in. It prints the achieved rate, the
latency (p50, p95) and the step model's figure beside each published anchor, with ratios.

Published anchors:

- RTX 4090, bf16: 4.4 actions/s measured after warm-up (openvla#66); ~6 Hz claimed by the
  paper. Target: inside 4.4–6 Hz.
- 8-bit: slower than bf16 (the OpenVLA paper). Target: slower.
- 4-bit: ~3 Hz (a summary of the paper); a 4-bit path ~2× slower than bf16 on an A6000
  (pytorch/ao#3236). Target: slower than bf16, within 25% of 3 Hz.
- OpenVLA-OFT, one image: 0.07 s a chunk (the paper; dreamzero#32 quotes OFT on an A100).
  Target: the A100 within 25%.
- OpenVLA-OFT in LIBERO's evaluation on an H100 (two images and proprioception, which the
  twin's ``/act`` does not carry: the step model's figure alone): ~90 ms, ~40 ms of it the
  vision side (VLA-Adapter#57). Target: within 25%.

    python benchmarks/twin_vla.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
import urllib.parse

from labctl import vla
from labctl.catalog.gpus import gpu
from labctl.sim import vla as step

OPENVLA = "openvla/openvla-7b"
OFT = "moojink/openvla-7b-oft-finetuned-libero-spatial"
#: name → (model, GPU, extra flags, weight bits, OFT)
RUNS: dict[str, tuple[str, str, tuple[str, ...], int, bool]] = {
    "bf16": (OPENVLA, "rtx-4090", (), 16, False),
    "8-bit": (OPENVLA, "rtx-4090", ("--load-in-8bit",), 8, False),
    "4-bit": (OPENVLA, "rtx-4090", ("--load-in-4bit",), 4, False),
    "OFT": (OFT, "rtx-4090", (), 16, True),
    "OFT A100": (OFT, "a100-80gb", (), 16, True),
}


def start_twin(home: str, model: str, gpu_id: str, extra: tuple[str, ...]) -> tuple[subprocess.Popen[str], str]:  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "sim", "serve", "--model", model, "--gpu", gpu_id,
         "--port", "0", "--load-gbps", "0", "--no-gpu-ledger", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, LABCTL_HOME=home),
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the twin did not start: {url!r}")
    return proc, url


def closed_loop(url: str, requests: int, key: str | None) -> list[float]:
    """One robot: ``requests`` actions back to back over one connection; their latencies."""
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
    body = vla.request(vla.frame(), "pick up the red block", key)
    out: list[float] = []
    try:
        for _ in range(requests + 1):  # the first is the warm-up, not counted
            sent = time.perf_counter()
            conn.request("POST", "/act", body, {"Content-Type": "application/json"})
            answer = conn.getresponse().read()
            vla.action(answer)  # raises on "error"
            out.append(time.perf_counter() - sent)
    finally:
        conn.close()
    return out[1:]


def run(name: str, requests: int) -> dict[str, Any]:
    model, gpu_id, extra, bits, oft = RUNS[name]
    with tempfile.TemporaryDirectory() as home:
        proc, url = start_twin(home, model, gpu_id, extra)
        try:
            latencies = closed_loop(url, requests, None if oft else "bridge_orig")
        finally:
            proc.terminate()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    wall = sum(latencies)
    q = statistics.quantiles(latencies, n=20)
    return {
        "run": name,
        "gpu": gpu_id,
        "requests": requests,
        "answers_per_s": requests / wall,
        "p50_latency_s": statistics.median(latencies),
        "p95_latency_s": q[18],
        "model_latency_s": step.action_seconds(gpu(gpu_id), 1, bits, oft),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30, help="actions per run (closed loop)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.requests < 2:
        raise SystemExit(f"--requests {args.requests}: give at least 2 for percentiles")
    runs = {name: run(name, args.requests) for name in RUNS}
    bf16 = runs["bf16"]["answers_per_s"]
    libero = step.forward(gpu("h100-sxm"), setup=step.OFT_LIBERO)
    vision = libero.phase("preprocess") + libero.phase("vision")
    anchors = [  # (what, twin, published, unit)
        ("bf16 rate vs measured (openvla#66)", bf16, 4.4, "Hz"),
        ("bf16 rate vs claimed (paper)", bf16, 6.0, "Hz"),
        ("4-bit rate vs ~3 Hz", runs["4-bit"]["answers_per_s"], 3.0, "Hz"),
        ("OFT A100 chunk latency (paper)", runs["OFT A100"]["p50_latency_s"], 0.07, "s"),
        ("OFT H100 LIBERO latency (step model)", libero.seconds, 0.090, "s"),
        ("OFT H100 LIBERO vision side (step model)", vision, 0.040, "s"),
    ]
    checks = {
        "bf16 inside 4.4–6 Hz": 4.4 <= bf16 <= 6.0,
        "8-bit slower than bf16": runs["8-bit"]["answers_per_s"] < bf16,
        "4-bit slower than bf16": runs["4-bit"]["answers_per_s"] < bf16,
        "OFT faster than 7 tokens": runs["OFT"]["p50_latency_s"] < runs["bf16"]["p50_latency_s"],
    }
    for what, twin, published, _ in anchors[2:]:
        checks[f"{what} within 25%"] = abs(twin / published - 1) <= 0.25
    doc = {"runs": list(runs.values()), "checks": checks, "targets_met": all(checks.values()),
           "anchors": [{"what": w, "twin": t, "published": p, "unit": u, "ratio": t / p}
                       for w, t, p, u in anchors]}  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"OpenVLA twin, one robot in a closed loop, {args.requests} actions a run "
          "(256×256 frame, json-numpy over HTTP)")  # fmt: skip
    print(f"{'run':<9} {'gpu':<10} | {'answers/s':>9} | {'p50 ms':>7} {'p95 ms':>7} | "
          f"{'model ms':>8} {'p50/model':>9}")  # fmt: skip
    for r in runs.values():
        print(f"{r['run']:<9} {r['gpu']:<10} | {r['answers_per_s']:9.2f} | "
              f"{r['p50_latency_s'] * 1000:7.1f} {r['p95_latency_s'] * 1000:7.1f} | "
              f"{r['model_latency_s'] * 1000:8.1f} {r['p50_latency_s'] / r['model_latency_s']:9.2f}")  # fmt: skip
    print(f"\n{'anchor':<42} {'twin':>7} {'published':>9} {'unit':<4} {'ratio':>5}")
    for what, twin, published, unit in anchors:
        print(f"{what:<42} {twin:7.3f} {published:9.3f} {unit:<4} {twin / published:5.2f}")
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'MISSED'} {name}")
    print("targets " + ("met" if doc["targets_met"] else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
