"""The record the GPU catalog holds for each GPU (:class:`GpuSpec`), and what its figures mean.

Apart from the table (:mod:`labctl.catalog.gputable`) and the look-ups
(:mod:`labctl.catalog.gpus`) so that both can use it without importing each other; callers
import it from :mod:`labctl.catalog.gpus`.

Two memory totals matter and they differ: what NVML (and ``nvidia-smi``)
reports, and what CUDA reports to PyTorch, which is NVML's total less the
driver's reservation (on the H100 read here 85,520,809,984 − 503,316,480
bytes). vLLM budgets ``gpu_memory_utilization`` against the CUDA figure, so
the planner uses it. Unified-memory systems (GB10) report no device memory to
NVML; CUDA reports the host's RAM.

Throughput figures are dense (not sparse) tensor TFLOPS. GeForce cards run
BF16 with FP32 accumulation at half their FP16-accumulate rate; the figure
here is the FP32-accumulate one, which is what BF16 GEMMs get. Figures marked
in ``derived`` were computed (e.g. from sparse marketing numbers) rather than
read from a datasheet.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.units import GiB


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's catalog entry: its names, memory, bandwidth, tensor rates and formats."""

    id: str
    name: str
    #: Substrings of the NVML device name that identify this GPU.
    nvml_names: tuple[str, ...]
    #: Total memory as NVML reports it (None where NVML reports none).
    nvml_total_bytes: int | None
    #: Total memory as CUDA reports it to PyTorch, which vLLM budgets against.
    cuda_total_bytes: int
    memory_type: str
    bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    fp4_tflops: float | None
    compute_capability: tuple[int, int]
    fp8: bool
    fp4: bool
    unified_memory: bool = False
    #: Streaming multiprocessors (sizes some per-SM kernel buffers).
    sm_count: int = 0
    #: Default board power limit in watts (what NVML reports as the power limit).
    power_limit_w: float = 0
    #: ECC memory that NVML reports on (datacenter and workstation cards, not GeForce).
    ecc: bool = False
    #: GPU-to-GPU bandwidth per direction in GB/s for tensor-parallel all-reduce:
    #: NVLink where the card has it (H100/H200 450, B200 900, A100 300), else PCIe
    #: (gen 4 x16 ≈ 25, gen 5 ≈ 50), and the 200 Gb/s network link between GB10s.
    interconnect_gbs: float = 25
    #: Field names whose values are derived rather than read from a source.
    derived: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    @property
    def architecture(self) -> str:
        """Its architecture's name, read off the compute capability."""
        return architecture(self.compute_capability)

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def memory_gib(self) -> float:
        return self.cuda_total_bytes / GiB


def architecture(compute_capability: tuple[int, int]) -> str:
    """The GPU architecture of a CUDA compute capability: volta, turing, ampere, ada, hopper,
    blackwell (older before 7.0)."""
    major, minor = compute_capability
    if major == 7:
        return "turing" if minor >= 5 else "volta"
    if major == 8:
        return "ada" if minor >= 9 else "ampere"
    return "hopper" if major == 9 else "blackwell" if major >= 10 else "older"
