"""On a machine with an NVIDIA GPU: NVML readings, attribution and memory release of real CUDA processes."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from labctl.catalog.gpus import match_nvml_name
from labctl.gpu.nvml import NvmlBackend, read_devices
from labctl.telemetry.attribution import GpuOwners
from labctl.telemetry.sampler import Sampler
from labctl.units import GiB

pytestmark = pytest.mark.gpu

#: Holds N GiB on GPU 0 with PyTorch, says READY, and waits to be killed.
HOLDER = """
import os, sys, time
import torch
x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("READY", os.getpid(), flush=True)
time.sleep(600)
"""

#: Starts a HOLDER worker, reports the worker's pid, and waits: an engine with one worker.
PARENT = f"""
import subprocess, sys, time
w = subprocess.Popen([sys.executable, "-c", {HOLDER!r}, sys.argv[1]], stdout=subprocess.PIPE, text=True)
print(w.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def test_devices_report_memory_that_adds_up() -> None:
    for d in read_devices():
        assert d.name and d.uuid.startswith("GPU-")
        assert d.memory_total_bytes is not None
        if d.memory_source == "host":  # unified memory (GB10): the host's RAM
            continue
        assert d.memory_used_bytes is not None and d.memory_free_bytes is not None
        assert d.memory_used_bytes + d.memory_free_bytes + (
            d.memory_reserved_bytes or 0
        ) == pytest.approx(d.memory_total_bytes, rel=0.01)
        assert d.cuda_total_bytes is not None and d.cuda_total_bytes <= d.memory_total_bytes


def test_catalog_matches_the_card() -> None:
    d = read_devices()[0]
    spec = match_nvml_name(d.name, d.memory_total_bytes)
    if spec is None:
        pytest.skip(f"{d.name} is not in the catalog")
    if d.cuda_total_bytes is not None and d.memory_source == "device":
        assert abs(spec.cuda_total_bytes - d.cuda_total_bytes) < 1 * GiB


def test_fit_and_gpus_use_the_live_gpu() -> None:
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
    assert gpus["backend"] == "nvml" and gpus["devices"][0]["uuid"] == d.uuid


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    pytest.importorskip("torch", reason="the CUDA-process tests allocate with PyTorch")
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        if p.stdout:
            p.stdout.close()


def start(procs: list[subprocess.Popen[str]], script: str, gib: float) -> tuple[int, int]:
    """Run ``script`` in its own process group; returns its pid and the pid holding memory."""
    p = subprocess.Popen(
        [sys.executable, "-c", script, str(gib)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(p)
    assert p.stdout is not None
    line = p.stdout.readline().split()
    assert line and line[0] == "READY", "the CUDA holder did not start"
    return p.pid, int(line[1])


def owners_of(sampler: Sampler, gpu: int = 0) -> GpuOwners:
    return sampler.sample_once().owners[gpu]


def wait_until_gone(sampler: Sampler, pid: int, limit: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if all(p.pid != pid for p in owners_of(sampler).processes):
            return time.monotonic() - t0
        time.sleep(0.01)
    pytest.fail(f"process {pid} still holds GPU memory after {limit} s")


def test_cuda_process_is_attributed_and_its_release_seen_within_a_second(
    spawn: list[subprocess.Popen[str]],
) -> None:
    backend = NvmlBackend()
    root, holder = start(spawn, HOLDER, 2)
    assert root == holder
    sampler = Sampler(backend, None, owners=lambda: {root: "gpu-test"}, interval=0.05)
    owned = owners_of(sampler)
    mine = [p for p in owned.processes if p.pid == holder]
    assert mine and mine[0].deployment == "gpu-test"
    assert mine[0].used_bytes is not None and mine[0].used_bytes >= 2 * GiB
    assert owned.by_deployment["gpu-test"] >= 2 * GiB
    os.kill(holder, signal.SIGKILL)
    released = wait_until_gone(sampler, holder)
    print(f"release seen {released * 1000:.0f} ms after SIGKILL")
    assert released < 1.0
    backend.close()


def test_worker_left_by_a_killed_parent_is_unaccounted(spawn: list[subprocess.Popen[str]]) -> None:
    backend = NvmlBackend()
    parent, worker = start(spawn, PARENT, 2)
    assert parent != worker
    sampler = Sampler(backend, None, owners=lambda: {parent: "gpu-test"}, interval=0.05)
    before = owners_of(sampler)
    assert any(p.pid == worker and p.deployment == "gpu-test" for p in before.processes)
    os.kill(parent, signal.SIGKILL)  # the engine dies; its worker keeps the memory
    time.sleep(0.5)
    after = owners_of(sampler)
    orphan = [p for p in after.processes if p.pid == worker]
    assert orphan and orphan[0].deployment is None
    assert after.unaccounted_bytes is not None and after.unaccounted_bytes >= 2 * GiB
    print(f"orphaned worker {worker} holds {orphan[0].used_bytes} bytes, unaccounted")
    os.killpg(parent, signal.SIGKILL)  # the group still holds the worker
    released = wait_until_gone(sampler, worker)
    print(f"orphan's memory released {released * 1000:.0f} ms after killing its group")
    backend.close()
