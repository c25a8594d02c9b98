"""The GPU catalog: each GPU's memory, bandwidth, tensor throughput and format support, and
the look-ups by catalog id, by NVML's device name and by a published benchmark's wording.

This is the module callers import. The record (:class:`GpuSpec`, and what its figures mean)
is in :mod:`labctl.catalog.gpuspec`; the table (:data:`GPUS`, with where each figure was
read) in :mod:`labctl.catalog.gputable`. Those two import only :mod:`labctl.units`, and this
module only them and :mod:`labctl.errors`: ``labctl.config`` checks GPU ids against the
catalog before anything starts, an import the layer contract allows for this module alone.
"""

from __future__ import annotations

import re

from labctl.catalog.gpuspec import GpuSpec, architecture
from labctl.catalog.gputable import GPUS
from labctl.errors import CatalogError, did_you_mean
from labctl.units import GiB

__all__ = ["GPUS", "GpuSpec", "architecture", "gpu", "match_nvml_name", "match_published"]

_BY_ID = {g.id: g for g in GPUS}


def gpu(gpu_id: str) -> GpuSpec:
    """Look a GPU up by catalog id (case-insensitive).

    Raises:
        CatalogError: unknown id; the message lists the catalog.
    """
    key = gpu_id.strip().lower()
    if key in _BY_ID:
        return _BY_ID[key]
    raise CatalogError(
        f"unknown GPU {gpu_id!r}.{did_you_mean(key, _BY_ID)} Known GPUs: {', '.join(_BY_ID)}"
    )


def match_nvml_name(name: str, total_bytes: int | None = None) -> GpuSpec | None:
    """The catalog entry for a GPU as NVML names it (None when unknown)."""
    upper = name.upper()
    best: GpuSpec | None = None
    best_len = 0
    for g in GPUS:
        for hint in g.nvml_names:
            if hint.upper() in upper and len(hint) > best_len:
                best, best_len = g, len(hint)
    if best is not None and best.id.startswith("a100") and total_bytes:
        return _BY_ID["a100-80gb" if total_bytes > 50 * GiB else "a100-40gb"]
    return best


def match_published(name: str) -> GpuSpec:
    """The catalog GPU a published benchmark names ("8x NVIDIA H100 SXM", "DGX Spark (GB10)",
    "NVIDIA A100 80GB (form factor not stated)").

    A leading GPU count ("8x ") is dropped; notes in parentheses are read with the name; an
    A100 whose memory the text does not state is taken as the 80 GB part, the one published
    serving benchmarks use.

    Raises:
        CatalogError: no catalog GPU matches; the message lists the catalog.
    """
    text = re.sub(r"^\s*\d+\s*[x×]\s*", "", name)
    if "A100" in text.upper():  # before the name hints: "A10" is a part of "A100"
        forty = re.search(r"40\s*GB", text, re.IGNORECASE)
        return _BY_ID["a100-40gb" if forty else "a100-80gb"]
    spec = match_nvml_name(text)
    if spec is None:
        raise CatalogError(
            f"no catalog GPU matches {name[:80]!r}; name one of: {', '.join(_BY_ID)}"
        )
    return spec
