"""Real NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

This is the only module that imports ``pynvml``. A missing library or driver
raises :class:`GpuUnavailable` once, at open. A field the card does not
support (``NVMLError_NotSupported``, common on GeForce and on GB10) reads as
``None``; an error that means the GPU or driver is gone fails the whole read.

GB10 (DGX Spark) has unified memory and NVML reports no device memory there:
the totals then come from the host's RAM (``memory_source="host"``) while the
per-process figures, which the driver does report, are kept.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from types import ModuleType
from typing import Any, TypeVar

from labctl.catalog.gpus import match_nvml_name
from labctl.errors import GpuError, GpuUnavailable
from labctl.gpu.host import host_memory
from labctl.gpu.sample import DeviceSample, GpuProcess, GpuReading

T = TypeVar("T")

#: NVML return codes that mean "this card or driver does not offer the field".
_UNSUPPORTED_CODES = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION",
                      "NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_NOT_FOUND",
                      "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_ARGUMENT_VERSION_MISMATCH")  # fmt: skip


def _import() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailable(
            "NVML is not available: install nvidia-ml-py (pip install 'labctl[nvml]') to read real GPUs"
        ) from exc
    return pynvml


def load_module() -> Any:
    """The ``pynvml`` module itself, for readers that call NVML directly (the doctor).

    Raises:
        GpuUnavailable: nvidia-ml-py is not installed.
    """
    return _import()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """Reads every GPU NVML sees.

    Args:
        module: the ``pynvml`` module, or a stand-in with the same functions
            (tests replay recorded readings through one).
        host_memory_reader: total and available host RAM, for unified-memory GPUs.
    """

    name = "nvml"

    def __init__(
        self,
        module: ModuleType | Any | None = None,
        host_memory_reader: Callable[[], tuple[int, int]] = host_memory,
    ) -> None:
        self._nvml = module if module is not None else _import()
        self._host_memory = host_memory_reader
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise GpuUnavailable(
                f"NVML could not start ({exc}); is the NVIDIA driver loaded?"
            ) from exc
        self._unsupported = {
            getattr(nvml, code) for code in _UNSUPPORTED_CODES if hasattr(nvml, code)
        }
        self._open = True
        try:
            self._handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
            ]
            self._driver = self._opt(nvml.nvmlSystemGetDriverVersion)
            cuda = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None)
            self._cuda = self._opt(cuda or nvml.nvmlSystemGetCudaDriverVersion)
        except nvml.NVMLError as exc:
            self.close()
            raise GpuUnavailable(f"NVML could not list the GPUs ({exc})") from exc
        self._xid_last: dict[int, int] = {}
        self._xid_counts: dict[int, dict[int, int]] = {i: {} for i in range(len(self._handles))}
        self._events = self._register_xid_events()

    @property
    def device_count(self) -> int:
        return len(self._handles)

    # -- helpers -------------------------------------------------------------

    def _opt(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call NVML; ``None`` when the card does not support the field."""
        nvml = self._nvml
        try:
            return call(*args, **kwargs)
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) in self._unsupported:
                return None
            raise GpuError(f"NVML call {getattr(call, '__name__', call)} failed: {exc}") from exc

    def _register_xid_events(self) -> Any | None:
        nvml = self._nvml
        if not hasattr(nvml, "nvmlEventSetCreate"):
            return None
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            return None
        registered = False
        for h in self._handles:
            try:
                nvml.nvmlDeviceRegisterEvents(h, nvml.nvmlEventTypeXidCriticalError, events)
                registered = True
            except nvml.NVMLError:
                continue  # this card offers no XID events; the metric is omitted for it
        if not registered:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(events)
            return None
        return events

    def _drain_xid_events(self) -> None:
        """Count every XID event queued since the last read, without waiting."""
        nvml = self._nvml
        if self._events is None:
            return
        for _ in range(1000):  # a storm of XIDs must not stall the sampler
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:
                return  # NVML_ERROR_TIMEOUT: nothing queued
            if data.eventType != nvml.nvmlEventTypeXidCriticalError:
                continue
            try:
                index = int(nvml.nvmlDeviceGetIndex(data.device))
            except nvml.NVMLError:
                continue
            xid = int(data.eventData)
            self._xid_last[index] = xid
            counts = self._xid_counts.setdefault(index, {})
            counts[xid] = counts.get(xid, 0) + 1

    def _processes(self, h: Any) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        found: dict[int, GpuProcess] = {}
        for kind, call in (
            ("graphics", getattr(nvml, "nvmlDeviceGetGraphicsRunningProcesses", None)),
            ("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
        ):
            if call is None:
                continue
            for p in self._opt(call, h) or ():
                used = p.usedGpuMemory
                # A process with a CUDA context that also draws (both lists) counts once.
                found[int(p.pid)] = GpuProcess(
                    int(p.pid), int(used) if used is not None else None, kind
                )
        return tuple(sorted(found.values(), key=lambda p: p.pid))

    # -- reading ---------------------------------------------------------------

    def _device(self, index: int, h: Any) -> DeviceSample:
        nvml, opt = self._nvml, self._opt
        name = _text(nvml.nvmlDeviceGetName(h))
        mem = opt(nvml.nvmlDeviceGetMemoryInfo, h, version=nvml.nvmlMemory_v2)
        reserved = getattr(mem, "reserved", None) if mem is not None else None
        if mem is None:
            mem = opt(nvml.nvmlDeviceGetMemoryInfo, h)
        source = "device"
        if mem is not None:
            total, used, free = int(mem.total), int(mem.used), int(mem.free)
            if reserved is None:
                used = max(0, total - free)  # v1 counts the reservation as used
        else:  # unified memory (GB10): the GPU's memory is the host's
            source = "host"
            total, available = self._host_memory()
            used, free = total - available, available
        util = opt(nvml.nvmlDeviceGetUtilizationRates, h)
        power = opt(nvml.nvmlDeviceGetPowerUsage, h)
        limit = opt(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
        energy = opt(nvml.nvmlDeviceGetTotalEnergyConsumption, h)
        reasons = (
            opt(nvml.nvmlDeviceGetCurrentClocksEventReasons, h)
            if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
            else opt(nvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        )
        ecc_on = opt(nvml.nvmlDeviceGetEccMode, h)
        ecc = bool(ecc_on and ecc_on[0])

        def ecc_count(kind: int) -> int | None:
            if not ecc:
                return None
            v = opt(nvml.nvmlDeviceGetTotalEccErrors, h, kind, nvml.NVML_VOLATILE_ECC)
            return int(v) if v is not None else None

        rows = opt(nvml.nvmlDeviceGetRemappedRows, h)
        tx = opt(nvml.nvmlDeviceGetPcieThroughput, h, nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx = opt(nvml.nvmlDeviceGetPcieThroughput, h, nvml.NVML_PCIE_UTIL_RX_BYTES)
        pci = opt(nvml.nvmlDeviceGetPciInfo, h)
        spec = match_nvml_name(name, total if source == "device" else None)
        num = _float
        return DeviceSample(
            index=index,
            name=name,
            uuid=_text(opt(nvml.nvmlDeviceGetUUID, h) or ""),
            pci_bus_id=_text(getattr(pci, "busId", "")),
            memory_source=source,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            memory_reserved_bytes=int(reserved) if reserved is not None else None,
            gpu_util_percent=num(getattr(util, "gpu", None)),
            memory_util_percent=num(getattr(util, "memory", None)),
            power_watts=power / 1000.0 if power is not None else None,
            power_limit_watts=limit / 1000.0 if limit is not None else None,
            energy_millijoules=num(energy),
            temperature_c=num(opt(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)),
            fan_percent=num(opt(nvml.nvmlDeviceGetFanSpeed, h)),
            sm_clock_mhz=num(opt(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM)),
            memory_clock_mhz=num(opt(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM)),
            clock_event_reasons=int(reasons) if reasons is not None else None,
            pstate=int(p)
            if (p := opt(nvml.nvmlDeviceGetPerformanceState, h)) is not None
            else None,
            ecc_corrected_volatile=ecc_count(nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ecc_uncorrected_volatile=ecc_count(nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
            remapped_rows_correctable=int(rows[0]) if rows else None,
            remapped_rows_uncorrectable=int(rows[1]) if rows else None,
            remapped_rows_pending=int(rows[2]) if rows else None,
            remapped_rows_failure=int(rows[3]) if rows else None,
            pcie_link_gen=_int(opt(nvml.nvmlDeviceGetCurrPcieLinkGeneration, h)),
            pcie_link_width=_int(opt(nvml.nvmlDeviceGetCurrPcieLinkWidth, h)),
            pcie_tx_kbps=num(tx),
            pcie_rx_kbps=num(rx),
            xid_last=self._xid_last.get(index),
            xid_counts=dict(self._xid_counts.get(index, {})) if self._events is not None else {},
            processes=self._processes(h),
            catalog_id=spec.id if spec else None,
        )

    def read(self) -> GpuReading:
        if not self._open:
            raise GpuError("the NVML backend is closed")
        self._drain_xid_events()
        try:
            devices = tuple(self._device(i, h) for i, h in enumerate(self._handles))
        except self._nvml.NVMLError as exc:
            raise GpuError(f"NVML read failed: {exc}") from exc
        return GpuReading(self.name, devices, _text(self._driver) if self._driver else None,
                          int(self._cuda) if isinstance(self._cuda, int) else None)  # fmt: skip

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        nvml = self._nvml
        if getattr(self, "_events", None) is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(self._events)
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _int(v: Any) -> int | None:
    return int(v) if v is not None else None


def _float(v: Any) -> float | None:
    return float(v) if v is not None else None


def read_devices() -> list[DeviceSample]:
    """Every GPU NVML sees, read once.

    Raises:
        GpuUnavailable: the library is missing or the driver is not loaded.
    """
    backend = NvmlBackend()
    try:
        return list(backend.read().devices)
    except GpuError as exc:
        raise GpuUnavailable(str(exc)) from exc
    finally:
        backend.close()
