"""On a machine with an NVIDIA GPU: the CUDA process the lab starts for GPU 0 is the one NVML
shows on GPU 0.

The lab runs a small CUDA server (``torch.zeros(1, device="cuda")``, then stdlib HTTP) as a
``command`` deployment that names GPU 0 by its UUID, so it goes through the lab's own start
path: the UUID resolved to NVML's index, the adapter's environment (``CUDA_DEVICE_ORDER=
PCI_BUS_ID``, ``CUDA_VISIBLE_DEVICES``), the identity check after ready. NVML must then list
the engine's pid on the device with that UUID and on no other, and the journal must say the
revision ran on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import urllib.request

import pytest

from labctl.gpu.nvml import read_devices
from tests.gpu.conftest import running_lab

pytestmark = pytest.mark.gpu

SERVER = Path(__file__).resolve().parents[1] / "integration" / "env_server.py"


def test_the_cuda_process_started_for_gpu_0_is_the_one_nvml_shows_on_gpu_0(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    gpu0 = read_devices()[0]
    seen = tmp_path / "env.json"
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "nvml"\n\n[deployments.cuda]\nengine = "command"\n'
        f'command = ["{sys.executable}", "{SERVER}", "--host", "{{host}}", "--port", "{{port}}", '
        f'"--out", "{seen}", "--cuda"]\n'
        f'gpus = ["{gpu0.uuid[:12]}"]\nstop_grace = 10\n'
    )
    with running_lab(config, tmp_path / "home", 19080 + os.getpid() % 1000) as (url, env):
        engine_env = json.loads(seen.read_text())
        assert engine_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert engine_env["CUDA_VISIBLE_DEVICES"] == "0"  # GPU 0's UUID, resolved by the lab
        out = subprocess.run(
            [sys.executable, "-m", "labctl", "history", "cuda", "--url", url, "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        record = json.loads(out.stdout)["deploys"][0]
        assert record["outcome"] == "committed" and record["gpu_uuids"] == [gpu0.uuid]
        token = (tmp_path / "home" / "admin-token").read_text().strip()
        req = urllib.request.Request(url + "/api/status",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            pid = next(d["pid"] for d in json.loads(r.read())["deployments"] if d["name"] == "cuda")
        on = {d.uuid: [p.pid for p in d.processes] for d in read_devices()}
        assert pid in on[gpu0.uuid], on  # NVML shows the lab's engine on GPU 0, by UUID
        assert not [u for u, pids in on.items() if pid in pids and u != gpu0.uuid], on
