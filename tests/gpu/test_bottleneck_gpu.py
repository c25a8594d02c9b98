"""On a machine with an NVIDIA GPU: the bottleneck answer reads the card's own clock events.

A ``command`` engine that keeps GPU 0 busy with bf16 matmuls runs in a lab on NVML. While
it runs, the lab's view of GPU 0 (``/api/status``) names the clock event reasons NVML
reports (read here directly at the same moments), and the deployment's class follows them:
``throttled`` while one of the heat or power reasons is active, with that reason in the
evidence (a datacenter card at full load sits at its power cap).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time
import urllib.request

import pytest

from labctl.gpu.nvml import read_devices
from labctl.gpu.sample import CLOCK_EVENT_REASONS
from labctl.sim.bottleneck import THROTTLES
from tests.gpu.conftest import running_lab

pytestmark = pytest.mark.gpu

#: The integration tier's engine stand-in; with ``--cuda --burn`` it keeps its GPU busy.
SERVER = Path(__file__).resolve().parents[1] / "integration" / "env_server.py"


def test_a_busy_gpus_clock_events_reach_the_bottleneck_answer(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "nvml"\n\n[dashboard]\ninterval = 0.5\n\n'
        '[deployments.burn]\nengine = "command"\n'
        f'command = ["{sys.executable}", "{SERVER}", "--host", "{{host}}", "--port", "{{port}}", '
        f'"--out", "{tmp_path / "env.json"}", "--cuda", "--burn"]\nstop_grace = 10\n'
    )
    with running_lab(config, tmp_path / "home", 20080 + os.getpid() % 1000) as (url, _):
        token = (tmp_path / "home" / "admin-token").read_text().strip()
        seen: list[tuple[list[str], list[str], str, str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bits = read_devices()[0].clock_event_reasons or 0
            nvml = [n for b, n in CLOCK_EVENT_REASONS if bits & b and n != "gpu_idle"]
            req = urllib.request.Request(url + "/api/status",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=10) as r:
                status = json.loads(r.read())
            gpu = status["gpus"][0]
            (dep,) = [d for d in status["deployments"] if d["name"] == "burn"]
            b = dep.get("bottleneck") or {}
            seen.append((nvml, gpu.get("throttle_reasons") or [], b.get("class", ""),
                         b.get("evidence", "")))  # fmt: skip
            time.sleep(1.0)
    for nvml, lab, cls, evidence in seen:
        print(f"NVML {nvml} | lab {lab} | {cls}: {evidence}")
    assert any(set(nvml) == set(lab) for nvml, lab, _, _ in seen[3:]), (
        "the lab's GPU 0 never showed the clock event reasons NVML reported"
    )
    for _, lab, cls, evidence in seen[3:]:  # past the first ticks of the lab's GPU reads
        hot = sorted(set(lab) & THROTTLES)
        assert (cls == "throttled") == bool(hot), (cls, lab, evidence)
        if hot:
            assert f"clocks held back: {', '.join(hot)}" in evidence
