"""On a machine with an NVIDIA GPU: NVML readings and `labctl fit` on the live GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labctl.catalog.gpus import match_nvml_name
from labctl.gpu.nvml import read_devices
from labctl.units import GiB

pytestmark = pytest.mark.gpu


def test_devices_report_memory_that_adds_up() -> None:
    for d in read_devices():
        assert d.name and d.uuid.startswith("GPU-")
        if d.total_bytes is None:  # unified memory (GB10): NVML reports none
            continue
        assert d.used_bytes is not None and d.free_bytes is not None
        assert d.used_bytes + d.free_bytes + (d.reserved_bytes or 0) == pytest.approx(
            d.total_bytes, rel=0.01
        )
        assert d.cuda_total_bytes is not None and d.cuda_total_bytes <= d.total_bytes


def test_catalog_matches_the_card() -> None:
    d = read_devices()[0]
    spec = match_nvml_name(d.name, d.total_bytes)
    if spec is None:
        pytest.skip(f"{d.name} is not in the catalog")
    if d.cuda_total_bytes is not None:
        assert abs(spec.cuda_total_bytes - d.cuda_total_bytes) < 1 * GiB


def test_fit_uses_the_live_gpu_by_default() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "fit", "Qwen/Qwen3-0.6B", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(proc.stdout)
    d = read_devices()[0]
    assert doc["gpu_total_bytes"] == (d.cuda_total_bytes or doc["gpu_total_bytes"])
    gpus = json.loads(
        subprocess.run(
            [sys.executable, "-m", "labctl", "gpus", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert gpus["devices"] and gpus["devices"][0]["uuid"] == d.uuid
