"""On a machine with an NVIDIA GPU: the doctor finds no failure where CUDA demonstrably runs.

A doctor failure of the driver, the GPUs or the container refuses every deploy that needs a
GPU, so a false one makes the lab useless on the very machine it is for. Here PyTorch
allocates on GPU 0 first: whatever the doctor then calls a failure is its own mistake, and
the test prints each with its evidence.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import pytest

from tests.gpu.conftest import doctor_failures

pytestmark = pytest.mark.gpu


def test_the_doctor_finds_no_failure_on_a_machine_where_cuda_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cuda = subprocess.run(
        [sys.executable, "-c", "import torch; x = torch.ones(1 << 20, device='cuda'); "
         "torch.cuda.synchronize(); print(torch.cuda.get_device_name(0), float(x.sum()))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cuda.returncode == 0, f"CUDA does not run here: {cuda.stderr[-1000:]}"
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "nvml"\n\n[deployments.cuda]\nengine = "command"\n'
        f'command = ["{sys.executable}", "-m", "http.server", "{{port}}"]\n'
    )
    env = dict(os.environ, LABCTL_HOME=str(tmp_path / "home"))
    failures = doctor_failures(env, config)
    print(f"\nCUDA ran: {cuda.stdout.strip()}; doctor failures: {len(failures)}")
    for line in failures:
        print(line)
    assert not failures, "the doctor calls a machine where CUDA runs broken:\n" + "\n".join(
        failures
    )
