"""``labctl models disk``: the sequential read rate of the filesystem holding the model cache."""

from __future__ import annotations

from pathlib import Path

import click

from labctl.cache import disk as cachedisk
from labctl.cache.location import hub_cache_dir
from labctl.cli.output import console, emit_json
from labctl.config import load_config, state_dir
from labctl.deploy.loadpath import LOADER_GBPS
from labctl.errors import UsageError
from labctl.units import parse_size

_METHODS = {
    "o_direct": "cold (O_DIRECT)",
    "fadvise": "cold (its pages dropped with posix_fadvise DONTNEED first)",
    "page_cache": "warm: this filesystem takes neither O_DIRECT nor posix_fadvise, so the "
    "figure is the page cache's, not the disk's",
}


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise UsageError(f"--max-bytes: {exc}") from None
    if size < 4096:
        raise UsageError(f"--max-bytes {value}: give at least 4 KiB, e.g. 256MiB or 1GiB")
    return size


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--max-bytes", default="1GiB", show_default=True, callback=_size,
              help="read at most this much (e.g. 256MiB, 2GB)")  # fmt: skip
@click.option("--max-seconds", type=float, default=cachedisk.MAX_SECONDS, show_default=True,
              help="read for at most this long")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml whose [models] hf_cache names the cache")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def disk(
    path: Path | None, max_bytes: int, max_seconds: float, config_path: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Measure how fast the disk holding the model cache reads, cold.

    PATH (default: the Hugging Face hub cache, or its nearest existing parent) is a file to
    read, or a directory: its largest file is read, or, where it holds none of 64 MiB or more,
    a temporary file is written there, synced, dropped from the page cache, read and removed.
    Network filesystems and RAM (tmpfs) are flagged. A cold figure is kept in $LABCTL_HOME
    for the lab's predictions of how long a start takes.
    """
    if max_seconds <= 0:
        raise UsageError(f"--max-seconds {max_seconds:g}: give a positive number of seconds")
    target = path if path is not None else _default_path(config_path)
    if not target.exists():
        raise cachedisk.DiskError(
            f"{target}: no such file or directory; give a path on the disk to measure"
        )
    mount = cachedisk.mount_of(target)
    largest = target if target.is_file() else cachedisk.largest_file(target)
    if largest is not None and (
        target.is_file() or largest.stat().st_size >= cachedisk.MIN_FILE_BYTES
    ):
        reading = cachedisk.read_cold(largest, max_bytes, max_seconds)
    else:
        size = min(max_bytes, cachedisk.TEMP_BYTES)
        reading = cachedisk.write_and_read(target, size, max_seconds)
    cold = reading.cold(mount)
    saved = cachedisk.save(state_dir(), mount, reading) if cold else None
    rate = reading.bytes_per_second / 1e9
    doc = {"path": str(target), "mount": mount.doc() if mount else None,
           "flags": mount.flags() if mount else [], **reading.doc(), "cold": cold,
           "loader_gbps": LOADER_GBPS,
           "bound": None if not cold else "disk" if rate < LOADER_GBPS else "loader",
           "saved": str(saved) if saved else None}  # fmt: skip
    if as_json:
        emit_json(doc)
        return
    out = console()
    where = f"{mount.fs_type} on {mount.source} (mounted at {mount.mount_point})" if mount else "?"
    out.print(f"{target}: {where}")
    if path is None and target != (cache := _hub_cache(config_path)):
        out.print(f"(the hub cache {cache} does not exist yet: this is the disk it will be on)")
    what = "a temporary file" if reading.temporary else _shown(Path(reading.file), target)
    out.print(f"read {reading.bytes / 1e9:.2f} GB of {what} in {reading.seconds:.2f} s: "
              f"{rate:.2f} GB/s, {'from memory' if mount and mount.ram else _METHODS[reading.method]}")  # fmt: skip
    for flag in doc["flags"]:
        out.print(f"note: {flag}")
    if cold:
        how = (f"slower than vLLM's default loader (about {LOADER_GBPS} GB/s): starts are "
               "disk-bound" if rate < LOADER_GBPS else f"faster than vLLM's default loader "
               f"(about {LOADER_GBPS} GB/s), which then sets the pace")  # fmt: skip
        out.print(f"{how}; 10 GB of weights load in about {10 / min(rate, LOADER_GBPS):.1f} s")
        out.print(f"kept for the lab's start predictions in {saved}")


def _shown(file: Path, target: Path) -> str:
    if file == target:
        return file.name
    try:
        return str(file.relative_to(target))
    except ValueError:
        return str(file)


def _hub_cache(config_path: Path | None) -> Path:
    """The hub cache, as lab.toml or the environment names it."""
    return hub_cache_dir(load_config(config_path, check_host=False).models if config_path else None)


def _default_path(config_path: Path | None) -> Path:
    """The hub cache, or its nearest existing parent (the disk it will be on)."""
    where = _hub_cache(config_path)
    while not where.exists() and where != where.parent:
        where = where.parent
    return where
