"""Whether a Kubernetes rollout may run two copies of a deployment at once.

A rolling update starts the new pod before the old one stops; on GPUs that cannot hold
both, the new pod waits for memory the old one keeps, or (vLLM) fails its start because
the free memory is short of ``gpu_memory_utilization`` × the GPU. So a deployment rolls
out with ``RollingUpdate`` (one pod over, none under) only when the engine adapter's
estimate (for vLLM and the twin, the planner's budget: ``gpu_memory_utilization`` × the
GPU) fits twice on each of its GPUs, within :data:`MARGIN` of the GPU's memory, and one
copy fits by the planner; otherwise ``Recreate``: the old pod stops, its GPU memory comes
back, then the new one starts, as the lab's own swaps do. An engine the lab cannot size
(a ``command``, a GGUF file not on this machine) gets ``Recreate`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.catalog.gpus import GpuSpec
from labctl.config import DeploymentSpec
from labctl.engines import Estimate, adapter
from labctl.errors import LabError
from labctl.gpu.sample import DeviceSample
from labctl.units import GiB

#: The share of a GPU's memory two copies leave free: the driver's and CUDA's own, the
#: allocator's slack, what an estimate does not count.
MARGIN = 0.05


@dataclass(frozen=True)
class Sizing:
    """A deployment on the cluster's GPU type, as the planner sees it."""

    gpu: GpuSpec
    estimate: Estimate
    #: One copy fits (False: the planner says it does not; it is exported all the same).
    fits: bool
    #: Two copies fit on each of its GPUs at once (a rolling update can surge).
    two_fit: bool
    #: One sentence: the figures behind ``two_fit``.
    why: str


def device(gpu: GpuSpec, index: int = 0) -> DeviceSample:
    """A catalog GPU as a device sample, for the adapters' estimates."""
    return DeviceSample(index=index, name=gpu.name, uuid="", pci_bus_id="",
                        memory_total_bytes=gpu.cuda_total_bytes, catalog_id=gpu.id)  # fmt: skip


def settings(spec: DeploymentSpec) -> dict[str, object]:
    """The settings an adapter reads, as the deploy controller gives them, less ``sleep``:
    on a cluster nothing wakes a sleeping revision, so the engine runs without sleep mode."""
    return spec.to_dict() | {"sleep": None}


def size(spec: DeploymentSpec, gpu: GpuSpec) -> Sizing:
    """Whether two copies of ``spec`` fit on ``gpu`` (see the module's docstring)."""
    total = gpu.cuda_total_bytes
    try:
        estimate = adapter(spec.engine).estimate(settings(spec), device(gpu))
    except LabError as exc:
        return Sizing(gpu, Estimate(0, str(exc)), False, False,
                      f"one copy does not fit on {gpu.id}: {exc}")  # fmt: skip
    need = estimate.bytes_per_gpu
    if not need:
        return Sizing(gpu, estimate, True, False, f"not sized ({estimate.summary})")
    room = total * (1 - MARGIN)
    two = 2 * need <= room
    why = (f"two copies take 2 × {need / GiB:.2f} GiB per GPU, "
           f"{'within' if two else 'over'} {room / GiB:.2f} GiB of {gpu.id}'s "
           f"{total / GiB:.2f} GiB")  # fmt: skip
    return Sizing(gpu, estimate, True, two, why)
