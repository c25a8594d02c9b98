"""`labctl sim serve --gpu G` against a real $LABCTL_HOME: the twin runs on a G."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.lab import Lab


def test_sim_serve_gpu_in_a_fresh_home_runs_on_that_card(lab: Lab) -> None:
    # Before: the fresh home got an RTX 3090 and the H100 twin failed vLLM's free-memory
    # check against its 23.58 GiB.
    twin = lab.twin("--gpu", "h100-sxm", "--model", "Qwen/Qwen3-8B", "--time-scale", "0",
                    "--load-gbps", "0")  # fmt: skip
    gpus = json.loads(subprocess.run(
        [sys.executable, "-m", "labctl", "gpus", "--gpu-backend", "sim", "--json"],
        capture_output=True, text=True, check=True, env=lab.env,
    ).stdout)  # fmt: skip
    (device,) = gpus["devices"]
    assert device["catalog_id"] == "h100-sxm"
    assert [p["pid"] for p in device["processes"]] == [twin.proc.pid]
    again = subprocess.run(
        [sys.executable, "-m", "labctl", "sim", "serve", "--port", "0", "--gpu", "rtx-3090",
         "--model", "Qwen/Qwen3-0.6B"],
        capture_output=True, text=True, env=lab.env, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.startswith(
        f"labctl: error: --gpu rtx-3090: found 1× h100-sxm in {lab.home / 'sim-gpus'}"
    )
    assert len(again.stderr.strip().splitlines()) == 1
