"""What a swap costs beyond the engines' own stop and startup.

Runs `labctl up` with one twin deployment on a simulated RTX 3090 and swaps it
back and forth between two models that cannot both fit (Qwen3-0.6B and
Qwen3-8B, each taking 0.9 of the card), through `labctl deploy`. From each
deploy's journal record:

- control-plane time = the deploy's total − the stop step (the old engine's own
  shutdown) − the new engine's own startup (spawn to its "Application startup
  complete" line): preflight, release verification, readiness detection, smoke
  test, switch and journaling. Target ≤ 0.5 s.
- release-detection lag = from the old engine's exit to the GPU backend showing
  its memory free. Target ≤ 0.2 s.

Then cold against warm swaps (``sleep``): a second lab whose outgoing revisions sleep
instead of stopping, on the twin's own rates at time_scale 1 (so its times are real
seconds: weights read from disk at --load-gbps, a level-1 wake copying them back over the
RTX 3090's PCIe 4.0 link at 25 GB/s, profile 2 s and graph capture 5 s on a cold start). It
swaps to Qwen3-8B once cold (started from nothing) and then --warm-swaps times warm (woken,
the 0.6B model sleeping meanwhile), and prints both side by side. Target: a warm swap ≤ 10%
of a cold one.

    python benchmarks/deploy_overhead.py [--swaps 10] [--warm-swaps 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from procs import start_lab

CONTROL_TARGET_S, RELEASE_TARGET_S, WARM_TARGET = 0.5, 0.2, 0.10
MODELS = ("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B")
CONFIG = """
[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
stop_grace = 10
"""
#: The cold swaps' deployment settings, and the sleep comparison's (LEVEL, GBPS filled in).
COLD_ARGS = "args = { max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }\n"
SLEEP_ARGS = "sleep = LEVEL\nargs = { max_model_len = 4096, time_scale = 1, load_gbps = GBPS }\n"


def deploy(url: str, env: dict[str, str], model: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "labctl", "deploy", "chat", "--model", model, "--url", url,
         "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    record: dict[str, Any] = json.loads(out.stdout)
    return record


def measure(record: dict[str, Any]) -> dict[str, float]:
    steps = {s["name"]: s for s in record["steps"]}
    engine_stop = steps["stop"]["duration_s"]
    engine_start = sum(steps["start"]["detail"]["phases"].values())
    total = record["duration_s"]
    return {
        "total_s": total,
        "engine_stop_s": engine_stop,
        "engine_startup_s": engine_start,
        "control_plane_s": total - engine_stop - engine_start,
        "release_lag_s": steps["verify_release"]["detail"]["release_seconds"],
    }


def sleep_row(record: dict[str, Any]) -> dict[str, Any]:
    """A swap to the 8B from the sleep lab: cold (its engine started) or warm (woken)."""
    steps = {s["name"]: s for s in record["steps"]}
    warm = "wake" in steps and "start" not in steps
    engine = steps["wake" if warm else "start"]
    return {
        "kind": "warm" if warm else "cold", "total_s": record["duration_s"],
        "engine_s": engine["duration_s"], "phases": engine["detail"].get("phases", {}),
        "level": engine["detail"].get("level"),
        "outgoing_sleep_s": steps["sleep"]["duration_s"] if "sleep" in steps else None,
    }  # fmt: skip


def sleep_swaps(warm: int, level: int, gbps: float, quiet: bool) -> dict[str, Any]:
    """One cold swap to the 8B, then ``warm`` warm ones, in a lab whose revisions sleep."""
    large, small = MODELS
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "lab.toml"
        config.write_text(
            CONFIG + SLEEP_ARGS.replace("LEVEL", str(level)).replace("GBPS", str(gbps))
        )
        env = dict(os.environ, LABCTL_HOME=str(Path(tmp) / "home"))
        daemon, url = start_lab(config, env, limit=120)
        rows = []
        try:
            for i in range(warm + 1):
                if i:
                    deploy(url, env, small)  # the 8B sleeps meanwhile
                rows.append(row := sleep_row(deploy(url, env, large)))
                if not quiet:
                    took = (f"wake {row['engine_s']:.3f} s at level {row['level']}"
                            if row["kind"] == "warm" else f"start {row['engine_s']:.3f} s: "
                            + ", ".join(f"{k} {v:.2f}" for k, v in row["phases"].items()))  # fmt: skip
                    print(f"swap {i + 1:>2} → {large:<16} {row['kind']}  total "
                          f"{row['total_s']:.3f} s ({took})", flush=True)  # fmt: skip
        finally:
            daemon.terminate()
            daemon.wait(60)
    cold = [r for r in rows if r["kind"] == "cold"]
    warms = [r for r in rows if r["kind"] == "warm"]
    if len(cold) != 1 or len(warms) != warm:
        raise SystemExit(f"expected 1 cold and {warm} warm swaps, got {[r['kind'] for r in rows]}")
    ratio = statistics.median(r["total_s"] for r in warms) / cold[0]["total_s"]
    return {"swaps": rows, "cold_total_s": cold[0]["total_s"], "cold_engine_s": cold[0]["engine_s"],
            "warm_total_median_s": statistics.median(r["total_s"] for r in warms),
            "warm_engine_median_s": statistics.median(r["engine_s"] for r in warms),
            "warm_over_cold": ratio, "target": WARM_TARGET, "level": level, "load_gbps": gbps,
            "met": ratio <= WARM_TARGET}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--warm-swaps", type=int, default=3,
                        help="warm swaps to the 8B in the sleep lab (0: skip it)")  # fmt: skip
    parser.add_argument("--sleep-level", type=int, choices=(1, 2), default=1)
    parser.add_argument("--load-gbps", type=float, default=2.0,
                        help="the sleep lab's disk rate for weights, GB/s (the twin's default)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "lab.toml"
        config.write_text(CONFIG + COLD_ARGS)
        env = dict(os.environ, LABCTL_HOME=str(Path(tmp) / "home"))
        daemon, url = start_lab(config, env, limit=60)
        rows = []
        try:
            for i in range(args.swaps):
                model = MODELS[i % 2]
                row = measure(deploy(url, env, model)) | {"model": model}
                rows.append(row)
                if not args.json:
                    print(
                        f"swap {i + 1:>2} → {model:<16} total {row['total_s']:.3f} s = engine stop "
                        f"{row['engine_stop_s']:.3f} + engine startup {row['engine_startup_s']:.3f} "
                        f"+ control plane {row['control_plane_s']:.3f}; release seen after "
                        f"{row['release_lag_s'] * 1000:.1f} ms",
                        flush=True,
                    )
        finally:
            daemon.terminate()
            daemon.wait(60)
    control = statistics.median(r["control_plane_s"] for r in rows)
    control_max = max(r["control_plane_s"] for r in rows)
    lag = statistics.median(r["release_lag_s"] for r in rows)
    lag_max = max(r["release_lag_s"] for r in rows)
    met = control_max <= CONTROL_TARGET_S and lag_max <= RELEASE_TARGET_S
    summary = {
        "control_plane_median_s": control, "control_plane_max_s": control_max,
        "release_lag_median_s": lag, "release_lag_max_s": lag_max,
        "targets": {"control_plane_s": CONTROL_TARGET_S, "release_lag_s": RELEASE_TARGET_S},
        "met": met,
    }  # fmt: skip
    if not args.json:
        print(
            f"\ncontrol plane per swap: median {control:.3f} s, max {control_max:.3f} s "
            f"(target ≤ {CONTROL_TARGET_S} s); release seen after median {lag * 1000:.1f} ms, "
            f"max {lag_max * 1000:.1f} ms (target ≤ {RELEASE_TARGET_S * 1000:.0f} ms): "
            + ("targets met" if met else "NOT met")
        )
    sleep = None
    if args.warm_swaps > 0:
        if not args.json:
            print(f"\ncold vs warm swaps to {MODELS[0]} on a simulated RTX 3090, the twin at "
                  f"time_scale 1 (its times are real seconds): weights from disk at "
                  f"{args.load_gbps:g} GB/s, sleep level {args.sleep_level}")  # fmt: skip
        sleep = sleep_swaps(args.warm_swaps, args.sleep_level, args.load_gbps, args.json)
        met = met and sleep["met"]
    if args.json:
        print(json.dumps({"swaps": rows, "summary": summary, "sleep": sleep}, indent=2))
    elif sleep is not None:
        print(f"\n{'':<22}{'cold (start)':>14}{'warm (wake)':>16}")
        print(
            f"{'deploy total':<22}{sleep['cold_total_s']:>12.3f} s{sleep['warm_total_median_s']:>14.3f} s"
        )
        print(
            f"{'engine part':<22}{sleep['cold_engine_s']:>12.3f} s{sleep['warm_engine_median_s']:>14.3f} s"
        )
        print(f"warm / cold: {sleep['warm_over_cold']:.1%} (median of {args.warm_swaps} warm; "
              f"target ≤ {WARM_TARGET:.0%}): " + ("met" if sleep["met"] else "NOT met"))  # fmt: skip
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
