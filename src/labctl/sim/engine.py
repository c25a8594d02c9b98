"""The twin's engine: a model planned on a GPU, its step-time model and its scheduler.

The KV cache the twin schedules over is exactly what ``labctl fit`` prints for
the same model, GPU and flags: the same planner computes it, and its layout (how
a hybrid model's layer groups take the pool's blocks) is what the scheduler
charges each request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from labctl.cache.resolve import resolve_model
from labctl.catalog.arch import ModelArch
from labctl.catalog.gpus import GpuSpec, gpu
from labctl.errors import EngineError, UsageError
from labctl.fit.plan import FitRequest, FitResult, plan
from labctl.fit.vllm import LATEST
from labctl.sim.perf import PerfModel
from labctl.sim.scheduler import Scheduler
from labctl.sim.versions import EngineTiming, check_version, engine_timing
from labctl.units import GiB


@dataclass(frozen=True)
class TwinConfig:
    """The vLLM flags the twin honours."""

    model: str
    gpu: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    #: ``--enable-prefix-caching`` / ``--no-enable-prefix-caching``; ``None``: vLLM's default
    #: (on for the V1 engine, off for V0 and for models with recurrent state).
    enable_prefix_caching: bool | None = None
    vllm_version: str = LATEST
    served_model_name: str | None = None
    #: API server processes (``--api-server-count``): requests are spread over them, and
    #: each takes in and streams only its own.
    api_server_count: int = 1
    #: ``--async-scheduling`` / ``--no-async-scheduling``; ``None``: the version's default.
    async_scheduling: bool | None = None


@dataclass(frozen=True)
class Twin:
    config: TwinConfig
    arch: ModelArch
    gpu: GpuSpec
    fit: FitResult
    perf: PerfModel
    timing: EngineTiming

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or self.config.model

    @property
    def encoder_positions(self) -> int:
        """Encoder positions one request's clip takes (Whisper: 1,500); 0 for text models."""
        return self.arch.encoder_positions

    @property
    def speech(self) -> bool:
        """Whether it serves speech to text (an encoder-decoder audio model) rather than text."""
        return self.arch.encoder_positions > 0

    @property
    def prefix_caching(self) -> bool:
        """Whether the engine caches prompt prefixes: as asked, else vLLM's default, on for
        the V1 engine (not for a model with recurrent state, whose cache it does not share);
        never for a speech model's requests."""
        if self.speech:
            return False
        if self.config.enable_prefix_caching is not None:
            return self.config.enable_prefix_caching
        return not self.timing.v0 and not self.perf.state_bytes_per_sequence

    def scheduler(self) -> Scheduler:
        fit = self.fit
        positions = self.encoder_positions
        layout = fit.kv_layout
        held = None
        if positions:
            # Self- and cross-attention each take blocks of the one pool (two KV groups).
            blocks = max(1, fit.num_gpu_blocks)
        elif layout is not None and not layout.uniform:
            # A hybrid model's groups take blocks of the one pool each at their own pace.
            blocks, held = max(1, fit.num_gpu_blocks), layout.blocks_held
        else:
            blocks = max(1, fit.kv_cache_tokens // fit.block_size)
        return Scheduler(
            num_blocks=blocks,
            block_size=fit.block_size,
            max_num_seqs=fit.max_num_seqs,
            max_num_batched_tokens=fit.max_num_batched_tokens,
            window=self.perf.window,
            chunked=self.perf.chunked,
            prefix_caching=self.prefix_caching,
            encoder_budget=max(fit.max_num_batched_tokens, positions) if positions else 0,
            chunked_prefill=self.timing.chunked_prefill,
            keep_preempted=not self.timing.v0,
            blocks_held=held,
        )


def not_fitting_message(fit: FitResult) -> str:
    """What vLLM says when the model or its context does not fit (its own wording)."""
    if fit.kv_cache_bytes <= 0:
        return (
            "ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine."
        )
    needed = fit.kv_bytes_per_sequence / GiB
    return (
        f"ValueError: To serve at least one request with the models's max seq len "
        f"({fit.max_model_len}), ({needed:.2f} GiB KV cache is needed, which is larger than "
        f"the available KV cache memory ({fit.kv_cache_bytes / GiB:.2f} GiB). Based on the "
        f"available memory, the estimated maximum model length is {fit.max_model_len_fit}. "
        "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine."
    )


def build_twin(config: TwinConfig) -> Twin:
    """Plan the model on the GPU and build its perf model.

    Raises:
        CatalogError: unknown model or GPU.
        UsageError: a flag value cannot work, or the vLLM version is not one labctl models.
        EngineError: the model does not fit; the message is vLLM's.
    """
    check_version(config.vllm_version)
    if config.api_server_count < 1:
        raise UsageError(
            f"--api-server-count {config.api_server_count}: give 1 or more API server processes"
        )
    arch = resolve_model(config.model)
    spec = gpu(config.gpu)
    req = FitRequest.on_gpu(
        spec,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_dtype=config.kv_cache_dtype,
        quantization=config.quantization,
        enforce_eager=config.enforce_eager,
        enable_prefix_caching=config.enable_prefix_caching,
        vllm_version=config.vllm_version,
    )
    fit = plan(arch, req, suggest=False)
    if not fit.fits:
        raise EngineError(not_fitting_message(fit))
    timing = engine_timing(arch, fit, spec, config.async_scheduling)
    perf = replace(
        PerfModel.build(arch, fit, spec),
        overhead_factor=timing.overhead_factor,
        eager_prefill=timing.eager_prefill,
        async_scheduling=timing.async_scheduling,
    )
    return Twin(config, arch, spec, fit, perf, timing)
