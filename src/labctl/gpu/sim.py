"""Simulated GPUs: catalog devices plus an allocation ledger kept in the state dir.

A process that "loads a model" on a simulated GPU writes its allocation to the
ledger under its own pid (one small JSON file per process, written atomically).
Every read drops the entries whose process is gone (exited, a zombie, or its
pid reused by another process), so memory is released exactly when the
process dies, as the NVIDIA driver releases a dead process's memory. A process
can also hold memory through a worker child that outlives it: the orphaned
worker of a killed engine, which real deployments hit.

A process can likewise provoke clock event reasons on a GPU (a power cap, a thermal
slowdown), kept beside the memory ledger under its pid with an optional expiry: the
reasons last while the process lives and until the expiry, never beyond.

The readings a simulated card offers follow its kind: a GeForce card reports no
ECC counters and no remapped rows, a unified-memory GB10 reports its memory as
the host's. Fields the simulation does not model (clocks, PCIe) are ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
from dataclasses import dataclass
import fcntl
from itertools import groupby
import json
import os
from pathlib import Path
import signal
import time
from typing import Any
import uuid as uuidlib

from labctl.catalog.gpus import GpuSpec, gpu
from labctl.config import sim_gpu_ids
from labctl.errors import ConfigError, GpuError, UsageError
from labctl.gpu.procs import read_stat
from labctl.gpu.sample import CLOCK_EVENT_REASONS, DeviceSample, GpuProcess, GpuReading
from labctl.home import private_dir, write_private
from labctl.units import format_bytes

#: The embedded default lab: one simulated RTX 3090.
DEFAULT_SIM_GPUS = ("rtx-3090",)


def parse_sim_gpus(text: str) -> list[GpuSpec]:
    """``rtx-3090,h100-sxm`` or ``8xh100-sxm``: the catalog GPUs to simulate, in order.

    The grammar is :func:`labctl.config.sim_gpu_ids`, which lab.toml's ``sim_gpus`` shares.

    Raises:
        UsageError: an empty list, a bad count, or more than 64 GPUs in all.
        CatalogError: an id not in the catalog.
    """
    try:
        ids = sim_gpu_ids(text, "--sim-gpus")
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    return [gpu(i) for i in ids]


def describe(ids: Sequence[str]) -> str:
    """A machine in a few words: ``2× rtx-3090 + 1× h100-sxm`` (runs of one GPU counted)."""
    return " + ".join(f"{len(list(run))}× {gpu_id}" for gpu_id, run in groupby(ids)) or "no GPU"


@dataclass(frozen=True)
class SimDevice:
    index: int
    spec: GpuSpec
    uuid: str
    pci_bus_id: str

    @property
    def total_bytes(self) -> int:
        return self.spec.nvml_total_bytes or self.spec.cuda_total_bytes

    @property
    def reserved_bytes(self) -> int | None:
        if self.spec.nvml_total_bytes is None:
            return None
        return self.spec.nvml_total_bytes - self.spec.cuda_total_bytes

    @property
    def allocatable_bytes(self) -> int:
        return self.total_bytes - (self.reserved_bytes or 0)


@dataclass(frozen=True)
class Holding:
    """One process's entry in the ledger."""

    pid: int
    #: The process's start (see :mod:`labctl.gpu.procs`): a reused pid does not inherit memory.
    start: float
    #: Bytes held per GPU index.
    memory: dict[int, int]
    #: Busy share per GPU index, 0–1 (an engine reports how busy it keeps the card).
    activity: dict[int, float]
    name: str


@dataclass(frozen=True)
class ClockEvents:
    """One process's provoked clock event reasons: NVML bits per GPU index, until it exits
    or ``until`` (``time.time()``) passes."""

    pid: int
    start: float
    reasons: dict[int, int]
    until: float | None


#: The power cap (``sw_power_cap``) holds the clocks back: the card then draws at its limit.
POWER_REASONS = 0x4
#: Heat holds the clocks back (``hw_slowdown``, ``sw_/hw_thermal_slowdown``): the card runs hot.
THERMAL_REASONS = 0x8 | 0x20 | 0x40
#: The temperature a card shows while a thermal reason holds its clocks back, °C.
SLOWDOWN_TEMP_C = 88.0


def clock_event_bits(text: str) -> int:
    """``sw_power_cap,hw_slowdown``: the NVML clock event reason bits of these names.

    Raises:
        UsageError: an empty list or a name that is no clock event reason.
    """
    names = {name: bit for bit, name in CLOCK_EVENT_REASONS}
    bits = 0
    for name in (n.strip() for n in text.split(",")):
        if name not in names:
            raise UsageError(
                f"{name!r} is not a clock event reason; name one or more of "
                f"{', '.join(names)}, separated by commas"
            )
        bits |= names[name]
    return bits


def _process_start(pid: int) -> float | None:
    """When ``pid`` started, or ``None`` if it is gone or a zombie (its memory is freed)."""
    st = read_stat(pid)
    return st.start if st is not None and st.alive else None


class SimMachine:
    """The simulated GPUs of one state dir.

    Args:
        state_dir: ``$LABCTL_HOME``; the devices and ledger live in ``sim-gpus/`` there.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "sim-gpus"
        self.ledger = self.dir / "ledger"
        self.events = self.dir / "clock-events"

    # -- devices ---------------------------------------------------------------

    def configure(self, specs: Sequence[GpuSpec]) -> list[SimDevice]:
        """Set which GPUs this machine simulates (kept across processes)."""
        private_dir(self.ledger)
        doc = {"gpus": [s.id for s in specs]}
        _write_atomic(self.dir / "devices.json", doc)
        return self.devices()

    def configured(self) -> list[str] | None:
        """The catalog ids of the simulated GPUs, in order; None while none were set (then
        :meth:`devices` makes the embedded default), so a first user may choose them.

        Raises:
            GpuError: the device list is not one this module wrote.
        """
        path = self.dir / "devices.json"
        try:
            ids = json.loads(path.read_text())["gpus"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuError(
                f"{path} is not a simulated-GPU list ({exc}); delete it or run "
                "'labctl gpus --sim-gpus …' to rewrite it"
            ) from exc
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise GpuError(
                f"{path} is not a simulated-GPU list (gpus = {str(ids)[:80]}); delete it or run "
                "'labctl gpus --sim-gpus …' to rewrite it"
            )
        return ids

    def devices(self) -> list[SimDevice]:
        """The simulated GPUs; the embedded default (one RTX 3090) until configured."""
        ids = self.configured()
        if ids is None:
            return self.configure([gpu(i) for i in DEFAULT_SIM_GPUS])
        seed = str(self.dir.resolve())
        return [
            SimDevice(
                index=i,
                spec=gpu(gid),
                uuid="GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{seed}#{i}")),
                pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            )
            for i, gid in enumerate(ids)
        ]

    # -- the ledger --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.ledger)
        with os.fdopen(os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def holdings(self) -> list[Holding]:
        """Live entries; those of dead processes are removed (the memory is released)."""
        out = []
        try:
            files = list(os.scandir(self.ledger))
        except FileNotFoundError:
            return []
        for entry in files:
            if not entry.name.endswith(".json"):
                continue
            try:
                doc = json.loads(Path(entry.path).read_text())
                h = Holding(
                    pid=int(doc["pid"]),
                    start=float(doc["start"]),
                    memory={int(k): int(v) for k, v in doc["memory"].items()},
                    activity={int(k): float(v) for k, v in doc.get("activity", {}).items()},
                    name=str(doc.get("name", "")),
                )
            except FileNotFoundError:
                continue  # released while we listed
            except (ValueError, KeyError, TypeError):
                continue  # a writer mid-rename never shows here; a hand-edited file is ignored
            started = _process_start(h.pid)
            if started is None or started != h.start:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            out.append(h)
        return sorted(out, key=lambda h: h.pid)

    def free_bytes(self, index: int) -> tuple[int, int] | None:
        """Free and allocatable bytes of GPU ``index`` (``None``: no such GPU)."""
        devices = self.devices()
        if not 0 <= index < len(devices):
            return None
        used = sum(h.memory.get(index, 0) for h in self.holdings())
        return devices[index].allocatable_bytes - used, devices[index].allocatable_bytes

    def allocate(self, index: int, nbytes: int, pid: int | None = None, name: str = "") -> None:
        """Take ``nbytes`` on GPU ``index`` for ``pid`` (default: this process).

        Raises:
            GpuError: no such GPU, or not enough free memory (CUDA's out-of-memory).
        """
        pid = os.getpid() if pid is None else pid
        devices = self.devices()
        if not 0 <= index < len(devices):
            raise GpuError(
                f"there is no simulated GPU {index}; this machine has GPUs 0–{len(devices) - 1} "
                f"({', '.join(d.spec.id for d in devices)})"
            )
        if nbytes <= 0:
            raise UsageError(f"an allocation must be positive, not {nbytes} bytes")
        started = _process_start(pid)
        if started is None:
            raise GpuError(f"process {pid} is not running; only a live process can hold memory")
        dev = devices[index]
        with self._locked():
            held = self.holdings()
            used = sum(h.memory.get(index, 0) for h in held)
            free = dev.allocatable_bytes - used
            if nbytes > free:
                raise GpuError(
                    f"CUDA out of memory on simulated GPU {index} ({dev.spec.id}): tried to "
                    f"allocate {format_bytes(nbytes)} with {format_bytes(free)} free; stop what "
                    f"holds it ('labctl gpus') or ask for less"
                )
            mine = next((h for h in held if h.pid == pid), None)
            memory = dict(mine.memory) if mine else {}
            memory[index] = memory.get(index, 0) + nbytes
            self._write(pid, started, memory, dict(mine.activity) if mine else {}, name)

    def hold_in_worker(
        self, index: int, nbytes: int, name: str = "worker", seconds: float | None = None
    ) -> int:
        """Fork a worker that holds ``nbytes`` on GPU ``index`` until killed (or for
        ``seconds``), as an engine's worker process does; returns its pid once it holds.

        Raises:
            GpuError: the worker could not allocate (the message says why).
        """
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the worker: quiet, in its parent's process group
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                self.allocate(index, nbytes, name=name)
                os.write(write_end, b"ok\n")
            except Exception as exc:
                os.write(write_end, f"{exc}\n".encode())
                os._exit(1)
            os.close(write_end)
            try:
                _sleep(seconds)
            finally:
                self.release()
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as fh:
            status = fh.readline().strip()
        if status != "ok":
            os.waitpid(child, 0)
            raise GpuError(status or "the worker died before allocating")
        return child

    def set_activity(self, index: int, busy: float, pid: int | None = None) -> None:
        """Say how busy ``pid`` keeps GPU ``index`` (0–1): drives utilization and power."""
        pid = os.getpid() if pid is None else pid
        with self._locked():
            mine = next((h for h in self.holdings() if h.pid == pid), None)
            if mine is None:
                raise GpuError(f"process {pid} holds no simulated GPU memory")
            activity = dict(mine.activity)
            activity[index] = min(1.0, max(0.0, busy))
            self._write(pid, mine.start, mine.memory, activity, mine.name)

    def release(self, pid: int | None = None) -> None:
        """Free everything ``pid`` holds (what process exit does anyway)."""
        pid = os.getpid() if pid is None else pid
        with contextlib.suppress(FileNotFoundError):
            (self.ledger / f"{pid}.json").unlink()

    # -- clock event reasons ------------------------------------------------------

    def clock_events(self) -> list[ClockEvents]:
        """Live entries; those of dead processes, or past their expiry, are removed."""
        out = []
        try:
            files = list(os.scandir(self.events))
        except FileNotFoundError:
            return []
        now = time.time()
        for entry in files:
            if not entry.name.endswith(".json"):
                continue
            try:
                doc = json.loads(Path(entry.path).read_text())
                until = doc.get("until")
                e = ClockEvents(
                    pid=int(doc["pid"]),
                    start=float(doc["start"]),
                    reasons={int(k): int(v) for k, v in doc["reasons"].items()},
                    until=None if until is None else float(until),
                )
            except FileNotFoundError:
                continue  # ended while we listed
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a hand-edited file is ignored
            started = _process_start(e.pid)
            if started is None or started != e.start or (e.until is not None and now >= e.until):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            out.append(e)
        return sorted(out, key=lambda e: e.pid)

    def provoke(
        self, index: int, bits: int, seconds: float | None = None, pid: int | None = None
    ) -> None:
        """Make GPU ``index`` report the clock event reasons ``bits`` while ``pid`` (default:
        this process) lives, and for ``seconds`` at most; replaces what ``pid`` provoked before.

        Raises:
            GpuError: no such GPU, or ``pid`` is not running.
            UsageError: no reason, or a duration that is not positive.
        """
        pid = os.getpid() if pid is None else pid
        devices = self.devices()
        if not 0 <= index < len(devices):
            raise GpuError(
                f"there is no simulated GPU {index}; this machine has GPUs 0–{len(devices) - 1} "
                f"({', '.join(d.spec.id for d in devices)})"
            )
        if bits <= 0:
            raise UsageError("name at least one clock event reason, e.g. sw_power_cap")
        if seconds is not None and seconds <= 0:
            raise UsageError(f"a clock event must last a positive time, not {seconds} s")
        started = _process_start(pid)
        if started is None:
            raise GpuError(f"process {pid} is not running; only a live process can throttle")
        until = None if seconds is None else time.time() + seconds
        _write_atomic(
            self.events / f"{pid}.json",
            {"pid": pid, "start": started, "reasons": {str(index): bits}, "until": until},
        )

    def calm(self, pid: int | None = None) -> None:
        """End the clock event reasons ``pid`` provoked (what its exit does anyway)."""
        pid = os.getpid() if pid is None else pid
        with contextlib.suppress(FileNotFoundError):
            (self.events / f"{pid}.json").unlink()

    def _write(
        self,
        pid: int,
        started: float,
        memory: dict[int, int],
        activity: dict[int, float],
        name: str,
    ) -> None:
        _write_atomic(
            self.ledger / f"{pid}.json",
            {
                "pid": pid,
                "start": started,
                "memory": {str(k): v for k, v in memory.items()},
                "activity": {str(k): v for k, v in activity.items()},
                "name": name,
            },
        )


def _write_atomic(path: Path, doc: Any) -> None:
    private_dir(path.parent)
    write_private(path, json.dumps(doc))


class SimBackend:
    """Reads the simulated GPUs of a :class:`SimMachine`."""

    name = "sim"

    def __init__(self, machine: SimMachine, clock: Callable[[], float] = time.monotonic) -> None:
        self.machine = machine
        self._clock = clock
        self._last: float | None = None
        self._energy_mj: dict[int, float] = {}

    def read(self) -> GpuReading:
        devices = self.machine.devices()
        holdings = self.machine.holdings()
        provoked: dict[int, int] = {}
        for e in self.machine.clock_events():
            for index, bits in e.reasons.items():
                provoked[index] = provoked.get(index, 0) | bits
        now = self._clock()
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        out = []
        for d in devices:
            out.append(self._device(d, holdings, dt, provoked.get(d.index, 0)))
        return GpuReading(self.name, tuple(out), driver_version=None)

    def _device(
        self, d: SimDevice, holdings: list[Holding], dt: float, provoked: int
    ) -> DeviceSample:
        """One device's sample; ``provoked``: the clock event reasons a process set on it
        (a power cap draws at the limit, a thermal slowdown runs hot)."""
        spec = d.spec
        procs = tuple(GpuProcess(h.pid, h.memory[d.index]) for h in holdings if d.index in h.memory)
        used = sum(p.used_bytes or 0 for p in procs)
        busy = min(1.0, sum(h.activity.get(d.index, 0.0) for h in holdings))
        limit = spec.power_limit_w or None
        power = None
        if limit is not None:
            idle = 0.1 * limit
            power = limit if provoked & POWER_REASONS else idle + (limit - idle) * 0.9 * busy
            self._energy_mj[d.index] = self._energy_mj.get(d.index, 0.0) + power * dt * 1000
        geforce = "GeForce" in spec.name
        reserved = d.reserved_bytes
        remap = spec.ecc and spec.compute_capability >= (8, 0) and "HBM" in spec.memory_type
        temperature = 32 + 50 * busy
        if provoked & THERMAL_REASONS:
            temperature = max(temperature, SLOWDOWN_TEMP_C)
        return DeviceSample(
            index=d.index,
            name=spec.name,
            uuid=d.uuid,
            pci_bus_id=d.pci_bus_id,
            memory_source="host" if spec.unified_memory else "device",
            memory_total_bytes=d.total_bytes,
            memory_used_bytes=used,
            memory_free_bytes=d.allocatable_bytes - used,
            memory_reserved_bytes=reserved,
            gpu_util_percent=round(100 * busy, 1),
            memory_util_percent=round(60 * busy, 1),
            power_watts=round(power, 2) if power is not None else None,
            power_limit_watts=limit,
            energy_millijoules=round(self._energy_mj.get(d.index, 0.0)) if limit else None,
            temperature_c=round(temperature, 1),
            fan_percent=round(30 + 50 * busy, 1) if geforce else None,
            clock_event_reasons=(0x1 if busy == 0 else 0) | provoked,
            pstate=8 if geforce and busy == 0 and used == 0 else 0,
            ecc_corrected_volatile=0 if spec.ecc else None,
            ecc_uncorrected_volatile=0 if spec.ecc else None,
            remapped_rows_correctable=0 if remap else None,
            remapped_rows_uncorrectable=0 if remap else None,
            remapped_rows_pending=0 if remap else None,
            remapped_rows_failure=0 if remap else None,
            processes=procs,
            catalog_id=spec.id,
        )

    def close(self) -> None:
        return None


def hold(
    machine: SimMachine,
    index: int,
    nbytes: int,
    *,
    worker: bool = False,
    orphan: bool = False,
    seconds: float | None = None,
    on_ready: Callable[[int], None] = lambda pid: None,
) -> None:
    """Hold simulated GPU memory until killed (or for ``seconds``).

    With ``worker``, a forked child holds the memory, as an engine's worker
    process does; the parent waits for it. On SIGTERM the parent stops its
    worker first, unless ``orphan``: then the worker outlives the parent, the
    orphaned-worker failure. ``on_ready`` receives the pid that holds the memory.
    """
    if not worker and not orphan:
        machine.allocate(index, nbytes)
        _until_stopped(seconds, on_ready, machine.release)
        return
    child = machine.hold_in_worker(index, nbytes, seconds=seconds)

    def stop(signum: int, frame: object) -> None:
        if not orphan:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        on_ready(child)
        os.waitpid(child, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def throttle(
    machine: SimMachine,
    index: int,
    bits: int,
    *,
    seconds: float | None = None,
    on_ready: Callable[[int], None] = lambda pid: None,
) -> None:
    """Hold the clock event reasons ``bits`` on simulated GPU ``index`` until killed (or for
    ``seconds``); they end when this process exits, however it exits. ``on_ready`` receives
    this pid once the GPU reports them."""
    machine.provoke(index, bits, seconds)
    _until_stopped(seconds, on_ready, machine.calm)


def _until_stopped(
    seconds: float | None, on_ready: Callable[[int], None], done: Callable[[], None]
) -> None:
    """Tell ``on_ready`` this pid, then wait for SIGTERM (or ``seconds``); ``done`` runs
    however the wait ends."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        on_ready(os.getpid())
        _sleep(seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
        done()


def _sleep(seconds: float | None) -> None:
    if seconds is None:
        while True:
            time.sleep(3600)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)
