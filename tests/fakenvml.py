"""A stand-in for the ``pynvml`` module that replays recorded NVML readings.

A profile is a list of devices, each a dict in the format of the real H100
readings in ``shared/data/gpu/h100-nvml-and-kernels.json`` (``mem_v2``,
``power_mw``, ``remapped_rows`` …); the system-wide readings (``driver``,
``cuda_driver``, ``nvml``) sit on the first device, as in the recording. A
value that is a string starting with ``ERR NVMLError_X`` raises that NVML
error, as the real call did; a key that is absent raises
``NVMLError_NotSupported``. For unit tests and benchmarks only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
import time
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

_CODES = {
    "NVMLError_InvalidArgument": NVML_ERROR_INVALID_ARGUMENT,
    "NVMLError_NotSupported": NVML_ERROR_NOT_SUPPORTED,
    "NVMLError_NoPermission": NVML_ERROR_NO_PERMISSION,
    "NVMLError_NotFound": NVML_ERROR_NOT_FOUND,
    "NVMLError_DriverNotLoaded": NVML_ERROR_DRIVER_NOT_LOADED,
    "NVMLError_Timeout": NVML_ERROR_TIMEOUT,
    "NVMLError_FunctionNotFound": NVML_ERROR_FUNCTION_NOT_FOUND,
    "NVMLError_GpuIsLost": NVML_ERROR_GPU_IS_LOST,
    "NVMLError_LibraryNotFound": NVML_ERROR_LIBRARY_NOT_FOUND,
    "NVMLError_LibRmVersionMismatch": NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    "NVMLError_Unknown": NVML_ERROR_UNKNOWN,
}

nvmlMemory_v2 = 0x2000028
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
nvmlEventTypeXidCriticalError = 8
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        name = next((k for k, v in _CODES.items() if v == self.value), "NVMLError")
        return name.removeprefix("NVMLError_")


def raise_named(name: str) -> None:
    raise NVMLError(_CODES.get(name, NVML_ERROR_UNKNOWN))


def load_h100(shared: Path) -> dict[str, Any]:
    """The recorded H100 device, as a profile entry."""
    doc = json.loads((shared / "data/gpu/h100-nvml-and-kernels.json").read_text())
    return dict(doc["nvml_snapshot"])


def geforce_profile(h100: dict[str, Any]) -> dict[str, Any]:
    """An RTX 3090-like card: no ECC, no remapped rows, a fan, P8 at idle."""
    d = copy.deepcopy(h100)
    unsupported = "ERR NVMLError_NotSupported: Not Supported"
    d.update(
        name="NVIDIA GeForce RTX 3090",
        cc=[8, 6],
        uuid="GPU-3090aaaa-0000-4000-8000-000000000002",
        mem_v1={"total": 25769803776, "free": 25300000000, "used": 469803776},
        mem_v2={"total": 25769803776, "reserved": 450971566, "free": 25300000000, "used": 18832210},
        power_mw=21000,
        power_limit_mw=350000,
        power_enforced_mw=350000,
        fan=41,
        pstate=8,
        ecc_mode=unsupported,
        ecc_volatile_uncorrected=unsupported,
        remapped_rows=unsupported,
        pcie_gen=4,
        procs=[],
        graphics_procs=[{"pid": 1312, "usedGpuMemory": 18000000}],
    )
    d["pci"] = {"busId": "00000000:01:00.0"}
    return d


def gb10_profile(h100: dict[str, Any]) -> dict[str, Any]:
    """A DGX Spark (GB10)-like device: no device memory, no power limit, no PCIe link."""
    d = copy.deepcopy(h100)
    unsupported = "ERR NVMLError_NotSupported: Not Supported"
    d.update(
        name="NVIDIA GB10",
        cc=[12, 1],
        uuid="GPU-gb10bbbb-0000-4000-8000-000000000003",
        mem_v1=unsupported,
        mem_v2=unsupported,
        power_mw=11170,
        power_limit_mw=unsupported,
        power_enforced_mw=unsupported,
        ecc_mode=unsupported,
        ecc_volatile_uncorrected=unsupported,
        remapped_rows=unsupported,
        pcie_gen=unsupported,
        pcie_width=unsupported,
        pcie_tx_kbs=unsupported,
        pcie_rx_kbs=unsupported,
        procs=[{"pid": 4242, "usedGpuMemory": 60 * 2**30}],
    )
    d["pci"] = {"busId": "0000000F:01:00.0"}
    return d


class FakeNvml:
    """Module-like object with the pynvml functions the backend calls.

    Args:
        devices: the profile, one dict per device.
        call_delay_s: added to every device call (to stand for a real driver's cost).
        key_delay_s: added to the calls that read these keys (``pcie_tx_kbs``: NVML
            samples PCIe throughput over a 20 ms window, so that call takes ~20 ms).
    """

    NVMLError = NVMLError

    def __init__(
        self,
        devices: list[dict[str, Any]],
        call_delay_s: float = 0.0,
        key_delay_s: dict[str, float] | None = None,
    ) -> None:
        self.devices = devices
        self.call_delay_s = call_delay_s
        self.key_delay_s = key_delay_s or {}
        self.calls = 0
        self.initialised = False
        self.init_error: str | None = None
        self.xid_queue: list[tuple[int, int]] = []
        self.lost: set[int] = set()
        for name, code in _CODES.items():
            setattr(self, name, code)
        for k, v in globals().items():
            if k.startswith(("NVML_", "nvmlMemory", "nvmlEventType")):
                setattr(self, k, v)

    # -- plumbing ----------------------------------------------------------------

    def _get(self, handle: int, key: str) -> Any:
        self.calls += 1
        delay = self.call_delay_s + self.key_delay_s.get(key, 0.0)
        if delay:
            time.sleep(delay)
        if handle in self.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        dev = self.devices[handle]
        if key not in dev:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        value = dev[key]
        if isinstance(value, str) and value.startswith("ERR "):
            raise_named(value.split()[1].rstrip(":"))
        return value

    # -- the calls ---------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.init_error:
            raise_named(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.devices[0].get("driver", "")) if self.devices else ""

    def _system(self, key: str) -> Any:
        """A system-wide reading; the profile keeps these on its first device."""
        if not self.devices:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self._get(0, key)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._system("cuda_driver"))

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return int(self._system("cuda_driver"))

    def nvmlSystemGetNVMLVersion(self) -> str:
        return str(self._system("nvml"))

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetName(self, h: int) -> str:
        return str(self._get(h, "name"))

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return str(self._get(h, "uuid"))

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(**self._get(h, "pci"))

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        return SimpleNamespace(**self._get(h, "mem_v2" if version else "mem_v1"))

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(**self._get(h, "util"))

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._get(h, "power_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return int(self._get(h, "power_enforced_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return int(self._get(h, "energy_mj"))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return int(self._get(h, "temp_c"))

    def nvmlDeviceGetFanSpeed(self, h: int) -> int:
        return int(self._get(h, "fan"))

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        return int(self._get(h, "clk_sm" if clock == NVML_CLOCK_SM else "clk_mem"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return int(self._get(h, "clocks_event_reasons"))

    def nvmlDeviceGetPerformanceState(self, h: int) -> int:
        return int(self._get(h, "pstate"))

    def nvmlDeviceGetEccMode(self, h: int) -> list[int]:
        return list(self._get(h, "ecc_mode"))

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        key = (
            "ecc_volatile_uncorrected"
            if kind == NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            else "ecc_volatile_corrected"
        )
        return int(self._get(h, key))

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        rows = self._get(h, "remapped_rows")
        return (int(rows[0]), int(rows[1]), int(rows[2]), int(rows[3]))

    def nvmlDeviceGetPersistenceMode(self, h: int) -> int:
        return int(self._get(h, "persistence"))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int:
        return int(self._get(h, "retired_pages_pending"))

    def nvmlDeviceGetRetiredPages(self, h: int, cause: int) -> list[int]:
        """``retired_pages``: [[single-bit cause addresses], [double-bit cause addresses]]."""
        return list(self._get(h, "retired_pages")[cause])

    def nvmlDeviceGetRetiredPages_v2(self, h: int, cause: int) -> list[int]:
        return self.nvmlDeviceGetRetiredPages(h, cause)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return int(self._get(h, "pcie_max_gen"))

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return int(self._get(h, "pcie_max_width"))

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return int(self._get(h, "pcie_gen"))

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return int(self._get(h, "pcie_width"))

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        return int(
            self._get(h, "pcie_tx_kbs" if counter == NVML_PCIE_UTIL_TX_BYTES else "pcie_rx_kbs")
        )

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        cc = self._get(h, "cc")
        return (int(cc[0]), int(cc[1]))

    def _procs(self, h: int, key: str) -> list[Any]:
        raw = self.devices[h].get(key, [])
        if isinstance(raw, str):
            return self._get(h, key)  # type: ignore[no-any-return]
        self._get(h, "name")  # a call, with its cost and lost-GPU check
        out = []
        for p in raw:
            if isinstance(p, dict):
                out.append(SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("usedGpuMemory")))
            else:  # the recording's [pid, bytes] pairs
                out.append(SimpleNamespace(pid=p[0], usedGpuMemory=p[1]))
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return self._procs(h, "procs")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[Any]:
        return self._procs(h, "graphics_procs")

    # -- XID events ----------------------------------------------------------------

    def nvmlEventSetCreate(self) -> str:
        return "events"

    def nvmlEventSetFree(self, events: str) -> None:
        return None

    def nvmlDeviceRegisterEvents(self, h: int, kinds: int, events: str) -> None:
        if "GB10" in str(self.devices[h].get("name")):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> Any:
        if not self.xid_queue:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        device, xid = self.xid_queue.pop(0)
        return SimpleNamespace(
            device=device, eventType=nvmlEventTypeXidCriticalError, eventData=xid
        )
