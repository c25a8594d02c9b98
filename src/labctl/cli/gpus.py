"""``labctl gpus`` and ``labctl models``: what labctl knows about."""

from __future__ import annotations

import click
from rich.table import Table

from labctl.catalog.gpus import GPUS, match_nvml_name
from labctl.catalog.models import catalog, catalog_arch, variants
from labctl.cli.output import console, emit_json
from labctl.errors import GpuUnavailable
from labctl.units import GiB, format_bytes


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def gpus(as_json: bool) -> None:
    """The GPU catalog and, where NVML is present, the real GPUs."""
    try:
        from labctl.gpu.nvml import read_devices

        devices = read_devices()
        nvml_error = None
    except GpuUnavailable as exc:
        devices, nvml_error = [], str(exc)
    if as_json:
        emit_json(
            {
                "catalog": [
                    {
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
                        "derived": list(g.derived),
                        "sources": list(g.sources),
                    }
                    for g in GPUS
                ],
                "devices": [
                    {
                        "index": d.index,
                        "name": d.name,
                        "uuid": d.uuid,
                        "pci_bus_id": d.pci_bus_id,
                        "total_bytes": d.total_bytes,
                        "used_bytes": d.used_bytes,
                        "free_bytes": d.free_bytes,
                        "reserved_bytes": d.reserved_bytes,
                        "catalog_id": (
                            m.id if (m := match_nvml_name(d.name, d.total_bytes)) else None
                        ),
                    }
                    for d in devices
                ],
                "nvml": nvml_error or "ok",
            }
        )
        return
    out = console()
    t = Table(title="GPU catalog (dense tensor TFLOPS; * derived)")
    for col in ("id", "name", "memory (CUDA)", "bandwidth", "BF16", "FP8", "FP4", "CC"):
        t.add_column(col, justify="left" if col in ("id", "name") else "right")
    for g in GPUS:

        def star(field: str, derived: tuple[str, ...] = g.derived) -> str:
            return "*" if field in derived else ""

        t.add_row(
            g.id,
            g.name,
            f"{g.cuda_total_bytes / GiB:.2f} GiB{star('cuda_total_bytes')}",
            f"{g.bandwidth_gbs:g} GB/s",
            _fmt(g.bf16_tflops) + star("bf16_tflops"),
            _fmt(g.fp8_tflops) + star("fp8_tflops"),
            _fmt(g.fp4_tflops) + star("fp4_tflops"),
            ".".join(map(str, g.compute_capability)),
        )
    out.print(t)
    if devices:
        d_t = Table(title="GPUs on this machine (NVML)")
        for col in ("index", "name", "total", "used", "free", "catalog"):
            d_t.add_column(col)
        for d in devices:
            m = match_nvml_name(d.name, d.total_bytes)
            d_t.add_row(
                str(d.index),
                d.name,
                format_bytes(d.total_bytes) if d.total_bytes is not None else "not reported",
                format_bytes(d.used_bytes) if d.used_bytes is not None else "—",
                format_bytes(d.free_bytes) if d.free_bytes is not None else "—",
                m.id if m else "—",
            )
        out.print(d_t)
    else:
        out.print(f"no real GPUs: {nvml_error}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def models(as_json: bool) -> None:
    """The built-in model catalog and the quantized variants it knows by name."""
    entries = [(e, catalog_arch(e.id)) for e in catalog()]
    quantized = [(v, catalog_arch(v.id)) for v in variants()]
    if as_json:
        emit_json(
            {
                "models": [
                    {
                        "id": e.id,
                        "family": e.family,
                        "params": a.param_count,
                        "active_params": a.active_param_count,
                        "max_position_embeddings": a.max_position_embeddings,
                        "aliases": list(e.aliases),
                        "seed": e.seed,
                        "source": e.source,
                    }
                    for e, a in entries
                ],
                "variants": [
                    {"id": v.id, "base": v.base, "format": a.quant.method if a.quant else None}
                    for v, a in quantized
                ],
            }
        )
        return
    out = console()
    t = Table(
        title="model catalog (* seed models; repo ids that name a format also resolve, e.g. ...-FP8, ...-AWQ)"
    )
    for col in ("id", "family", "params", "active", "context"):
        t.add_column(col, justify="right" if col in ("params", "active", "context") else "left")
    for e, a in entries:
        t.add_row(
            e.id + (" *" if e.seed else ""),
            e.family,
            f"{a.param_count / 1e9:.1f}B",
            f"{a.active_param_count / 1e9:.1f}B",
            f"{a.max_position_embeddings:,}",
        )
    out.print(t)
    v_t = Table(title="published quantized variants")
    for col in ("id", "base", "format"):
        v_t.add_column(col)
    for v, a in quantized:
        v_t.add_row(v.id, v.base, a.quant.method if a.quant else "-")
    out.print(v_t)
