"""The GPU catalog: memory, bandwidth, tensor throughput and format support.

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
import re

from labctl.errors import CatalogError, did_you_mean
from labctl.units import GiB, MiB


@dataclass(frozen=True)
class GpuSpec:
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
    def bf16(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def memory_gib(self) -> float:
        return self.cuda_total_bytes / GiB


def _gib(x: float) -> int:
    return round(x * GiB)


_SEC28 = "shared/reference/benchmarking-and-simulation.md §2.8"

GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        "rtx-3090",
        "NVIDIA GeForce RTX 3090",
        ("RTX 3090",),
        24576 * MiB,
        _gib(23.58),
        "24 GB GDDR6X",
        936,
        71,
        None,
        None,
        (8, 6),
        False,
        False,
        sources=(_SEC28, "CUDA total 23.58 GiB from a vLLM log (vllm#10517)"),
        sm_count=82,
        power_limit_w=350,
        ecc=False,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "rtx-4090",
        "NVIDIA GeForce RTX 4090",
        ("RTX 4090",),
        24564 * MiB,
        _gib(23.55),
        "24 GB GDDR6X",
        1008,
        165.2,
        330.3,
        None,
        (8, 9),
        True,
        False,
        sources=(_SEC28, "CUDA total 23.55 GiB from a vLLM log (RTX 4090 D)"),
        sm_count=128,
        power_limit_w=450,
        ecc=False,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "rtx-4070-ti",
        "NVIDIA GeForce RTX 4070 Ti",
        ("RTX 4070 Ti",),
        12282 * MiB,
        _gib(11.56),
        "12 GB GDDR6X",
        504,
        80.2,
        160.4,
        None,
        (8, 9),
        True,
        False,
        derived=("cuda_total_bytes", "bf16_tflops", "fp8_tflops"),
        sources=(
            "NVIDIA GeForce RTX 4070 Ti specifications (504 GB/s, 7,680 CUDA cores, 285 W)",
            "NVML total 12,282 MiB from published nvidia-smi output",
            "tensor rates: 641 AI TOPS (FP8 sparse, FP16 accumulate) / 2 for dense, / 2 for FP32 "
            "accumulate, / 2 again for BF16",
            "CUDA total: NVML less the RTX 4090's driver reservation (0.44 GiB)",
        ),
        sm_count=60,
        power_limit_w=285,
        ecc=False,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "rtx-4080",
        "NVIDIA GeForce RTX 4080",
        ("RTX 4080",),
        16376 * MiB,
        _gib(15.55),
        "16 GB GDDR6X",
        716.8,
        97.5,
        194.9,
        None,
        (8, 9),
        True,
        False,
        derived=("nvml_total_bytes", "cuda_total_bytes"),
        sources=(
            "NVIDIA Ada GPU architecture whitepaper, RTX 4080 column (dense, FP32 accumulate)",
            "NVML total 16,376 MiB as nvidia-smi reports for the RTX 4080 SUPER (same 16 GB)",
            "CUDA total: NVML less the RTX 4090's driver reservation (0.44 GiB)",
        ),
        sm_count=76,
        power_limit_w=320,
        ecc=False,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "rtx-5090",
        "NVIDIA GeForce RTX 5090",
        ("RTX 5090",),
        32607 * MiB,
        _gib(31.36),
        "32 GB GDDR7",
        1792,
        209.5,
        419,
        1676,
        (12, 0),
        True,
        True,
        derived=("bf16_tflops",),
        sources=(_SEC28, "FP32-accumulate BF16 rate is half the 419 TFLOPS FP16-accumulate figure"),
        sm_count=170,
        power_limit_w=575,
        ecc=False,
        interconnect_gbs=50,
    ),
    GpuSpec(
        "a10",
        "NVIDIA A10",
        ("A10",),
        23028 * MiB,
        _gib(22.05),
        "24 GB GDDR6",
        600,
        125,
        None,
        None,
        (8, 6),
        False,
        False,
        derived=("cuda_total_bytes",),
        sources=("NVIDIA A10 datasheet", "CUDA total from the L4's driver reservation"),
        sm_count=72,
        power_limit_w=150,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "a10g",
        "NVIDIA A10G",
        ("A10G",),
        23028 * MiB,
        _gib(22.05),
        "24 GB GDDR6",
        600,
        125,
        None,
        None,
        (8, 6),
        False,
        False,
        derived=("cuda_total_bytes", "bf16_tflops"),
        sources=(
            "AWS G5 instances (A10G: 24 GB, 600 GB/s); NVML total 23,028 MiB and 300 W from "
            "published nvidia-smi output",
            "no NVIDIA datasheet: tensor rate taken as the A10's (same GA102, 72 SMs)",
            "CUDA total as the A10's (same NVML total)",
        ),
        sm_count=72,
        power_limit_w=300,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "l4",
        "NVIDIA L4",
        ("L4",),
        23034 * MiB,
        _gib(22.05),
        "24 GB GDDR6",
        300,
        121,
        242.5,
        None,
        (8, 9),
        True,
        False,
        derived=("bf16_tflops", "fp8_tflops"),
        sources=(_SEC28, "dense = datasheet sparse / 2"),
        sm_count=58,
        power_limit_w=72,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "l40s",
        "NVIDIA L40S",
        ("L40S",),
        46068 * MiB,
        _gib(44.39),
        "48 GB GDDR6",
        864,
        362,
        733,
        None,
        (8, 9),
        True,
        False,
        sources=(_SEC28,),
        sm_count=142,
        power_limit_w=350,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "l40",
        "NVIDIA L40",
        ("L40",),
        46068 * MiB,
        _gib(44.39),
        "48 GB GDDR6",
        864,
        181.05,
        362.05,
        None,
        (8, 9),
        True,
        False,
        derived=("cuda_total_bytes",),
        sources=(
            "NVIDIA L40 datasheet (dense BF16 181.05, FP8 362.05 TFLOPS; 300 W)",
            "NVML total 46,068 MiB from published nvidia-smi output; CUDA total as the L40S's",
        ),
        sm_count=142,
        power_limit_w=300,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "rtx-6000-ada",
        "NVIDIA RTX 6000 Ada Generation",
        ("RTX 6000 Ada",),
        49140 * MiB,
        _gib(47.39),
        "48 GB GDDR6",
        960,
        364.2,
        728.5,
        None,
        (8, 9),
        True,
        False,
        derived=("cuda_total_bytes", "fp8_tflops"),
        sources=(
            "NVIDIA RTX 6000 Ada datasheet (960 GB/s; 1,457 AI TFLOPS FP8 sparse, halved for "
            "dense; BF16 half of that; 300 W)",
            "NVML total 49,140 MiB from published nvidia-smi output",
            "CUDA total: NVML less the L40S's driver reservation (0.6 GiB)",
        ),
        sm_count=142,
        power_limit_w=300,
        ecc=True,
        interconnect_gbs=25,
    ),
    GpuSpec(
        "t4",
        "NVIDIA Tesla T4",
        ("T4",),
        15360 * MiB,
        _gib(14.74),
        "16 GB GDDR6",
        320,
        65,
        None,
        None,
        (7, 5),
        False,
        False,
        sources=(
            "NVIDIA T4 datasheet (FP16 65 TFLOPS; no BF16)",
            "CUDA total 14.74 GiB from vLLM logs",
        ),
        sm_count=40,
        power_limit_w=70,
        ecc=True,
        interconnect_gbs=12,
    ),
    GpuSpec(
        "a100-40gb",
        "NVIDIA A100 40GB",
        ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
        40960 * MiB,
        _gib(39.49),
        "40 GB HBM2",
        1555,
        312,
        None,
        None,
        (8, 0),
        False,
        False,
        sources=(_SEC28,),
        sm_count=108,
        power_limit_w=400,
        ecc=True,
        interconnect_gbs=300,
    ),
    GpuSpec(
        "a100-80gb",
        "NVIDIA A100 80GB",
        ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
        81920 * MiB,
        _gib(79.32),
        "80 GB HBM2e",
        2039,
        312,
        None,
        None,
        (8, 0),
        False,
        False,
        sources=(_SEC28,),
        sm_count=108,
        power_limit_w=400,
        ecc=True,
        interconnect_gbs=300,
    ),
    GpuSpec(
        "h100-pcie",
        "NVIDIA H100 PCIe",
        ("H100 PCIe",),
        81559 * MiB,
        _gib(79.18),
        "80 GB HBM2e",
        2000,
        756,
        1513,
        None,
        (9, 0),
        True,
        False,
        sources=(_SEC28,),
        sm_count=114,
        power_limit_w=350,
        ecc=True,
        interconnect_gbs=50,
    ),
    GpuSpec(
        "h100-sxm",
        "NVIDIA H100 80GB HBM3",
        ("H100 80GB HBM3", "H100 SXM", "H100"),
        85520809984,
        _gib(79.19),
        "80 GB HBM3",
        3350,
        989,
        1979,
        None,
        (9, 0),
        True,
        False,
        sources=(
            _SEC28,
            "NVML total read on a real H100 (shared/data/gpu); CUDA total 79.19 GiB in vLLM v0.19 logs",
        ),
        sm_count=132,
        power_limit_w=700,
        ecc=True,
        interconnect_gbs=450,
    ),
    GpuSpec(
        "h100-nvl",
        "NVIDIA H100 NVL",
        ("H100 NVL",),
        95830 * MiB,
        _gib(93.13),
        "94 GB HBM3",
        3900,
        835.5,
        1670.5,
        None,
        (9, 0),
        True,
        False,
        derived=("cuda_total_bytes", "bf16_tflops", "fp8_tflops"),
        sources=(
            "NVIDIA H100 NVL datasheet (3.9 TB/s; BF16 1,671 and FP8 3,341 TFLOPS sparse, halved "
            "for dense; NVLink bridge 600 GB/s)",
            "NVML total 95,830 MiB and 400 W from published nvidia-smi output",
            "CUDA total: NVML less the H100 SXM's driver reservation (0.46 GiB)",
        ),
        sm_count=132,
        power_limit_w=400,
        ecc=True,
        interconnect_gbs=300,
    ),
    GpuSpec(
        "gh200-96gb",
        "NVIDIA GH200 96GB",
        ("GH200", "GH200 480GB", "GH200 120GB", "GH200-96GB"),
        97871 * MiB,
        _gib(95.12),
        "96 GB HBM3",
        4000,
        989,
        1979,
        None,
        (9, 0),
        True,
        False,
        derived=("cuda_total_bytes",),
        sources=(
            "NVIDIA GH200 Grace Hopper Superchip datasheet (96 GB HBM3, 4 TB/s; H100 tensor rates)",
            "NVML total 97,871 MiB and 900 W from published nvidia-smi output ('GH200 480GB')",
            "CUDA total: NVML less the H100 SXM's driver reservation (0.46 GiB)",
            "interconnect: NVLink between superchips (nvidia-smi topo NV18, 450 GB/s a direction)",
        ),
        sm_count=132,
        power_limit_w=900,
        ecc=True,
        interconnect_gbs=450,
    ),
    GpuSpec(
        "gh200-144gb",
        "NVIDIA GH200 144GB HBM3e",
        ("GH200 144G",),
        153008209920 + 480 * MiB,
        153008209920,
        "144 GB HBM3e",
        4900,
        989,
        1979,
        None,
        (9, 0),
        True,
        False,
        derived=("nvml_total_bytes", "power_limit_w"),
        sources=(
            "NVIDIA GH200 Grace Hopper Superchip datasheet (144 GB HBM3e, 4.9 TB/s; H100 tensor "
            "rates)",
            "CUDA total 153,008,209,920 bytes as a public device check reads it; NVML total that "
            "plus the H100 SXM's driver reservation; power limit as the 96 GB part's",
            "interconnect: NVLink between superchips (nvidia-smi topo NV18, 450 GB/s a direction)",
        ),
        sm_count=132,
        power_limit_w=900,
        ecc=True,
        interconnect_gbs=450,
    ),
    GpuSpec(
        "h200",
        "NVIDIA H200",
        ("H200",),
        143771 * MiB,
        _gib(139.80),
        "141 GB HBM3e",
        4800,
        989,
        1979,
        None,
        (9, 0),
        True,
        False,
        sources=(_SEC28,),
        sm_count=132,
        power_limit_w=700,
        ecc=True,
        interconnect_gbs=450,
    ),
    GpuSpec(
        "b200",
        "NVIDIA B200",
        ("B200",),
        183359 * MiB,
        _gib(178.35),
        "180 GB HBM3e",
        8000,
        2250,
        4500,
        9000,
        (10, 0),
        True,
        True,
        sources=(_SEC28, "aiconfigurator b200_sxm"),
        sm_count=148,
        power_limit_w=1000,
        ecc=True,
        interconnect_gbs=900,
    ),
    GpuSpec(
        "gb200",
        "NVIDIA GB200",
        ("GB200",),
        189471 * MiB,
        _gib(184.32),
        "186 GB HBM3e",
        8000,
        2500,
        5000,
        10000,
        (10, 0),
        True,
        True,
        derived=("cuda_total_bytes", "bandwidth_gbs", "bf16_tflops", "fp8_tflops", "fp4_tflops"),
        sources=(
            "NVIDIA GB200 NVL72 datasheet, per GPU: 576 TB/s HBM3e / 72; FP16/BF16 360, FP8 720, "
            "FP4 1,440 PFLOPS sparse / 72 / 2 for dense; NVLink 5 1.8 TB/s",
            "NVML total 189,471 MiB and 1,200 W from published nvidia-smi output",
            "CUDA total: NVML less the B200's driver reservation (0.71 GiB)",
        ),
        sm_count=148,
        power_limit_w=1200,
        ecc=True,
        interconnect_gbs=900,
    ),
    GpuSpec(
        "rtx-pro-6000",
        "NVIDIA RTX PRO 6000 Blackwell",
        ("RTX PRO 6000",),
        97887 * MiB,
        _gib(94.97),
        "96 GB GDDR7",
        1792,
        504,
        1007,
        2015,
        (12, 0),
        True,
        True,
        derived=("bf16_tflops", "fp8_tflops", "fp4_tflops"),
        sources=(_SEC28, "dense = 4000 AI TOPS FP4 sparse / 2, then halved per precision step"),
        sm_count=188,
        power_limit_w=600,
        ecc=True,
        interconnect_gbs=50,
    ),
    GpuSpec(
        "gb10",
        "NVIDIA GB10 (DGX Spark)",
        ("GB10",),
        None,
        _gib(121.69),
        "128 GB LPDDR5X unified",
        273,
        125,
        250,
        500,
        (12, 1),
        True,
        True,
        unified_memory=True,
        derived=("bf16_tflops", "fp8_tflops", "fp4_tflops"),
        sources=(
            _SEC28,
            "dense = 1 PFLOP FP4 sparse / 2, then halved per precision step",
            "NVML reports no memory; CUDA reports host MemTotal (121.69 GiB on DGX OS)",
        ),
        sm_count=48,
        power_limit_w=140,
        ecc=False,
        interconnect_gbs=25,
    ),
)

_BY_ID = {g.id: g for g in GPUS}


def gpu(gpu_id: str) -> GpuSpec:
    """Look a GPU up by catalog id (case-insensitive).

    Raises:
        CatalogError: unknown id; the message lists the catalog.
    """
    key = gpu_id.strip().lower()
    if key in _BY_ID:
        return _BY_ID[key]
    raise CatalogError(
        f"unknown GPU {gpu_id!r}.{did_you_mean(key, _BY_ID)} Known GPUs: {', '.join(_BY_ID)}"
    )


def match_nvml_name(name: str, total_bytes: int | None = None) -> GpuSpec | None:
    """The catalog entry for a GPU as NVML names it (None when unknown)."""
    upper = name.upper()
    best: GpuSpec | None = None
    best_len = 0
    for g in GPUS:
        for hint in g.nvml_names:
            if hint.upper() in upper and len(hint) > best_len:
                best, best_len = g, len(hint)
    if best is not None and best.id.startswith("a100") and total_bytes:
        return _BY_ID["a100-80gb" if total_bytes > 50 * GiB else "a100-40gb"]
    return best


def match_published(name: str) -> GpuSpec:
    """The catalog GPU a published benchmark names ("8x NVIDIA H100 SXM", "DGX Spark (GB10)",
    "NVIDIA A100 80GB (form factor not stated)").

    A leading GPU count ("8x ") is dropped; notes in parentheses are read with the name; an
    A100 whose memory the text does not state is taken as the 80 GB part, the one published
    serving benchmarks use.

    Raises:
        CatalogError: no catalog GPU matches; the message lists the catalog.
    """
    text = re.sub(r"^\s*\d+\s*[x×]\s*", "", name)
    if "A100" in text.upper():  # before the name hints: "A10" is a part of "A100"
        forty = re.search(r"40\s*GB", text, re.IGNORECASE)
        return _BY_ID["a100-40gb" if forty else "a100-80gb"]
    spec = match_nvml_name(text)
    if spec is None:
        raise CatalogError(
            f"no catalog GPU matches {name[:80]!r}; name one of: {', '.join(_BY_ID)}"
        )
    return spec
