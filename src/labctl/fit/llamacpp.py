"""llama.cpp's (``llama-server``) memory accounting for GGUF and catalog models.

llama.cpp allocates fixed buffers up front, per device:

* model buffers: the tensors of the offloaded layers (``-ngl``) and the
  output layer; the token embedding stays in host memory;
* the KV cache: ``n_ctx`` cells (``-c``, padded to 256) of K and V rows for
  every offloaded attention layer, in ``-ctk``/``-ctv`` types; sliding-window
  layers keep only window + micro-batch cells unless ``--swa-full``. With the
  unified cache (the default) ``-np`` slots share those cells;
* a compute buffer sized for one micro-batch (``-ub``, 512) of the graph:
  feed-forward rows of the micro-batch and f32 views of the K/V cells, and the
  attention scores when flash attention is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, Role, WeightSpec
from labctl.catalog.formats import GGUF_PRESET_BPW
from labctl.errors import UsageError
from labctl.fit.weights import spec_bytes
from labctl.units import MiB, round_up

#: KV cache types llama.cpp accepts for ``-ctk``/``-ctv``, with bytes per element.
CACHE_TYPES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
#: llama.cpp pads the number of KV cells to a multiple of this.
CTX_PAD = 256
#: CUDA context and cuBLAS workspace, not in any llama.cpp buffer.
CONTEXT_BYTES = 400 * MiB


@dataclass(frozen=True)
class LlamaCppRequest:
    gpu_total_bytes: int
    gpu_name: str = "GPU"
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    cache_type: str = "f16"
    n_parallel: int = 1
    n_ubatch: int = 512
    flash_attn: bool = True
    swa_full: bool = False
    #: GGUF preset to size a catalog model in (Q4_K_M, Q8_0, ...); None keeps its format.
    quantization: str | None = None


@dataclass
class LlamaCppResult:
    model: str
    engine: str
    gpu: str
    gpu_total_bytes: int
    n_gpu_layers: int
    num_layers: int
    weights_bytes: int
    weights_host_bytes: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_cache_bytes: int
    kv_cache_tokens: int
    activation_peak_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    max_model_len: int
    max_concurrency: float
    max_model_len_fit: int
    #: The most layers that can be offloaded with the requested context (llama.cpp -ngl).
    max_gpu_layers_fit: int
    fits: bool
    recommended_args: list[str]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The GGUF file planned, when the model came from one.
    model_path: str | None = None

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _cache_bytes(cache_type: str) -> float:
    key = (
        "f16"
        if cache_type in ("auto", "", "float16")
        else ("bf16" if cache_type == "bfloat16" else cache_type)
    )
    if key not in CACHE_TYPES:
        raise UsageError(
            f"--kv-cache-dtype {cache_type!r} is not a llama.cpp cache type; use one of {', '.join(CACHE_TYPES)}"
        )
    return CACHE_TYPES[key]


def _layer_bytes(arch: ModelArch, preset: str | None) -> tuple[dict[int, int], int, int]:
    """Bytes per layer, of the output layer, and of the token embedding.

    A GGUF file's tensors have exact sizes. A catalog model is sized in a GGUF
    preset (``Q4_K_M``: its average bits per weight, the output layer in Q6_K as
    llama.cpp's quantizer leaves it) or else in its own format.
    """
    stored = all(w.stored_bytes is not None for w in arch.weights)
    if stored and preset:
        raise UsageError(
            f"{arch.source} is already {arch.gguf_file_type or 'quantized'}; drop --quantization "
            "(a GGUF file is planned as it is)"
        )
    bpw = GGUF_PRESET_BPW[preset] if preset else 0.0
    out_bpw = 6.5625 if preset and ("_K" in preset or preset.startswith("IQ")) else bpw

    def size(w: WeightSpec) -> float:
        if w.stored_bytes is not None:
            return w.stored_bytes
        if not preset:
            return spec_bytes(w, arch.quant, 2)
        if len(w.shape) < 2:
            return w.numel * 4  # norms and biases stay F32
        return w.numel * (out_bpw if w.role is Role.LM_HEAD else bpw) / 8

    per_layer: dict[int, float] = {}
    output = embed = 0.0
    for w in arch.weights:
        if w.role in (Role.VISION, Role.MTP):
            continue
        if w.layer is not None:
            per_layer[w.layer] = per_layer.get(w.layer, 0) + size(w)
        elif w.role is Role.EMBED:
            embed += size(w)
        else:
            output += size(w)
    if arch.tie_word_embeddings:
        output += embed * (out_bpw / bpw if preset else 1)  # the output layer is a copy on the GPU
    return {i: int(b) for i, b in per_layer.items()}, int(output), int(embed)


def plan_llamacpp(arch: ModelArch, req: LlamaCppRequest) -> LlamaCppResult:
    """Plan ``arch`` under llama.cpp on one GPU.

    Raises:
        UsageError: a flag value cannot work.
    """
    if req.n_parallel < 1:
        raise UsageError("--max-num-seqs (slots, -np) must be at least 1")
    if req.n_ctx is not None and req.n_ctx < 1:
        raise UsageError(f"--max-model-len {req.n_ctx} must be at least 1")
    elem = _cache_bytes(req.cache_type)
    n_layers = arch.num_hidden_layers
    ngl = n_layers if req.n_gpu_layers is None or req.n_gpu_layers > n_layers else req.n_gpu_layers
    if ngl < 0:
        raise UsageError(f"--n-gpu-layers {req.n_gpu_layers} must not be negative")
    preset = req.quantization.upper() if req.quantization else None
    if preset is not None and preset not in GGUF_PRESET_BPW:
        raise UsageError(
            f"--quantization {req.quantization!r} is not a GGUF preset; use one of {', '.join(GGUF_PRESET_BPW)}"
        )
    per_layer, output, embed = _layer_bytes(arch, preset)
    n_ctx_train = arch.max_position_embeddings
    n_ctx = min(req.n_ctx or n_ctx_train, n_ctx_train)
    cells = round_up(n_ctx, CTX_PAD)
    ub = req.n_ubatch

    def gpu_weights(layers: int) -> int:
        return sum(b for i, b in per_layer.items() if i >= n_layers - layers) + (
            output if layers == n_layers else 0
        )

    ff = arch.intermediate_size
    if arch.moe is not None and arch.moe.num_experts:
        ff = arch.moe.intermediate_size * max(arch.moe.top_k, 1) + arch.moe.shared_intermediate_size
    kv_dim = max((k.num_kv_heads * k.head_size for k in arch.kv_layers), default=arch.hidden_size)

    def compute_bytes(layers: int, cells_: int = cells) -> int:
        # Fitted on llama-server's own "compute buffer size" lines for a micro-batch of
        # 512: three f32 rows of the feed-forward per token, three of the K/V view per
        # cell, and with flash attention off the KQ scores (cells x tokens x heads).
        if not layers:
            return 0
        c = 4 * (3 * ub * ff + 3 * cells_ * kv_dim)
        if not req.flash_attn:
            c = max(c, int(4 * 1.4 * cells_ * ub * arch.num_attention_heads))
        return int(c)

    def row_bytes(layer: KVLayer) -> float:
        """K and V bytes one cell holds in one layer."""
        if layer.kind is LayerKind.MLA:
            return layer.mla_latent * elem * 2
        return layer.num_kv_heads * (layer.head_size + layer.head_size_v) * elem

    attention = [layer for layer in arch.kv_layers if layer.kind is not LayerKind.LINEAR]

    def kv_bytes(cells_: int, layers: int | None = None) -> int:
        first = n_layers - (ngl if layers is None else layers)
        total = 0.0
        for layer in attention:
            if layer.index < first:
                continue
            row = row_bytes(layer)
            n = cells_
            if layer.kind is LayerKind.SLIDING and layer.window and not req.swa_full:
                n = min(cells_, round_up(layer.window * req.n_parallel + req.n_ubatch, CTX_PAD))
            total += row * n
        return int(total)

    per_token = int(sum(row_bytes(layer) for layer in attention if layer.index >= n_layers - ngl))
    weights_gpu = gpu_weights(ngl)
    weights_host = sum(per_layer.values()) + output + embed - weights_gpu
    kv = kv_bytes(cells)
    compute = compute_bytes(ngl)
    used = weights_gpu + kv + compute + CONTEXT_BYTES

    def fits_with(layers: int) -> bool:
        need = gpu_weights(layers) + kv_bytes(cells, layers) + compute_bytes(layers)
        return need + CONTEXT_BYTES <= req.gpu_total_bytes

    # Every term grows with the layers offloaded, so the most that fit is found by
    # bisection (a scan would cost layers squared).
    lo, hi = 0, n_layers
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_with(mid):
            lo = mid
        else:
            hi = mid - 1
    max_layers = lo
    reasons = []
    if used > req.gpu_total_bytes:
        reasons.append(
            f"{ngl} offloaded layers with a {n_ctx:,}-token cache need {used / 2**30:.2f} GiB of "
            f"{req.gpu_total_bytes / 2**30:.2f} GiB"
        )
    spare = req.gpu_total_bytes - weights_gpu - CONTEXT_BYTES
    fit_ctx = 0
    if spare > 0:
        lo, hi = 0, n_ctx_train
        while lo < hi:
            mid = (lo + hi + 1) // 2
            c = round_up(mid, CTX_PAD)
            if kv_bytes(c) + compute_bytes(ngl, c) <= spare:
                lo = mid
            else:
                hi = mid - 1
        fit_ctx = lo
    if reasons and fit_ctx < min(n_ctx, 4096) and max_layers:
        # Too little room for a useful context: offload fewer layers instead.
        args = ["-c", str(n_ctx), "-ngl", str(max_layers)]
    else:
        length = n_ctx if not reasons else (fit_ctx // 1024 * 1024 or fit_ctx)
        args = ["-c", str(length), "-ngl", str(ngl if ngl < n_layers else 999)]
    if req.cache_type not in ("auto", "f16", ""):
        args += ["-ctk", req.cache_type, "-ctv", req.cache_type]
    args += ["-np", str(req.n_parallel)]
    warnings = []
    if req.n_ctx and req.n_ctx > n_ctx_train:
        warnings.append(
            f"-c {req.n_ctx:,} is capped at the model's training context {n_ctx_train:,}"
        )
    return LlamaCppResult(
        model=arch.name,
        engine="llamacpp",
        gpu=req.gpu_name,
        gpu_total_bytes=req.gpu_total_bytes,
        n_gpu_layers=ngl,
        num_layers=n_layers,
        weights_bytes=weights_gpu,
        weights_host_bytes=weights_host,
        kv_cache_dtype=req.cache_type if req.cache_type not in ("auto", "") else "f16",
        kv_bytes_per_token=per_token,
        kv_cache_bytes=kv,
        kv_cache_tokens=cells,
        activation_peak_bytes=compute,
        non_torch_bytes=CONTEXT_BYTES,
        cuda_graph_bytes=0,
        max_model_len=n_ctx,
        max_concurrency=round(cells / n_ctx, 2) if n_ctx else 0.0,
        max_model_len_fit=fit_ctx,
        max_gpu_layers_fit=max_layers,
        fits=not reasons,
        recommended_args=args,
        reasons=reasons,
        warnings=warnings,
        model_path=arch.source if arch.source.endswith(".gguf") else None,
    )
