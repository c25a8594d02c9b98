"""What one GPU read returns, and the protocol every GPU backend implements.

Every reading that a card may not support is optional: ``None`` means the card
(or the simulated device) does not report it, and the exporter then omits the
metric instead of writing NaN or a sentinel. Units are NVML's own (bytes,
percent, watts, millijoules, MHz, KB/s) so that both backends and the fake used
in tests speak the same language; the exporter converts to DCGM's units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

#: NVML clock-event (formerly "throttle") reason bits and their names.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on one GPU, as the driver (or the ledger) reports it."""

    pid: int
    #: ``None`` where the driver cannot say (Windows WDDM reports no per-process figure).
    used_bytes: int | None
    #: ``compute`` (CUDA) or ``graphics`` (a display server, a desktop compositor).
    kind: str = "compute"


@dataclass(frozen=True)
class DeviceSample:
    """One device at one instant."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str
    #: ``device`` when the card reports its own memory; ``host`` on unified-memory
    #: systems (GB10) where the totals below come from the host's RAM.
    memory_source: str = "device"
    memory_total_bytes: int | None = None
    #: Used memory excluding the driver's reservation (NVML v2 ``used``).
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    gpu_util_percent: float | None = None
    memory_util_percent: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_millijoules: float | None = None
    temperature_c: float | None = None
    fan_percent: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    clock_event_reasons: int | None = None
    pstate: int | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: int | None = None
    remapped_rows_failure: int | None = None
    pcie_link_gen: int | None = None
    pcie_link_width: int | None = None
    pcie_tx_kbps: float | None = None
    pcie_rx_kbps: float | None = None
    #: The last XID error seen since the backend opened, and how often each XID occurred.
    xid_last: int | None = None
    xid_counts: dict[int, int] = field(default_factory=dict)
    processes: tuple[GpuProcess, ...] = ()
    #: The catalog id (``h100-sxm``) when the device matches one.
    catalog_id: str | None = None

    @property
    def cuda_total_bytes(self) -> int | None:
        """What CUDA (and so vLLM) sees as the total: NVML's total less the reservation."""
        if self.memory_total_bytes is None:
            return None
        return self.memory_total_bytes - (self.memory_reserved_bytes or 0)


@dataclass(frozen=True)
class GpuReading:
    """Every device a backend sees, read at once."""

    backend: str
    devices: tuple[DeviceSample, ...]
    driver_version: str | None = None
    #: The newest CUDA the driver runs, as NVML encodes it (12040: 12.4); None: not known.
    cuda_driver_version: int | None = None


class GpuBackend(Protocol):
    """A source of GPU readings: NVML, or simulated GPUs.

    ``read`` blocks (NVML calls can take tens of milliseconds); callers run it
    on a sampler thread, never on a request path.
    """

    name: str

    def read(self) -> GpuReading:
        """Read every device now.

        Raises:
            GpuError: the read failed as a whole (driver gone, GPU lost).
        """
        ...

    def close(self) -> None:
        """Release the library or files the backend holds."""
        ...
