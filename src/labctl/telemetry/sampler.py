"""The sampler: one thread reads the GPUs and the host once per interval.

GPU reads block (NVML calls, the simulated ledger on disk), so they never run
on a scrape or request: scrapes, the page and the deploy controller read
:attr:`Sampler.latest`, which is replaced whole after each tick, or ask for a
fresher one (:meth:`Sampler.fresh`); the sampler is the backend's one reader. A failed GPU read keeps the last good reading (with its
age) and marks the GPUs down; the collector stops serving readings that have
gone stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
import logging
import threading
import time

from labctl.errors import GpuError, LabError
from labctl.gpu.host import HostSample, HostSampler
from labctl.gpu.sample import GpuBackend, GpuReading
from labctl.telemetry.attribution import GpuOwners, attribute

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Everything one tick read."""

    #: Wall-clock and monotonic time at the end of the tick.
    taken_at: float
    monotonic: float
    duration_s: float
    #: The last good GPU reading (possibly from an earlier tick) and when it was taken.
    reading: GpuReading | None
    reading_monotonic: float | None
    #: Whether this tick's GPU read succeeded, and why not.
    gpu_ok: bool
    gpu_error: str | None
    owners: dict[int, GpuOwners] = field(default_factory=dict)
    host: HostSample | None = None
    host_error: str | None = None
    owners_error: str | None = None
    #: The sampler's counters as of this snapshot.
    samples_total: int = 0
    errors_total: dict[str, int] = field(default_factory=dict)


class Sampler:
    """Reads ``backend`` and ``host`` every ``interval`` seconds on a thread.

    Args:
        backend: the GPUs (NVML or simulated).
        host: the host reader, or ``None`` to skip host metrics.
        owners: returns the pid → deployment table at each tick.
        interval: seconds between ticks.
    """

    def __init__(
        self,
        backend: GpuBackend,
        host: HostSampler | None,
        owners: Callable[[], Mapping[int, str]] = dict,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.backend = backend
        self.host = host
        self.owners = owners
        self.interval = interval
        self.clock = clock
        self._wall = wall
        self.latest: Snapshot | None = None
        self.samples_total = 0
        self.errors_total: dict[str, int] = {"gpu": 0, "host": 0, "owners": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample_once(self) -> Snapshot:
        """Take one snapshot now and publish it."""
        with self._lock:
            return self._sample()

    async def fresh(self, max_age: float = 0.05) -> GpuReading:
        """A GPU reading at most ``max_age`` s old: the latest snapshot, or a new one taken in
        a worker thread (a release wait asks at 20 Hz; the backend still has one reader at a
        time, the sampler).

        Raises:
            GpuError: the GPUs cannot be read now.
        """
        snap = self.latest
        at = snap.reading_monotonic if snap is not None else None
        if snap is None or not snap.gpu_ok or at is None or self.clock() - at > max_age:
            snap = await asyncio.to_thread(self.sample_once)
        if snap.reading is None or not snap.gpu_ok:
            raise GpuError(f"the GPUs cannot be read: {snap.gpu_error}")
        return snap.reading

    def _sample(self) -> Snapshot:
        start = self.clock()
        prev = self.latest
        reading, reading_at = (prev.reading, prev.reading_monotonic) if prev else (None, None)
        gpu_error = None
        try:
            reading = self.backend.read()
            reading_at = self.clock()
        except (LabError, OSError) as exc:
            gpu_error = str(exc)
            self.errors_total["gpu"] += 1
        owners_error = None
        try:
            table = dict(self.owners())
        except (LabError, OSError) as exc:
            owners_error, table = str(exc), {}
            self.errors_total["owners"] += 1
        attributed = attribute(reading, table) if reading is not None else {}
        host, host_error = None, None
        if self.host is not None:
            try:
                host = self.host.read()
            except OSError as exc:
                host_error = str(exc)
                self.errors_total["host"] += 1
        end = self.clock()
        snap = Snapshot(
            taken_at=self._wall(),
            monotonic=end,
            duration_s=end - start,
            reading=reading,
            reading_monotonic=reading_at,
            gpu_ok=gpu_error is None,
            gpu_error=gpu_error,
            owners=attributed,
            host=host,
            host_error=host_error,
            owners_error=owners_error,
            samples_total=self.samples_total + 1,
            errors_total=dict(self.errors_total),
        )
        self.samples_total += 1
        self.latest = snap
        return snap

    def _run(self) -> None:
        next_tick = self.clock()
        while True:
            next_tick += self.interval
            delay = next_tick - self.clock()
            if delay < 0:  # fell behind (a slow read): skip the missed ticks
                next_tick, delay = self.clock(), 0.0
            if self._stop.wait(delay):
                return
            try:
                self.sample_once()
            except Exception:  # the sampler must outlive any one bad read
                log.exception("telemetry sample failed")

    def start(self) -> None:
        """Take a first snapshot, then keep sampling on a daemon thread."""
        if self._thread is not None:
            return
        if self.latest is None:
            self.sample_once()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="labctl-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
