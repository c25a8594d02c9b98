"""The host beside the GPUs: CPU, memory, swap, load, and the disk models load from.

Loading weights is often disk-bound (a 60 GB checkpoint at 2 GB/s is 30 s of
startup), so the disk that holds the model cache is read separately: its usage
and the bytes read from its block device.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path

import psutil


def model_cache_dir() -> Path:
    """Where Hugging Face downloads models (``HF_HUB_CACHE``, ``HF_HOME/hub``, or the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


@dataclass(frozen=True)
class HostSample:
    cpu_count: int
    #: Share of all cores busy since the previous sample, 0–1 (``None`` on the first).
    cpu_utilization: float | None
    memory_total_bytes: int
    memory_available_bytes: int
    memory_used_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    load_1m: float
    load_5m: float
    load_15m: float
    cache_path: str
    cache_disk_total_bytes: int | None
    cache_disk_free_bytes: int | None
    #: Block device under the cache and the bytes read from it since boot.
    cache_device: str | None
    cache_read_bytes: int | None


def _existing(path: Path) -> Path:
    """The path itself or its nearest existing parent: the disk a cache will land on."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def _block_device(path: Path) -> str | None:
    """The disk-stats name (``nvme0n1p2``) of the partition mounted under ``path``."""
    try:
        parts = psutil.disk_partitions(all=False)
    except OSError:
        return None
    best = None
    resolved = str(path.resolve())
    for part in parts:
        mount = part.mountpoint.rstrip("/") or "/"
        inside = resolved == mount or resolved.startswith(mount + "/") or mount == "/"
        if (
            inside
            and part.device.startswith("/dev/")
            and (best is None or len(mount) > len(best[0]))
        ):
            best = (mount, part.device)
    if best is None:
        return None
    return os.path.basename(os.path.realpath(str(best[1])))


class HostSampler:
    """Reads the host; keeps what it needs between reads (CPU times)."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir if cache_dir is not None else model_cache_dir()
        self._disk_root = _existing(self.cache_dir)
        self._device = _block_device(self._disk_root)
        psutil.cpu_percent(interval=None)  # start the CPU-time window
        self._primed = False

    def read(self) -> HostSample:
        cpu = psutil.cpu_percent(interval=None)
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        load = os.getloadavg()
        disk_total: int | None = None
        disk_free: int | None = None
        try:
            du = psutil.disk_usage(str(self._disk_root))
            disk_total, disk_free = int(du.total), int(du.free)
        except OSError:
            pass
        read_bytes = None
        if self._device is not None:
            counters = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
            io = counters.get(self._device)
            read_bytes = int(io.read_bytes) if io is not None else None
        primed, self._primed = self._primed, True
        return HostSample(
            cpu_count=psutil.cpu_count() or 1,
            cpu_utilization=cpu / 100.0 if primed else None,
            memory_total_bytes=int(vm.total),
            memory_available_bytes=int(vm.available),
            memory_used_bytes=int(vm.total - vm.available),
            swap_total_bytes=int(sw.total),
            swap_used_bytes=int(sw.used),
            load_1m=load[0],
            load_5m=load[1],
            load_15m=load[2],
            cache_path=str(self.cache_dir),
            cache_disk_total_bytes=disk_total,
            cache_disk_free_bytes=disk_free,
            cache_device=self._device if read_bytes is not None else None,
            cache_read_bytes=read_bytes,
        )


def host_memory() -> tuple[int, int]:
    """Total and available host RAM: what a unified-memory GPU (GB10) can use."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)
