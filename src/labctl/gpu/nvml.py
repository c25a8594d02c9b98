"""Read real NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package).

A missing library or driver raises :class:`GpuUnavailable` once, at open; a
field a card does not support (common on GeForce and GB10) reads as ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from labctl.errors import GpuUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceMemory:
    """One GPU's identity and memory as NVML reports it."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    #: Memory the driver reserves (NVML v2); CUDA's total is ``total - reserved``.
    reserved_bytes: int | None
    compute_capability: tuple[int, int] | None

    @property
    def cuda_total_bytes(self) -> int | None:
        if self.total_bytes is None:
            return None
        return self.total_bytes - (self.reserved_bytes or 0)


def _import() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailable(
            "NVML is not available: install nvidia-ml-py (pip install 'labctl[nvml]') to read real GPUs"
        ) from exc
    return pynvml


def _optional(nvml: Any, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call an NVML function; ``None`` when the card does not support it."""
    try:
        return call(*args, **kwargs)
    except nvml.NVMLError:
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_devices() -> list[DeviceMemory]:
    """Every GPU NVML sees, with its memory.

    Raises:
        GpuUnavailable: the library is missing or the driver is not loaded.
    """
    nvml = _import()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise GpuUnavailable(f"NVML could not start ({exc}); is the NVIDIA driver loaded?") from exc
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = _optional(
                nvml, lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2)
            )
            if mem is None:
                mem = _optional(nvml, lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
            cc = _optional(nvml, lambda h=h: nvml.nvmlDeviceGetCudaComputeCapability(h))
            devices.append(
                DeviceMemory(
                    index=i,
                    name=_text(nvml.nvmlDeviceGetName(h)),
                    uuid=_text(_optional(nvml, lambda h=h: nvml.nvmlDeviceGetUUID(h)) or ""),
                    pci_bus_id=_text(
                        getattr(
                            _optional(nvml, lambda h=h: nvml.nvmlDeviceGetPciInfo(h)), "busId", ""
                        )
                    ),
                    total_bytes=getattr(mem, "total", None),
                    used_bytes=getattr(mem, "used", None),
                    free_bytes=getattr(mem, "free", None),
                    reserved_bytes=getattr(mem, "reserved", None),
                    compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
                )
            )
        return devices
    finally:
        _optional(nvml, nvml.nvmlShutdown)
