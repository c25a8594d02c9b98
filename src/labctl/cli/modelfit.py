"""Which of the lab's GPUs each model on disk fits: "fits on" in ``labctl models``.

The plan is the one ``labctl fit PATH`` makes with no flags (vLLM's engine at the model's
own context length; OpenVLA's server for OpenVLA checkpoints), read from the snapshot or
file itself. The lab's GPUs are those ``labctl up`` would use: ``lab.sim_gpus`` (the
embedded default: one simulated RTX 3090), else what NVML sees, else the simulated GPUs of
``$LABCTL_HOME``; ``--gpu`` names catalog GPUs instead. One entry's failure to plan is a note
on that entry; the rest still plan, within a time budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
import time

from labctl.cache.entry import CacheEntry
from labctl.catalog.arch import ModelArch
from labctl.catalog.gguf import arch_from_gguf, read_gguf
from labctl.catalog.gpus import GpuSpec, gpu, match_nvml_name
from labctl.catalog.hf import load_hf_dir
from labctl.config import LabConfig, sim_gpu_ids, state_dir
from labctl.engines.openvla import oft
from labctl.errors import ConfigError, GpuError, LabError, UsageError
from labctl.fit.openvla import is_openvla, plan_openvla
from labctl.fit.plan import FitRequest, plan

#: Seconds the whole listing may spend planning; entries past it get a note instead.
PLAN_BUDGET_S = 30.0


@dataclass(frozen=True)
class LabGpu:
    """One GPU of the lab as ``fits_on`` names it: ``"0: rtx-3090"``."""

    label: str
    request: FitRequest


def lab_gpus(config: LabConfig, gpu_ids: Sequence[str]) -> list[LabGpu]:
    """The GPUs to plan for: ``--gpu`` ids, else the lab's.

    Raises:
        UsageError: a malformed list.
        CatalogError: an id is not in the GPU catalog (with close matches).
    """
    if gpu_ids:
        return [_catalog(i, gpu(g)) for i, g in enumerate(_ids(",".join(gpu_ids), "--gpu"))]
    if config.sim_gpus:
        sims = _ids(config.sim_gpus, "lab.sim_gpus")
        return [_catalog(i, gpu(g)) for i, g in enumerate(sims)]
    if config.gpu_backend in ("auto", "nvml"):
        found = _nvml()
        if found or config.gpu_backend == "nvml":
            return found
    from labctl.gpu.sim import DEFAULT_SIM_GPUS, SimMachine

    try:
        sims = SimMachine(state_dir()).configured() or list(DEFAULT_SIM_GPUS)
    except GpuError:
        sims = list(DEFAULT_SIM_GPUS)
    return [_catalog(i, gpu(g)) for i, g in enumerate(sims)]


def _ids(text: str, where: str) -> list[str]:
    """``rtx-3090,h200`` or ``4xh100-sxm``: catalog ids, one per GPU (lab.sim_gpus' grammar)."""
    try:
        return sim_gpu_ids(text, where)
    except ConfigError as exc:
        raise UsageError(exc.message) from None


def _catalog(index: int, spec: GpuSpec) -> LabGpu:
    return LabGpu(f"{index}: {spec.id}", FitRequest.on_gpu(spec))


def _nvml() -> list[LabGpu]:
    """The GPUs NVML sees (none without a driver), as ``labctl fit`` plans for them."""
    from labctl.errors import GpuUnavailable
    from labctl.gpu.nvml import read_devices

    try:
        devices = read_devices()
    except GpuUnavailable:
        return []
    out = []
    for d in devices:
        spec = match_nvml_name(d.name, d.memory_total_bytes)
        total = d.cuda_total_bytes or (spec.cuda_total_bytes if spec else d.memory_total_bytes)
        if not total:
            continue
        req = FitRequest.on_gpu(
            spec, **({} if spec else {"gpu_name": d.name}), gpu_total_bytes=total,
            gpu_nvml_total_bytes=d.memory_total_bytes or total,
        )  # fmt: skip
        out.append(LabGpu(f"{d.index}: {spec.id if spec else d.name}", req))
    return out


@dataclass(frozen=True)
class Fit:
    """Where one entry fits, or why it was not planned."""

    fits_on: tuple[str, ...]
    note: str | None = None


def fits_on(
    entries: Sequence[CacheEntry],
    gpus: Sequence[LabGpu],
    budget_s: float = PLAN_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
) -> list[Fit]:
    """Plan each entry on each distinct GPU; one entry's failure never stops the others."""
    by_request: dict[FitRequest, list[str]] = {}
    for g in gpus:
        by_request.setdefault(g.request, []).append(g.label)
    deadline = clock() + budget_s
    out = []
    for e in entries:
        if e.plan_path is None:
            out.append(Fit((), "nothing to plan from (no config.json or whole GGUF file)"))
            continue
        if clock() > deadline:
            out.append(Fit((), f"not planned: the {budget_s:g} s budget ran out; "
                               f"`labctl fit {e.plan_path}` plans it"))  # fmt: skip
            continue
        out.append(_fit(e, e.plan_path, by_request))
    return out


def _fit(e: CacheEntry, path: Path, by_request: dict[FitRequest, list[str]]) -> Fit:
    try:
        arch = _arch(path, e.repo_id)
        labels: list[str] = []
        for req, names in by_request.items():
            if _fits(arch, req):
                labels += names
    except LabError as exc:
        return Fit((), f"not planned: {exc}")
    except Exception as exc:  # one model the planner trips on must not hide the others
        return Fit((), f"not planned: the planner failed ({type(exc).__name__}: {exc})")
    return Fit(tuple(sorted(labels, key=_index)))


def _index(label: str) -> int:
    return int(label.split(":", 1)[0])


def _arch(path: Path, name: str) -> ModelArch:
    if path.is_dir():
        return load_hf_dir(path, name)
    return arch_from_gguf(read_gguf(path), name)


def _fits(arch: ModelArch, req: FitRequest) -> bool:
    if is_openvla(arch):
        return plan_openvla(arch, req.gpu_total_bytes, 16, oft(arch.name)).fits
    return plan(arch, req, suggest=False).fits
