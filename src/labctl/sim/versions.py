"""What a vLLM version changes in the twin's timing, beyond the memory plan.

The planner (``labctl.fit.vllm``) already gives each version its scheduler
limits (``max_num_seqs``, ``max_num_batched_tokens``) and says whether it
chunks prefills. This module adds what it leaves out and the twin needs:

- the engine: the legacy V0 engine (before 0.8, and forced for 0.8–0.10 on
  GPUs below compute capability 8.0) or V1;
- chunked prefill: V1 always chunks a prompt that does not fit the step's
  token budget and mixes prefill chunks with decodes. V0 chunks only where
  the planner says it turned chunking on (long contexts); otherwise it runs a
  prompt whole, in prefill-only steps that take precedence over decodes;
- per-step and per-sequence overheads: V0's scheduler, input preparation and
  output processing run in the engine's Python loop between GPU steps, which
  V1 moved to a separate process and overlapped. vLLM reports V1 at up to
  1.7× V0's throughput from that alone; the twin charges V0 that factor on the
  fixed overheads (a starting point, not a fit: the published points are all
  V1);
- CUDA graphs: V0 captures graphs for decode batches only, so its steps that
  carry prefill tokens launch every layer's kernels eagerly; V1's piecewise
  graphs cover mixed steps. ``--enforce-eager`` turns graphs off in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.catalog.arch import LayerKind, ModelArch
from labctl.catalog.gpus import GpuSpec
from labctl.errors import UsageError
from labctl.fit.plan import FitResult
from labctl.fit.vllm import LATEST, VllmVersion, default_batching

#: Oldest release series the twin knows (the planner's oldest).
OLDEST = (0, 5)
#: V0's fixed per-step and per-sequence overheads relative to V1's (vLLM's V1 announcement:
#: up to 1.7× the throughput of V0 from lower CPU overhead).
V0_OVERHEAD_FACTOR = 1.7


def known_series() -> list[str]:
    """The release series ``--vllm-version`` accepts, oldest first ("0.5" … LATEST's)."""
    latest = VllmVersion.parse(LATEST)
    return [f"{latest.major}.{m}" for m in range(OLDEST[1], latest.minor + 1)]


def check_version(text: str) -> VllmVersion:
    """Parse ``--vllm-version``, refusing a release outside the series the twin models.

    Raises:
        UsageError: not a version, or not a known series; the message names the known range.
    """
    series = known_series()
    try:
        version = VllmVersion.parse(text)
    except UsageError:
        version = None
    if version is None or f"{version.major}.{version.minor}" not in series:
        raise UsageError(
            f"--vllm-version {text.strip()[:40]!r} is not a vLLM release labctl models; "
            f"use a release from {series[0]}.x to {series[-1]}.x (default {LATEST})"
        )
    return version


@dataclass(frozen=True)
class EngineTiming:
    """The version-dependent parts of the twin's step time and scheduling."""

    version: str
    v0: bool
    #: Prompts longer than the step's remaining budget are split and mixed with decodes.
    chunked_prefill: bool
    #: Multiple of the step model's fixed per-step and per-sequence costs.
    overhead_factor: float
    #: Steps that carry prefill tokens run without CUDA graphs (V0 captures decode only).
    eager_prefill: bool


def engine_timing(arch: ModelArch, fit: FitResult, gpu: GpuSpec) -> EngineTiming:
    """The timing rules of the vLLM version ``fit`` was planned for."""
    version = VllmVersion.parse(fit.vllm_version, "V0" in fit.vllm_version)
    kinds = {layer.kind for layer in arch.kv_layers}
    batching = default_batching(
        version,
        gpu.nvml_total_bytes or gpu.cuda_total_bytes,
        gpu.name,
        fit.max_model_len,
        fit.max_num_seqs,
        fit.max_num_batched_tokens,
        sliding_window=LayerKind.SLIDING in kinds,
        multimodal=arch.multimodal,
        mla=LayerKind.MLA in kinds,
        encoder_decoder=LayerKind.CROSS in kinds,
    )
    return EngineTiming(
        version=str(version),
        v0=version.v0,
        chunked_prefill=batching.chunked_prefill,
        overhead_factor=V0_OVERHEAD_FACTOR if version.v0 else 1.0,
        eager_prefill=version.v0,
    )
