"""``labctl models``: the built-in model catalog."""

from __future__ import annotations

import click
from rich.table import Table

from labctl.catalog.models import catalog, catalog_arch, variants
from labctl.cli.output import console, emit_json


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
