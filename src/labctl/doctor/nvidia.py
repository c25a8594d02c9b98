"""The NVIDIA stack as the driver and GPU checks read it: the kernel module, the PCI bus, NVML.

One pass per host view (:meth:`~labctl.doctor.host.HostView.memo`): NVML is opened once,
every field the checks need is read from every GPU, and it is closed again, so a dozen checks
cost one ``nvmlInit``. A field the card does not offer reads as ``None``; a GPU whose name
cannot be read is kept with the error (a GPU that fell off the bus is a finding, not a crash).
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from dataclasses import dataclass
import re
from typing import Any

from labctl.config import LabConfig
from labctl.doctor.finding import Skip
from labctl.doctor.host import HostView

NVIDIA_VENDOR = "0x10de"
VERSION_FILE = "/proc/driver/nvidia/version"
#: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build …"
_KERNEL_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
#: NVML's "value not available" for a process's memory (2**64 - 1 in ``pynvml``).
_NOT_AVAILABLE = 2**63
#: Engines that need a real NVIDIA GPU (the others run on CPUs, or simulate one).
GPU_ENGINES = ("vllm", "openvla")


def clip(text: str, n: int = 200) -> str:
    """One line of at most ``n`` characters, for a finding's evidence."""
    line = " ".join(text.split())
    return line if len(line) <= n else line[: n - 1] + "…"


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True)
class PciGpu:
    """An NVIDIA display device on the PCI bus and the kernel driver bound to it."""

    address: str
    #: "nvidia", "nouveau", "vfio-pci"…; None when no driver is bound.
    driver: str | None


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML reads it; ``None`` where the card does not offer the field."""

    index: int
    name: str
    bus_id: str = ""
    #: Why the device could not be read (``GpuIsLost``…); None when it could.
    lost: str | None = None
    cc: tuple[int, int] | None = None
    #: What CUDA sees: NVML's total less the driver's reservation (None: unified memory).
    memory_total: int | None = None
    memory_free: int | None = None
    persistence: int | None = None
    retired_pending: bool | None = None
    #: Pages retired so far (single- and double-bit causes together).
    retired_pages: int | None = None
    #: (correctable, uncorrectable, pending, failure), as ``nvmlDeviceGetRemappedRows``.
    remapped_rows: tuple[int, int, int, int] | None = None
    pcie_gen: int | None = None
    pcie_max_gen: int | None = None
    pcie_width: int | None = None
    pcie_max_width: int | None = None
    clock_reasons: int | None = None
    util_percent: int | None = None
    #: (pid, bytes or None) of compute and graphics processes; None when NVML cannot list them.
    processes: tuple[tuple[int, int | None], ...] | None = None

    @property
    def place(self) -> str:
        return f"gpu {self.index}"


@dataclass(frozen=True)
class Nvidia:
    """What the kernel, the PCI bus and NVML say about NVIDIA GPUs here."""

    #: The first line of /proc/driver/nvidia/version (None: no module loaded).
    kernel_line: str | None = None
    kernel_version: str | None = None
    pci: tuple[PciGpu, ...] = ()
    #: NVSwitch devices (PCI bridges of NVIDIA's, or the nvswitch driver's device list).
    nvswitches: tuple[str, ...] = ()
    #: Loaded kernel modules (None: /proc/modules not readable).
    modules: frozenset[str] | None = None
    #: Why NVML gave no readings (None: it did).
    nvml_error: str | None = None
    nvml_error_code: int | None = None
    #: The user-space driver's version, as NVML reports it.
    driver_version: str | None = None
    #: The newest CUDA the driver supports, as NVML encodes it (13000: 13.0).
    cuda_driver: int | None = None
    nvml_version: str | None = None
    gpus: tuple[Gpu, ...] = ()

    @property
    def driver_loaded(self) -> bool:
        """A driver answers: the kernel module is loaded, or NVML sees GPUs (WSL has no
        /proc/driver/nvidia)."""
        return self.kernel_version is not None or bool(self.gpus)

    @property
    def driver(self) -> str | None:
        return self.driver_version or self.kernel_version

    @property
    def driver_major(self) -> int | None:
        v = self.driver
        return int(v.split(".")[0]) if v and v.split(".")[0].isdigit() else None

    def missing(self) -> str:
        """Why there is no driver, in one clause (for skips and findings)."""
        where = f"no {VERSION_FILE}"
        if self.pci:
            bound = ", ".join(f"{p.address} ({p.driver or 'no driver'})" for p in self.pci)
            return f"{where}; NVIDIA GPUs on the PCI bus: {bound}"
        return f"{where}, NVML sees no GPU ({self.nvml_error or 'none listed'})"

    def require_gpus(self) -> tuple[Gpu, ...]:
        """The GPUs NVML reads.

        Raises:
            Skip: no driver, no NVML, or no GPU (the reason says which).
        """
        if not self.driver_loaded:
            raise Skip(f"no NVIDIA driver: {self.missing()}")
        if self.nvml_error is not None:
            raise Skip(f"NVML gives no readings: {self.nvml_error}")
        if not self.gpus:
            raise Skip("NVML sees no GPU")
        return self.gpus


def nvidia(host: HostView) -> Nvidia:
    """The one reading of the NVIDIA stack that every driver and GPU check shares."""
    return host.memo("nvidia", lambda: _read(host))


def needs_gpu(lab: LabConfig | None) -> list[str]:
    """What in the lab needs a real NVIDIA GPU (empty: nothing, it simulates or runs on CPUs)."""
    if lab is None or lab.sim_gpus or lab.gpu_backend == "sim":
        return []
    need = [f"deployment {d.name} ({d.engine})" for d in lab.deployments if d.engine in GPU_ENGINES]
    return ["lab.gpu_backend = 'nvml'", *need] if lab.gpu_backend == "nvml" else need


def _read(host: HostView) -> Nvidia:
    line = (host.read(VERSION_FILE, 4096) or "").strip().splitlines()
    kernel_line = line[0] if line else None
    m = _KERNEL_VERSION.search(kernel_line or "")
    mods = host.read("/proc/modules")
    modules = (
        frozenset(ln.split(" ", 1)[0] for ln in mods.splitlines() if ln.strip())
        if mods is not None
        else None
    )
    gpus, switches = _pci(host)
    switches += [f"nvswitch {d}" for d in host.listdir("/proc/driver/nvidia-nvswitch/devices")]
    return Nvidia(
        kernel_line=kernel_line,
        kernel_version=m.group(1) if m else (kernel_line and "unknown"),
        pci=tuple(gpus),
        nvswitches=tuple(switches),
        modules=modules,
        **_read_nvml(host.nvml),
    )


def _pci(host: HostView) -> tuple[list[PciGpu], list[str]]:
    """NVIDIA's display devices (class 0x03…) and bridges (0x0680: NVSwitch) on the bus."""
    gpus, switches = [], []
    for bdf in host.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{bdf}"
        if (host.read(f"{base}/vendor", 16) or "").strip().lower() != NVIDIA_VENDOR:
            continue
        klass = (host.read(f"{base}/class", 16) or "").strip().lower()
        if klass.startswith("0x0680"):
            switches.append(bdf)
        elif klass.startswith("0x03"):  # not its HDMI audio function
            link = host.readlink(f"{base}/driver")
            gpus.append(PciGpu(bdf, link.rstrip("/").rsplit("/", 1)[-1] if link else None))
    return gpus, switches


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _read_nvml(nvml: Any) -> dict[str, Any]:
    if nvml is None:
        return {"nvml_error": "NVML's Python module is not installed (pip install 'labctl[nvml]')"}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return {"nvml_error": _error(exc), "nvml_error_code": getattr(exc, "value", None)}
    try:
        opt = _optional(nvml)
        cuda = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None)
        out: dict[str, Any] = {
            "driver_version": _opt_text(opt(nvml.nvmlSystemGetDriverVersion)),
            "cuda_driver": opt(cuda or nvml.nvmlSystemGetCudaDriverVersion),
            "nvml_version": _opt_text(opt(nvml.nvmlSystemGetNVMLVersion)),
        }
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            return out | {"nvml_error": _error(exc), "nvml_error_code": getattr(exc, "value", None)}
        out["gpus"] = tuple(_device(nvml, opt, i) for i in range(count))
        return out
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _optional(nvml: Any) -> Callable[..., Any]:
    def opt(call: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        """NVML's answer, or None where the card, driver or library does not give one."""
        if call is None:
            return None
        try:
            return call(*args, **kwargs)
        except nvml.NVMLError:
            return None

    return opt


def _opt_text(v: object) -> str | None:
    return _text(v) if v is not None else None


def _int(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) else None


def _device(nvml: Any, opt: Callable[..., Any], index: int) -> Gpu:
    try:
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(nvml.nvmlDeviceGetName(h))
    except nvml.NVMLError as exc:
        return Gpu(index, "unknown", lost=_error(exc))

    def f(call: str, *args: Any, **kwargs: Any) -> Any:
        return opt(getattr(nvml, call, None), h, *args, **kwargs)

    pci = f("nvmlDeviceGetPciInfo")
    cc = f("nvmlDeviceGetCudaComputeCapability")
    v2 = getattr(nvml, "nvmlMemory_v2", None)
    mem = f("nvmlDeviceGetMemoryInfo", version=v2) if v2 is not None else None
    mem = mem if mem is not None else f("nvmlDeviceGetMemoryInfo")
    total = free = None
    if mem is not None:
        total = int(mem.total) - int(getattr(mem, "reserved", 0) or 0)
        free = int(mem.free)
    pending = f("nvmlDeviceGetRetiredPagesPendingStatus")
    causes = ("MULTIPLE_SINGLE_BIT_ECC_ERRORS", "DOUBLE_BIT_ECC_ERROR")
    pages = [f("nvmlDeviceGetRetiredPages", getattr(nvml, f"NVML_PAGE_RETIREMENT_CAUSE_{c}", i))
             for i, c in enumerate(causes)]  # fmt: skip
    retired = sum(len(p) for p in pages) if all(p is not None for p in pages) else None
    rows = f("nvmlDeviceGetRemappedRows")
    util = f("nvmlDeviceGetUtilizationRates")
    reasons = f("nvmlDeviceGetCurrentClocksEventReasons")
    if reasons is None:
        reasons = f("nvmlDeviceGetCurrentClocksThrottleReasons")
    procs = f("nvmlDeviceGetComputeRunningProcesses")
    if procs is not None:  # a desktop's compositor holds memory too (DCGM warns of them)
        seen = {p.pid for p in procs}
        graphics = f("nvmlDeviceGetGraphicsRunningProcesses") or ()
        procs = [*procs, *(p for p in graphics if p.pid not in seen)]
    return Gpu(
        index=index,
        name=name,
        bus_id=_text(getattr(pci, "busId", "")) if pci is not None else "",
        cc=(int(cc[0]), int(cc[1])) if cc is not None else None,
        memory_total=total,
        memory_free=free,
        persistence=_int(f("nvmlDeviceGetPersistenceMode")),
        retired_pending=bool(pending) if pending is not None else None,
        retired_pages=retired,
        remapped_rows=(int(rows[0]), int(rows[1]), int(rows[2]), int(rows[3])) if rows else None,
        pcie_gen=_int(f("nvmlDeviceGetCurrPcieLinkGeneration")),
        pcie_max_gen=_int(f("nvmlDeviceGetMaxPcieLinkGeneration")),
        pcie_width=_int(f("nvmlDeviceGetCurrPcieLinkWidth")),
        pcie_max_width=_int(f("nvmlDeviceGetMaxPcieLinkWidth")),
        clock_reasons=_int(reasons),
        util_percent=_int(getattr(util, "gpu", None)),
        processes=_processes(procs),
    )


def _processes(procs: Any) -> tuple[tuple[int, int | None], ...] | None:
    if procs is None:
        return None
    return tuple((int(p.pid), _used(p.usedGpuMemory)) for p in procs)


def _used(v: object) -> int | None:
    return int(v) if isinstance(v, int) and 0 <= v < _NOT_AVAILABLE else None


def meminfo(host: HostView) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (MemTotal, MemAvailable…); empty when unreadable."""
    out = {}
    for line in (host.read("/proc/meminfo", 16384) or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out
