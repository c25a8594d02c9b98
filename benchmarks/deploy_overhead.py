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

    python benchmarks/deploy_overhead.py [--swaps 10] [--json]
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

CONTROL_TARGET_S, RELEASE_TARGET_S = 0.5, 0.2
MODELS = ("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B")
CONFIG = """
[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
stop_grace = 10
args = { max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }
"""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "lab.toml"
        config.write_text(CONFIG)
        env = dict(os.environ, LABCTL_HOME=str(Path(tmp) / "home"))
        daemon, url = start_lab(config, env, limit=60)
        rows = []
        try:
            for i in range(args.swaps):
                model = MODELS[i % 2]
                out = subprocess.run(
                    [sys.executable, "-m", "labctl", "deploy", "chat", "--model", model, "--url",
                     url, "--json"],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                row = measure(json.loads(out.stdout)) | {"model": model}
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
    if args.json:
        print(json.dumps({"swaps": rows, "summary": summary}, indent=2))
    else:
        print(
            f"\ncontrol plane per swap: median {control:.3f} s, max {control_max:.3f} s "
            f"(target ≤ {CONTROL_TARGET_S} s); release seen after median {lag * 1000:.1f} ms, "
            f"max {lag_max * 1000:.1f} ms (target ≤ {RELEASE_TARGET_S * 1000:.0f} ms): "
            + ("targets met" if met else "NOT met")
        )
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
