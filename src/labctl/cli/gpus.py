"""``labctl gpus``: the GPUs this machine has (real or simulated), who holds their memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from labctl.catalog.gpus import GPUS, GpuSpec
from labctl.cli.output import console, emit_json, warn
from labctl.config import state_dir
from labctl.errors import ConfigError, GpuError, UsageError
from labctl.gpu import BACKENDS, open_backend
from labctl.gpu.sample import CLOCK_EVENT_REASONS, DeviceSample
from labctl.telemetry.attribution import UNACCOUNTED, GpuOwners, attribute, read_owners
from labctl.units import GiB, format_bytes


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def _bytes(v: int | None) -> str:
    return "—" if v is None else format_bytes(v)


def _catalog_doc(g: GpuSpec) -> dict[str, Any]:
    return {
        "id": g.id,
        "name": g.name,
        "nvml_total_bytes": g.nvml_total_bytes,
        "cuda_total_bytes": g.cuda_total_bytes,
        "memory": g.memory_type,
        "bandwidth_gbs": g.bandwidth_gbs,
        "bf16_tflops": g.bf16_tflops,
        "fp8_tflops": g.fp8_tflops,
        "fp4_tflops": g.fp4_tflops,
        "compute_capability": ".".join(map(str, g.compute_capability)),
        "fp8": g.fp8,
        "fp4": g.fp4,
        "unified_memory": g.unified_memory,
        "power_limit_w": g.power_limit_w,
        "derived": list(g.derived),
        "sources": list(g.sources),
    }


def _throttle(d: DeviceSample) -> list[str]:
    if d.clock_event_reasons is None:
        return []
    return [name for bit, name in CLOCK_EVENT_REASONS if d.clock_event_reasons & bit]


def _device_doc(d: DeviceSample, owned: GpuOwners | None) -> dict[str, Any]:
    procs = owned.processes if owned else ()
    return {
        "index": d.index,
        "name": d.name,
        "uuid": d.uuid,
        "pci_bus_id": d.pci_bus_id,
        "catalog_id": d.catalog_id,
        "memory_source": d.memory_source,
        "total_bytes": d.memory_total_bytes,
        "used_bytes": d.memory_used_bytes,
        "free_bytes": d.memory_free_bytes,
        "reserved_bytes": d.memory_reserved_bytes,
        "cuda_total_bytes": d.cuda_total_bytes,
        "utilization_percent": d.gpu_util_percent,
        "power_watts": d.power_watts,
        "power_limit_watts": d.power_limit_watts,
        "temperature_c": d.temperature_c,
        "clock_event_reasons": _throttle(d),
        "processes": [
            {
                "pid": p.pid,
                "process": p.process,
                "deployment": p.deployment,
                "used_bytes": p.used_bytes,
            }
            for p in procs
        ],
        "by_deployment": dict(owned.by_deployment) if owned else {},
        "unaccounted_bytes": owned.unaccounted_bytes if owned else None,
    }


@click.command()
@click.option(
    "--gpu-backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="real GPUs through NVML, the simulated GPUs of $LABCTL_HOME, or NVML when it sees a GPU",
)
@click.option(
    "--sim-gpus",
    metavar="GPUS",
    help="replace the simulated GPUs of $LABCTL_HOME first, e.g. 1xh100-sxm or "
    "rtx-3090,rtx-3090 (catalog ids; refused while a process holds their memory)",
)
@click.option("--catalog", "show_catalog", is_flag=True, help="also show the GPU catalog")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def gpus(gpu_backend: str, sim_gpus: str | None, show_catalog: bool, as_json: bool) -> None:
    """GPUs on this machine, real or simulated, with the memory each process holds and its owner.

    The totals are what the device reports (NVML's, as nvidia-smi shows them); CUDA, and so
    vLLM, sees the driver's reservation less (`--json`: cuda_total_bytes).
    """
    home = state_dir()
    backend = open_backend(gpu_backend, home, _sim_machine(home, sim_gpus))
    try:
        reading = backend.read()
    finally:
        backend.close()
    try:
        owners = read_owners(home / "owners.json")
    except ConfigError as exc:
        warn(f"deployment owners unknown: {exc}")
        owners = {}
    owned = attribute(reading, owners)
    if as_json:
        emit_json(
            {
                "backend": reading.backend,
                "driver_version": reading.driver_version,
                "devices": [_device_doc(d, owned.get(d.index)) for d in reading.devices],
                "catalog": [_catalog_doc(g) for g in GPUS],
            }
        )
        return
    out = console()
    title = "simulated GPUs ($LABCTL_HOME)" if reading.backend == "sim" else "GPUs (NVML)"
    if reading.driver_version:
        title += f" · driver {reading.driver_version}"
    t = Table(title=title)
    for col in ("gpu", "name", "used", "total", "util", "power", "temp", "held by"):
        t.add_column(
            col, justify="right" if col in ("used", "total", "util", "power", "temp") else "left"
        )
    for d in reading.devices:
        o = owned.get(d.index)
        holders = []
        for p in o.processes if o else ():
            who = p.deployment or UNACCOUNTED
            holders.append(f"{p.pid} {p.process or '?'} [{who}] {_bytes(p.used_bytes)}")
        if o and o.unaccounted_bytes:
            holders.append(f"unaccounted {_bytes(o.unaccounted_bytes)}")
        power = (
            f"{d.power_watts:.0f}/{d.power_limit_watts:.0f} W"
            if d.power_watts is not None and d.power_limit_watts
            else "—"
        )
        throttle = [r for r in _throttle(d) if r != "gpu_idle"]
        t.add_row(
            str(d.index),
            d.name + (" (unified memory)" if d.memory_source == "host" else ""),
            _bytes(d.memory_used_bytes),
            _bytes(d.memory_total_bytes),
            "—" if d.gpu_util_percent is None else f"{d.gpu_util_percent:.0f}%",
            power,
            ("—" if d.temperature_c is None else f"{d.temperature_c:.0f}°C")
            + (f" ({', '.join(throttle)})" if throttle else ""),
            "\n".join(holders) or "nothing",
        )
    out.print(t)
    if show_catalog:
        _print_catalog()


def _sim_machine(home: Path, text: str | None) -> list[GpuSpec] | None:
    """``--sim-gpus``: the GPUs to simulate, unless a live process holds memory on the
    machine it would replace (the driver does not swap a card under a process either).

    Raises:
        UsageError: a bad list, or a process holds simulated memory.
    """
    if text is None:
        return None
    from labctl.gpu.sim import SimMachine, describe, parse_sim_gpus

    specs = parse_sim_gpus(text)
    machine = SimMachine(home)
    held = machine.holdings()
    try:
        found = machine.configured()
    except GpuError:  # a damaged device list: this replaces it
        found = None
    if held and found != [s.id for s in specs]:
        h = held[0]
        raise UsageError(
            f"--sim-gpus {text}: pid {h.pid} ({h.name or 'a process'}) holds memory on the "
            f"simulated {describe(found or [])} in {machine.dir}; stop it first (`labctl gpus` "
            "lists the holders), or use another LABCTL_HOME"
        )
    return specs


def _print_catalog() -> None:
    t = Table(title="GPU catalog (dense tensor TFLOPS; * derived)")
    for col in ("id", "name", "memory (NVML / CUDA)", "bandwidth", "BF16", "FP8", "FP4", "CC",
                "power"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("id", "name") else "right")
    for g in GPUS:

        def star(field: str, derived: tuple[str, ...] = g.derived) -> str:
            return "*" if field in derived else ""

        t.add_row(
            g.id,
            g.name,
            ("—" if g.nvml_total_bytes is None else f"{g.nvml_total_bytes / GiB:.2f}")
            + f" / {g.cuda_total_bytes / GiB:.2f} GiB{star('cuda_total_bytes')}",
            f"{g.bandwidth_gbs:g} GB/s",
            _fmt(g.bf16_tflops) + star("bf16_tflops"),
            _fmt(g.fp8_tflops) + star("fp8_tflops"),
            _fmt(g.fp4_tflops) + star("fp4_tflops"),
            ".".join(map(str, g.compute_capability)),
            f"{g.power_limit_w:g} W",
        )
    console().print(t)
