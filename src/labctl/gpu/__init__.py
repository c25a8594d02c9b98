"""GPU backends behind one protocol (:class:`~labctl.gpu.sample.GpuBackend`).

``nvml`` reads real NVIDIA GPUs and is the only module that imports ``pynvml``;
``sim`` reads simulated GPUs from the state dir; ``host`` reads the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labctl.catalog.gpus import GpuSpec
from labctl.errors import GpuUnavailable, UsageError
from labctl.gpu.sample import GpuBackend

BACKENDS = ("auto", "nvml", "sim")


def open_backend(
    kind: str, state_dir: Path, sim_gpus: Sequence[GpuSpec] | None = None
) -> GpuBackend:
    """The backend ``kind`` names; ``auto`` is NVML where a GPU is visible, else simulated.

    ``sim_gpus`` (re)configures the simulated machine; without it the machine
    keeps the GPUs it was last given (the embedded default: one RTX 3090).

    Raises:
        UsageError: an unknown kind, or simulated GPUs asked of NVML.
        GpuUnavailable: ``nvml`` was asked for and NVML cannot open.
    """
    if kind not in BACKENDS:
        raise UsageError(f"GPU backend {kind!r} is unknown; use one of {', '.join(BACKENDS)}")
    if kind == "nvml" and sim_gpus:
        raise UsageError("--sim-gpus applies to simulated GPUs; drop it or use --gpu-backend sim")
    if kind in ("auto", "nvml") and not sim_gpus:
        from labctl.gpu.nvml import NvmlBackend

        try:
            backend = NvmlBackend()
        except GpuUnavailable:
            if kind == "nvml":
                raise
        else:
            if kind == "nvml" or backend.device_count:
                return backend
            backend.close()
    from labctl.gpu.sim import SimBackend, SimMachine

    machine = SimMachine(state_dir)
    if sim_gpus:
        machine.configure(sim_gpus)
    return SimBackend(machine)
