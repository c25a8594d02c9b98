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
  graphs cover mixed steps. ``--enforce-eager`` turns graphs off in both;
- async scheduling (V1, ``--async-scheduling``; on by default from
  :data:`ASYNC_DEFAULT_SINCE`): the engine schedules step N+1 and processes step
  N's output while the GPU runs step N, so a step takes the longer of its GPU and
  CPU parts instead of their sum. vLLM runs pipeline parallelism without it.
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
#: First release with ``--async-scheduling`` (experimental, vllm#19970), and the first
#: with it on unless ``--no-async-scheduling`` (vllm#27614).
ASYNC_SINCE = "0.10.0"
ASYNC_DEFAULT_SINCE = "0.14.0"


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
    #: The CPU's part of each step overlaps the GPU's (``--async-scheduling``).
    async_scheduling: bool = False


def engine_timing(
    arch: ModelArch, fit: FitResult, gpu: GpuSpec, async_scheduling: bool | None = None
) -> EngineTiming:
    """The timing rules of the vLLM version ``fit`` was planned for; ``async_scheduling``:
    the flag as given (``None``: the version's default)."""
    version = VllmVersion.parse(fit.vllm_version, "V0" in fit.vllm_version)
    kinds = {layer.kind for layer in arch.kv_layers}
    encoder_decoder = LayerKind.CROSS in kinds
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
        encoder_decoder=encoder_decoder,
    )
    return EngineTiming(
        version=str(version),
        v0=version.v0,
        chunked_prefill=batching.chunked_prefill,
        overhead_factor=V0_OVERHEAD_FACTOR if version.v0 else 1.0,
        eager_prefill=version.v0,
        # The speech twin's constants were fitted with a step's parts summed
        # (benchmarks/twin_speech.py): encoder-decoder models keep that.
        async_scheduling=not encoder_decoder
        and uses_async_scheduling(version, fit.pipeline_parallel_size, async_scheduling),
    )


def uses_async_scheduling(version: VllmVersion, pp: int, flag: bool | None) -> bool:
    """Whether the engine schedules ahead of the GPU: the flag, else the version's default;
    never on V0 or with pipeline parallelism (vLLM turned it off there when it made it the
    default).

    Raises:
        UsageError: ``--async-scheduling`` for a release before the flag existed.
    """
    if flag and version.key < VllmVersion.parse(ASYNC_SINCE).key:
        raise UsageError(
            f"--async-scheduling: vLLM {version} has no async scheduling (it came in "
            f"{ASYNC_SINCE}); drop the flag or pass --vllm-version {ASYNC_SINCE} or later"
        )
    if version.v0 or pp > 1:
        return False
    if flag is not None:
        return flag
    return version.key >= VllmVersion.parse(ASYNC_DEFAULT_SINCE).key
