"""The memory plan: does a model fit, at what context and concurrency, and if
not, what to change.

:func:`plan` is a pure function of a :class:`ModelArch` and a
:class:`FitRequest`; it never touches a GPU or a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import math
from typing import Any

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, QuantInfo
from labctl.catalog.formats import format_named
from labctl.catalog.gpus import GpuSpec
from labctl.errors import FitError, UsageError
from labctl.fit.encdec import EncoderDecoderPlan, plan_encoder_decoder
from labctl.fit.kv import KVLayout, KVOptions, dtype_bytes, layer_caches, plan_layout
from labctl.fit.vllm import (
    CONTEXT_BYTES,
    LATEST,
    Batching,
    Behaviour,
    VllmVersion,
    activation_peak,
    behaviour,
    cuda_graph_bytes,
    default_batching,
)
from labctl.fit.weights import WeightPlan, plan_weights, pp_partition
from labctl.units import GiB

KV_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class FitRequest:
    """What the user asked; ``None`` means the engine's default."""

    gpu_total_bytes: int
    gpu_name: str = "GPU"
    #: The device total NVML reports (vLLM compares it with its default-size thresholds).
    gpu_nvml_total_bytes: int | None = None
    gpu_compute_capability: tuple[int, int] = (8, 0)
    gpu_sm_count: int = 0
    gpu_fp8: bool = True
    gpu_fp4: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    dtype: str = "auto"
    block_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_memory_bytes: int | None = None
    vllm_version: str = LATEST
    v0_engine: bool | None = None
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    #: Speculative tokens per step with the model's own MTP layers as the drafter.
    speculative_tokens: int = 0

    @classmethod
    def on_gpu(cls, spec: GpuSpec | None, **fields: Any) -> FitRequest:
        """A request for a catalog GPU; ``fields`` set the flags and override the GPU's facts
        (an unknown GPU needs at least ``gpu_total_bytes``)."""
        facts: dict[str, Any] = {}
        if spec is not None:
            facts = {
                "gpu_total_bytes": spec.cuda_total_bytes,
                "gpu_name": spec.name,
                "gpu_nvml_total_bytes": spec.nvml_total_bytes or spec.cuda_total_bytes,
                "gpu_compute_capability": spec.compute_capability,
                "gpu_sm_count": spec.sm_count,
                "gpu_fp8": spec.fp8,
                "gpu_fp4": spec.fp4,
            }
        return cls(**(facts | fields))


@dataclass
class Suggestion:
    """One change that would make the model fit (or fit better), with its numbers."""

    change: str
    args: dict[str, str]
    fits: bool
    max_model_len: int
    max_model_len_fit: int
    kv_cache_tokens: int
    max_concurrency: float


@dataclass
class FitResult:
    """Everything the planner computed; all bytes are per GPU."""

    model: str
    engine: str
    gpu: str
    gpu_total_bytes: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    dtype: str
    weight_format: str
    kv_cache_dtype: str
    vllm_version: str
    gpu_memory_utilization: float
    budget_bytes: int
    weights_bytes: int
    model_load_bytes: int
    non_torch_bytes: int
    activation_peak_bytes: int
    cuda_graph_bytes: int
    cuda_graphs_in_budget: bool
    kv_cache_bytes: int
    kv_bytes_per_token: int
    kv_window_bytes_per_token: int
    kv_bytes_per_sequence: int
    kv_state_bytes_per_sequence: int
    kv_cache_tokens: int
    num_gpu_blocks: int
    block_size: int
    kv_groups: int
    padding_layers: int
    max_model_len: int
    max_concurrency: float
    max_model_len_fit: int
    max_num_seqs: int
    max_num_batched_tokens: int
    fits: bool
    peak_bytes: int
    recommended_args: list[str]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    weights_by_role: dict[str, int] = field(default_factory=dict)
    #: Encoder-decoder models (Whisper): per-request self and cross KV, encoder admission;
    #: ``max_concurrency`` is then in requests of one encoder item (a 30 s chunk).
    encoder_decoder: EncoderDecoderPlan | None = None
    #: The worst rank's KV layout (how a request's length turns into pool blocks); not
    #: part of the printed result.
    kv_layout: KVLayout | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in self.__dict__.items():
            if key == "kv_layout":
                continue
            if key == "suggestions":
                out[key] = [s.__dict__ for s in value]
            elif key == "encoder_decoder":
                if value is not None:
                    # Flat keys beside the rest; max_concurrency is already the result's.
                    out |= {k: v for k, v in value.to_json().items() if k not in out}
            else:
                out[key] = value
        return out


# ---------------------------------------------------------------------------
# validation and resolution


def divisors(n: int, limit: int = 64) -> list[int]:
    """Divisors of ``n`` up to ``limit`` (the tensor-parallel sizes worth offering)."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def validate(arch: ModelArch, req: FitRequest) -> None:
    """Reject flag values that cannot work, with the fix in the message.

    Raises:
        FitError: the architecture has no layers, heads or width to plan (the readers
            refuse such files; this guards architectures built elsewhere).
        UsageError: a flag value cannot work.
    """
    counts = {
        "layers": arch.num_hidden_layers,
        "hidden size": arch.hidden_size,
        "attention heads": arch.num_attention_heads,
        "head size": arch.head_dim,
        "vocabulary": arch.vocab_size,
        "context length": arch.max_position_embeddings,
    }
    zero = [f"{what} {n}" for what, n in counts.items() if n < 1]
    if zero:
        raise FitError(
            f"{arch.name}: {', '.join(zero)}; a model needs at least one of each, so there is "
            "nothing to plan; check the model's config.json or GGUF metadata"
        )
    u = req.gpu_memory_utilization
    if not (0 < u <= 1) or math.isnan(u):
        raise UsageError(
            f"--gpu-memory-utilization {u} is outside (0, 1]; it is the fraction of GPU memory "
            "vLLM may use, e.g. 0.9"
        )
    tp, pp = req.tensor_parallel_size, req.pipeline_parallel_size
    if tp < 1 or pp < 1:
        raise UsageError("--tensor-parallel-size and --pipeline-parallel-size must be at least 1")
    if arch.num_attention_heads % tp:
        raise UsageError(
            f"--tensor-parallel-size {tp} does not divide the {arch.num_attention_heads} attention "
            f"heads of {arch.name}; use one of {divisors(arch.num_attention_heads)}"
        )
    kv = arch.num_kv_heads
    if kv and kv % tp and tp % kv:
        raise UsageError(
            f"--tensor-parallel-size {tp} neither divides nor is a multiple of the {kv} KV heads "
            f"of {arch.name}; use one of {[d for d in divisors(arch.num_attention_heads) if kv % d == 0 or d % kv == 0]}"
        )
    if pp > arch.num_hidden_layers:
        raise UsageError(
            f"--pipeline-parallel-size {pp} exceeds the {arch.num_hidden_layers} layers of {arch.name}"
        )
    if req.block_size is not None and (req.block_size < 1 or req.block_size & (req.block_size - 1)):
        raise UsageError(
            f"--block-size {req.block_size} must be a power of two such as 16, 32 or 64"
        )
    if req.max_model_len is not None and req.max_model_len < 1:
        raise UsageError(f"--max-model-len {req.max_model_len} must be at least 1")
    for flag, value in (
        ("--max-num-seqs", req.max_num_seqs),
        ("--max-num-batched-tokens", req.max_num_batched_tokens),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value} must be at least 1")
    if req.kv_cache_dtype not in KV_DTYPES:
        raise UsageError(
            f"--kv-cache-dtype {req.kv_cache_dtype!r} is not one of {', '.join(KV_DTYPES)}"
        )
    if req.dtype not in DTYPES:
        raise UsageError(f"--dtype {req.dtype!r} is not one of {', '.join(DTYPES)}")
    if req.gpu_total_bytes <= 0:
        raise UsageError("GPU memory must be positive; pass --gpu ID or --gpu-memory-gib G")
    if req.kv_cache_memory_bytes is not None and req.kv_cache_memory_bytes < 0:
        raise UsageError("--kv-cache-memory-bytes must not be negative")
    if req.speculative_tokens < 0:
        raise UsageError("--speculative-tokens must not be negative")
    if req.speculative_tokens and not arch.mtp_layers:
        raise UsageError(
            f"--speculative-tokens needs a model with multi-token-prediction layers; {arch.name} has none"
        )


def resolve_dtype(arch: ModelArch, req: FitRequest) -> str:
    if req.dtype != "auto":
        if req.dtype == "bfloat16" and req.gpu_compute_capability < (8, 0):
            raise UsageError(
                f"--dtype bfloat16 needs compute capability 8.0 or newer; {req.gpu_name} is "
                f"{req.gpu_compute_capability[0]}.{req.gpu_compute_capability[1]}: use --dtype float16"
            )
        return req.dtype
    dtype = arch.dtype if arch.dtype in ("bfloat16", "float16") else "bfloat16"
    if dtype == "bfloat16" and req.gpu_compute_capability < (8, 0):
        dtype = "float16"
    return dtype


def resolve_quant(arch: ModelArch, req: FitRequest) -> QuantInfo | None:
    """The runtime quantization the request adds on top of the checkpoint (if any)."""
    if req.quantization in (None, "", "none", "auto"):
        return None
    fmt = format_named(req.quantization)
    if fmt is None:
        from labctl.catalog.formats import FORMATS

        raise UsageError(
            f"--quantization {req.quantization!r} is not a known format; use one of "
            f"{', '.join(sorted(FORMATS))}"
        )
    if fmt.name in ("bf16", "fp16", "fp32"):
        return None
    if arch.quant is not None:
        if arch.quant.method == fmt.name:
            return None
        raise UsageError(
            f"{arch.name} is already quantized as {arch.quant.method}; --quantization {req.quantization} "
            "cannot be applied on top. Drop --quantization or pick the unquantized model"
        )
    if fmt.name.startswith("fp8") and not req.gpu_fp8:
        # vLLM runs FP8 weights on pre-Ada GPUs through a weight-only kernel: same bytes.
        pass
    if fmt.name in ("nvfp4",) and not req.gpu_fp4:
        pass
    return QuantInfo(fmt.name, group_size=fmt.group_size or None)


def resolve_kv_dtype(req: FitRequest, model_dtype: str) -> str:
    if req.kv_cache_dtype in ("auto", ""):
        return model_dtype
    return req.kv_cache_dtype


# ---------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class _Rank:
    index: int
    layers: tuple[int, int]
    load: int
    non_torch: int
    activation: int
    graphs: int
    layout: KVLayout


def _layouts(
    arch: ModelArch, req: FitRequest, b: Behaviour, kv_dtype: str, model_dtype: str
) -> list[tuple[tuple[int, int], KVLayout]]:
    tp, pp = req.tensor_parallel_size, req.pipeline_parallel_size
    block = req.block_size or 16
    state_blocks = 2 if req.enable_prefix_caching else 1
    opts = KVOptions(
        kv_dtype=kv_dtype,
        model_dtype=model_dtype,
        block_size=block,
        hybrid_manager=b.hybrid_manager,
        chunked_hybrid=b.chunked_hybrid,
        state_blocks=state_blocks,
        speculative_blocks=req.speculative_tokens,
    )
    out = []
    ranges = pp_partition(arch.num_hidden_layers, pp)
    for r, (start, end) in enumerate(ranges):
        if arch.model_type == "whisper":
            on_rank = list(arch.kv_layers)  # self and cross layers of the decoder
        else:
            on_rank = [layer for layer in arch.kv_layers if start <= layer.index < end]
        if r == len(ranges) - 1:
            on_rank += mtp_kv_layers(arch, req.speculative_tokens)
        out.append(((start, end), plan_layout(layer_caches(on_rank, tp, opts), opts)))
    return out


def mtp_kv_layers(arch: ModelArch, speculative_tokens: int) -> list[KVLayer]:
    """The attention layers a model's own MTP drafter adds to the KV pool."""
    if not speculative_tokens or not arch.mtp_layers:
        return []
    template = next(
        (layer for layer in arch.kv_layers if layer.kind in (LayerKind.FULL, LayerKind.MLA)), None
    )
    if template is None:
        return []
    return [
        replace(template, index=arch.num_hidden_layers + j, kind=template.kind, window=None)
        for j in range(arch.mtp_layers)
    ]


#: Weight plans already worked out, by everything they depend on (see :func:`plan`).
WeightsMemo = dict[tuple[object, ...], WeightPlan]


def plan(
    arch: ModelArch,
    req: FitRequest,
    suggest: bool = True,
    weights_memo: WeightsMemo | None = None,
) -> FitResult:
    """Plan ``arch`` on the GPU(s) described by ``req`` for vLLM.

    ``weights_memo`` lets a caller that plans the same architecture many times (the
    suggestions do, a dozen times) size its weights once per layout and format; the
    caller must keep the architectures it passes alive while the memo is in use.

    Raises:
        FitError: the architecture has nothing to plan.
        UsageError: a flag value cannot work.
    """
    validate(arch, req)
    version = VllmVersion.parse(req.vllm_version, req.v0_engine)
    if not version.v0 and version.key < (0, 11, 0) and req.gpu_compute_capability < (8, 0):
        version = replace(version, v0=True)  # V1 needed compute capability 8.0 before 0.11
    b = behaviour(version)
    model_dtype = resolve_dtype(arch, req)
    kv_dtype = resolve_kv_dtype(req, model_dtype)
    runtime_quant = resolve_quant(arch, req)
    tp, pp = req.tensor_parallel_size, req.pipeline_parallel_size
    include_mtp, triton = req.speculative_tokens > 0, version.at_least(0, 11)
    memo = {} if weights_memo is None else weights_memo
    # Architectures the suggestions derive with replace() share the weight and layer
    # tuples: key on those (alive while the memo is) and on what the derivation changes.
    key: tuple[object, ...] = (id(arch.weights), id(arch.kv_layers), arch.quant, arch.dtype)
    key += (tp, pp, runtime_quant, model_dtype, req.gpu_compute_capability, include_mtp, triton)
    weights = memo.get(key)
    if weights is None:
        weights = memo[key] = plan_weights(
            arch,
            tp,
            pp,
            runtime_quant,
            model_dtype,
            req.gpu_compute_capability,
            include_mtp=include_mtp,
            triton_kernels=triton,
        )
    max_len = req.max_model_len or arch.max_position_embeddings
    kinds = {layer.kind for layer in arch.kv_layers}
    batching: Batching = default_batching(
        version,
        req.gpu_nvml_total_bytes or req.gpu_total_bytes,
        req.gpu_name,
        max_len,
        req.max_num_seqs,
        req.max_num_batched_tokens,
        sliding_window=LayerKind.SLIDING in kinds,
        multimodal=arch.multimodal,
        mla=LayerKind.MLA in kinds,
        encoder_decoder=LayerKind.CROSS in kinds,
    )
    budget = int(req.gpu_total_bytes * req.gpu_memory_utilization)
    act_dtype_b = dtype_bytes(model_dtype)
    ranks: list[_Rank] = []
    for r, ((start, end), layout) in enumerate(_layouts(arch, req, b, kv_dtype, model_dtype)):
        load = weights.per_rank[r] + weights.buffers[r]
        act = activation_peak(arch, batching, tp, pp, r == pp - 1, act_dtype_b, b, req.gpu_sm_count)
        graphs = cuda_graph_bytes(arch, end - start, req.enforce_eager)
        ranks.append(
            _Rank(r, (start, end), load, b.non_torch_bytes(tp, pp), act.total, graphs, layout)
        )

    def available(rank: _Rank) -> int:
        if req.kv_cache_memory_bytes is not None:
            return req.kv_cache_memory_bytes
        avail = budget - rank.load - rank.non_torch - rank.activation
        if b.graphs_in_budget:
            avail -= rank.graphs
        return avail

    worst = min(
        ranks,
        key=lambda rk: rk.layout.num_blocks(max(available(rk), 0)) if rk.layout.caches else 1 << 62,
    )
    kv_bytes = available(worst)
    layout = worst.layout
    blocks = layout.num_blocks(max(kv_bytes, 0))
    mbt = batching.max_num_batched_tokens
    concurrency = layout.max_concurrency(blocks, max_len, mbt) if layout.caches else math.inf
    if not layout.caches:
        tokens = 0
    elif b.tokens_from_concurrency:
        tokens = int(concurrency * max_len)
    else:
        tokens = layout.tokens_by_blocks(blocks)
    per_seq = layout.request_bytes(max_len, mbt) if layout.caches else 0
    encdec: EncoderDecoderPlan | None = None
    if arch.encoder_positions and layout.caches:  # capacity in requests of one encoder item,
        encdec = plan_encoder_decoder(  # not vLLM's reservation for a batch of encoder tokens
            layout, arch.kv_layers, blocks, encoder_positions=arch.encoder_positions,
            max_model_len=max_len, max_num_seqs=batching.max_num_seqs,
            max_num_batched_tokens=mbt, vllm_logged_concurrency=concurrency)  # fmt: skip
        concurrency = encdec.max_concurrency
    fit_len = estimate_max_model_len(layout, kv_bytes, mbt, arch.max_position_embeddings)

    reasons: list[str] = []
    warnings: list[str] = []
    if kv_bytes <= 0:
        reasons.append(
            f"weights and activations need {gib_str(budget - kv_bytes)} but "
            f"{req.gpu_memory_utilization:g} × {gib_str(req.gpu_total_bytes)} = {gib_str(budget)} is available"
        )
    elif layout.caches and per_seq > layout.bytes_for_blocks(blocks):
        reasons.append(
            f"one {max_len:,}-token request needs {gib_str(per_seq)} of KV cache but "
            f"{gib_str(kv_bytes)} is available; the largest context that fits is {fit_len:,}"
        )
    fits = not reasons
    peak = budget + CONTEXT_BYTES + (0 if b.graphs_in_budget else worst.graphs)
    if req.kv_cache_memory_bytes is not None:
        peak = (
            worst.load
            + worst.non_torch
            + worst.activation
            + req.kv_cache_memory_bytes
            + CONTEXT_BYTES
            + worst.graphs
        )
    if fits and peak > req.gpu_total_bytes:
        warnings.append(
            f"CUDA context (~{gib_str(CONTEXT_BYTES)}) and CUDA graphs (~{gib_str(worst.graphs)}) come on top of "
            f"the {req.gpu_memory_utilization:g} budget and may not fit in {gib_str(req.gpu_total_bytes)}: lower "
            "--gpu-memory-utilization or add --enforce-eager if startup fails with out of memory"
        )
    if max_len > arch.max_position_embeddings:
        warnings.append(
            f"--max-model-len {max_len:,} exceeds the model's {arch.max_position_embeddings:,} positions; "
            "vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        )
    if runtime_quant is not None and runtime_quant.method.startswith("fp8") and not req.gpu_fp8:
        warnings.append(
            f"{req.gpu_name} has no FP8 tensor cores: FP8 weights run through a slower weight-only kernel"
        )
    if kv_dtype.startswith("fp8") and not req.gpu_fp8:
        warnings.append(
            f"{req.gpu_name} has no FP8 support in hardware: an FP8 KV cache is emulated and slower"
        )

    result = FitResult(
        model=arch.name, engine="vllm", gpu=req.gpu_name, gpu_total_bytes=req.gpu_total_bytes,
        tensor_parallel_size=tp, pipeline_parallel_size=pp, dtype=model_dtype,
        weight_format=weights.format, kv_cache_dtype=kv_dtype, vllm_version=str(version),
        gpu_memory_utilization=req.gpu_memory_utilization, budget_bytes=budget,
        weights_bytes=weights.per_rank[worst.index], model_load_bytes=worst.load,
        non_torch_bytes=worst.non_torch, activation_peak_bytes=worst.activation,
        cuda_graph_bytes=worst.graphs, cuda_graphs_in_budget=b.graphs_in_budget,
        kv_cache_bytes=kv_bytes, kv_bytes_per_token=layout.bytes_per_token(),
        kv_window_bytes_per_token=layout.window_bytes_per_token(), kv_bytes_per_sequence=per_seq,
        kv_state_bytes_per_sequence=layout.state_bytes_per_sequence(), kv_cache_tokens=tokens,
        num_gpu_blocks=blocks, block_size=layout.min_block_size, kv_groups=len(layout.groups),
        padding_layers=layout.padding_layers, max_model_len=max_len,
        max_concurrency=round(concurrency, 2) if math.isfinite(concurrency) else 0.0,
        max_model_len_fit=fit_len, max_num_seqs=batching.max_num_seqs,
        max_num_batched_tokens=batching.max_num_batched_tokens, fits=fits, peak_bytes=peak,
        recommended_args=[], reasons=reasons, warnings=warnings, weights_by_role=weights.by_role,
        encoder_decoder=encdec, kv_layout=layout,
    )  # fmt: skip
    result.recommended_args = recommended_args(arch, req, result)
    if suggest:
        from labctl.fit.suggest import suggestions  # suggest plans alternatives with plan()

        result.suggestions = suggestions(arch, req, result, weights_memo=memo)
    return result


def estimate_max_model_len(layout: KVLayout, kv_bytes: int, mbt: int, upper: int) -> int:
    """The largest context one request can have in ``kv_bytes`` (0 if none)."""
    if not layout.caches:
        return upper
    if kv_bytes <= 0:
        return 0
    capacity = layout.bytes_for_blocks(layout.num_blocks(kv_bytes))
    if layout.request_bytes(1, mbt) > capacity:
        return 0
    lo, hi = 1, max(upper, 1)
    if layout.request_bytes(hi, mbt) <= capacity:
        # Bounded models (sliding windows, recurrent state only) may allow more than the
        # position limit; the position limit is what an engine accepts.
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if layout.request_bytes(mid, mbt) <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def gib_str(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def recommended_args(arch: ModelArch, req: FitRequest, res: FitResult) -> list[str]:
    """vLLM flags that make this plan explicit (and safe) on the command line."""
    args: list[str] = []
    length = res.max_model_len if res.fits else res.max_model_len_fit
    if length:
        # Round down to a multiple of 1024 when trimming, so the number reads well.
        if not res.fits and length > 2048:
            length = length // 1024 * 1024
        args += ["--max-model-len", str(length)]
    args += ["--gpu-memory-utilization", f"{req.gpu_memory_utilization:g}"]
    if req.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(req.tensor_parallel_size)]
    if req.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(req.pipeline_parallel_size)]
    if req.quantization:
        args += ["--quantization", req.quantization]
    if req.kv_cache_dtype not in ("auto", ""):
        args += ["--kv-cache-dtype", req.kv_cache_dtype]
    if req.max_num_seqs:
        args += ["--max-num-seqs", str(req.max_num_seqs)]
    if req.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(req.max_num_batched_tokens)]
    if req.enforce_eager:
        args += ["--enforce-eager"]
    if req.kv_cache_memory_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(req.kv_cache_memory_bytes)]
    return args


__all__ = ["FitRequest", "FitResult", "Suggestion", "plan"]
