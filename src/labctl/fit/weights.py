"""Weight bytes per GPU for a format and a tensor/pipeline-parallel layout.

Linear layers a format covers are stored in it (with their scales); the rest
(embeddings, lm_head, norms, routers, towers) stay in the model dtype, as
engines load them. Tensor parallelism splits what it splits and replicates
the rest; pipeline parallelism hands each rank a run of layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from labctl.catalog.arch import ModelArch, QuantInfo, Role, WeightSpec
from labctl.catalog.formats import FORMATS, WeightFormat
from labctl.fit.kv import dtype_bytes
from labctl.units import cdiv, round_up

#: Engines pad the vocabulary of embeddings and lm_head to a multiple of this.
VOCAB_PADDING = 64

_SHARDED = frozenset(
    {
        Role.ATTN_Q,
        Role.ATTN_O,
        Role.MLP,
        Role.EXPERT,
        Role.SHARED_EXPERT,
        Role.LINEAR_ATTN,
        Role.VISION,
    }
)


def pp_partition(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """Layer ranges per pipeline rank; leftover layers go to the later ranks
    (all but the last), as vLLM partitions them."""
    base = num_layers // pp
    sizes = [base] * pp
    for i in range(num_layers % pp):
        sizes[-(i + 2) if pp > 1 else 0] += 1
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


@dataclass(frozen=True)
class WeightPlan:
    """Weight memory of each pipeline rank (tensor-parallel ranks are alike)."""

    per_rank: tuple[int, ...]
    buffers: tuple[int, ...]
    by_role: dict[str, int] = field(default_factory=dict)
    format: str = "bf16"
    quantized_roles: tuple[str, ...] = ()

    @property
    def worst_rank(self) -> int:
        totals = [w + b for w, b in zip(self.per_rank, self.buffers, strict=True)]
        return totals.index(max(totals))

    @property
    def weights_bytes(self) -> int:
        """Parameter bytes of the fullest GPU."""
        return self.per_rank[self.worst_rank]

    @property
    def load_bytes(self) -> int:
        """Parameters plus the buffers engines keep beside them, on the fullest GPU."""
        return self.per_rank[self.worst_rank] + self.buffers[self.worst_rank]


def format_for(quant: QuantInfo, method: str) -> WeightFormat:
    """The storage layout of ``method`` as ``quant`` configures it (group size, zeros, blocks)."""
    fmt = FORMATS[method]
    if method != quant.method:
        return fmt
    if quant.group_size and fmt.group_size:
        fmt = replace(fmt, group_size=quant.group_size)
    if method in ("gptq", "autoround") and not quant.symmetric:
        fmt = replace(fmt, zero_bits=4)
    if quant.block and fmt.block:
        fmt = replace(fmt, block=quant.block)
    return fmt


#: How vLLM's MXFP4 MoE backends pad each rank's expert matrices (hidden, intermediate),
#: and whether the backend keeps the original scales beside its swizzled copy.
MXFP4_BACKENDS: dict[str, tuple[int, int, bool]] = {
    "marlin": (256, 128, False),  # Ampere and Ada (weight-only)
    "triton": (1, 64, True),  # Hopper
    "trtllm": (256, 256, False),  # datacenter Blackwell (FlashInfer TRT-LLM)
    "cutlass": (128, 128, False),  # other Blackwell (FlashInfer CUTLASS)
}


def mxfp4_backend(compute_capability: tuple[int, int], triton_kernels: bool = True) -> str:
    """The MXFP4 MoE backend vLLM picks on a GPU generation (Hopper needs the
    Triton kernels package, shipped with vLLM from 0.11, else Marlin)."""
    if compute_capability < (9, 0) or (compute_capability < (10, 0) and not triton_kernels):
        return "marlin"
    if compute_capability < (10, 0):
        return "triton"
    if compute_capability < (12, 0):
        return "trtllm"
    return "cutlass"


def _mxfp4_expert_bytes(spec: WeightSpec, arch: ModelArch, tp: int, backend: str) -> float:
    """Per-rank bytes of an MXFP4 expert matrix, padded as the backend pads it."""
    pad_h, pad_i, dup_scales = MXFP4_BACKENDS[backend]
    hidden = round_up(arch.hidden_size, pad_h)
    inter = arch.moe.intermediate_size if arch.moe else spec.shape[1]
    inter = round_up(cdiv(inter, tp), pad_i)
    if spec.shape[0] == arch.hidden_size:  # down projection: (hidden, intermediate)
        numel = hidden * inter
    else:  # fused gate/up: (2 * intermediate, hidden)
        numel = 2 * inter * hidden
    per_elem = 0.5 + (2 if dup_scales else 1) / 32
    return spec.count * numel * per_elem


def spec_bytes(spec: WeightSpec, quant: QuantInfo | None, dtype_b: float) -> float:
    """Bytes of one weight spec at tensor-parallel size 1.

    Tensors read from a file keep their stored bytes when they are part of a
    quantized layout; other stored floats are recast to the model dtype unless
    ``quant`` (a runtime format) converts them.
    """
    method = quant.method_for(spec) if quant is not None and not spec.quant_aux else None
    if method is None:
        if spec.stored_bytes is not None and spec.quant_aux:
            return spec.stored_bytes
        return spec.numel * dtype_b
    assert quant is not None
    if not spec.numel:
        return 0.0  # an empty tensor (a checkpoint may declare one): no bytes, no scales
    out = spec.shape[0]
    inp = spec.numel // (out * spec.count)
    return format_for(quant, method).nbytes(out, inp, spec.count)


def _tp_share(spec: WeightSpec, arch: ModelArch, tp: int, kv_heads: dict[int, int]) -> float:
    """Fraction of a tensor one tensor-parallel rank holds."""
    if tp == 1:
        return 1.0
    role = spec.role
    if role in (Role.EMBED, Role.LM_HEAD):
        padded = round_up(arch.vocab_size, VOCAB_PADDING)
        return cdiv(padded, tp) / arch.vocab_size if arch.vocab_size else 1 / tp
    if role is Role.ATTN_KV:
        heads = kv_heads.get(spec.layer if spec.layer is not None else -1, arch.num_kv_heads)
        return 1 / tp if heads >= tp else 1 / max(heads, 1)
    if role in _SHARDED:
        return 1 / tp
    return 1.0


def plan_weights(
    arch: ModelArch,
    tp: int = 1,
    pp: int = 1,
    quant: QuantInfo | None = None,
    dtype: str | None = None,
    compute_capability: tuple[int, int] = (9, 0),
    include_mtp: bool = False,
    triton_kernels: bool = True,
) -> WeightPlan:
    """Bytes of weights (and rotary tables) on each pipeline rank of one TP group.

    ``quant`` overrides the checkpoint's own quantization (a runtime format such as
    vLLM's ``--quantization fp8``); ``dtype`` overrides the model dtype.
    """
    runtime = quant
    quant = quant if quant is not None else arch.quant
    dtype_name = dtype or arch.dtype
    if dtype_name in ("float32", "float") and dtype is None:
        dtype_name = "bfloat16"  # engines serve fp32 checkpoints at 16 bits by default
    dtype_b = dtype_bytes(dtype_name)
    kv_heads = {layer.index: layer.num_kv_heads for layer in arch.kv_layers}
    ranges = pp_partition(arch.num_hidden_layers, pp)
    rank_of = [r for r, (a, b) in enumerate(ranges) for _ in range(a, b)]
    per_rank = [0.0] * pp
    by_role: dict[Role, float] = {}
    covered: set[Role] = set()
    last = pp - 1
    # Specs that differ only in their layer (and name, when no pattern looks at names)
    # take the same bytes: work them out once. A 2,048-layer model has ~45,000 specs
    # and the suggestions plan it a dozen times over.
    names_matter = any(q is not None and (q.skip or q.overrides) for q in (runtime, quant))
    memo: dict[tuple[object, ...], tuple[float, str | None]] = {}
    attn_kv, mtp = Role.ATTN_KV, Role.MTP
    for spec in arch.weights:
        role = spec.role
        if role is mtp and not include_mtp:
            continue
        layer = spec.layer
        key = (
            role,
            spec.shape,
            spec.count,
            spec.stored_bytes,
            spec.quant_aux,
            kv_heads.get(-1 if layer is None else layer, arch.num_kv_heads)
            if role is attn_kv
            else None,
            spec.name if names_matter else None,
        )
        hit = memo.get(key)
        if hit is None:
            # Tensors read from a file are already in their stored format; only a runtime
            # format requested on top converts them.
            q = runtime if spec.stored_bytes is not None else quant
            method = q.method_for(spec) if q is not None and not spec.quant_aux else None
            if method == "mxfp4" and role is Role.EXPERT:
                backend = mxfp4_backend(compute_capability, triton_kernels)
                nbytes = _mxfp4_expert_bytes(spec, arch, tp, backend)
            else:
                nbytes = spec_bytes(spec, q, dtype_b) * _tp_share(spec, arch, tp, kv_heads)
            hit = memo[key] = (nbytes, method)
        nbytes, method = hit
        if method is not None:
            covered.add(role)
        if layer is not None and role is not Role.VISION:
            r = rank_of[layer] if 0 <= layer < len(rank_of) else last
            per_rank[r] += nbytes
            by_role[role] = by_role.get(role, 0) + nbytes
            continue
        ranks: list[int]
        if role is Role.LM_HEAD or spec.name in ("model.norm.weight", "output_norm.weight"):
            ranks = [last]
        elif role is Role.EMBED and arch.tie_word_embeddings and pp > 1:
            ranks = [0, last]  # the last rank needs its own copy to project logits
        else:
            ranks = [0]
        for r in ranks:
            per_rank[r] += nbytes
        by_role[role] = by_role.get(role, 0) + nbytes * len(ranks)
    buffers = []
    for a, b in ranges:
        has_attention = any(a <= layer.index < b for layer in arch.kv_layers) or not arch.kv_layers
        buffers.append(
            int(sum(rb.max_positions * rb.rotary_dim * dtype_b for rb in arch.rope_buffers))
            if has_attention
            else 0
        )
    return WeightPlan(
        per_rank=tuple(int(x) for x in per_rank),
        buffers=tuple(buffers),
        by_role={k.value: int(v) for k, v in by_role.items()},
        format=quant.method if quant is not None else dtype_name,
        quantized_roles=tuple(sorted(r.value for r in covered)),
    )
