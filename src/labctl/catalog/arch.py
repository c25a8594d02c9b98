"""An engine-neutral description of a model: its weight tensors and its KV layers.

Everything the planner needs is here and nothing else. Readers (``hf``,
``gguf``, ``models``) build a :class:`ModelArch`; the planner in ``fit`` turns
it into bytes per GPU for one engine, format and parallel layout.

Weights are listed tensor by tensor (grouped where identical) with a *role*
that says how tensor parallelism shards them and whether a quantization format
touches them. KV layers are listed one per attention-bearing layer with the
geometry a paged KV cache allocates for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
import fnmatch
import functools
import math
import re


class Role(StrEnum):
    """What a weight tensor is, which decides sharding and quantization."""

    EMBED = "embed"  # token embedding; vocab-parallel; first pipeline rank
    LM_HEAD = "lm_head"  # output projection; vocab-parallel; last pipeline rank
    ATTN_Q = "attn_q"  # query projection; split by attention heads
    ATTN_KV = "attn_kv"  # key/value projections; split by KV heads, replicated past them
    ATTN_O = "attn_o"  # output projection; split by attention heads
    MLP = "mlp"  # dense feed-forward; split by intermediate size
    EXPERT = "expert"  # routed MoE experts; split by intermediate size under TP
    SHARED_EXPERT = "shared_expert"  # always-on MoE expert; split like MLP
    ROUTER = "router"  # MoE gate; replicated, never quantized
    REPLICATED = "replicated"  # linear layers every rank holds whole (MLA down-projections)
    LINEAR_ATTN = "linear_attn"  # Gated DeltaNet / Mamba projections; split by heads
    NORM = "norm"  # norms, biases of replicated parts, small vectors; replicated
    VISION = "vision"  # vision or audio tower and projector; first pipeline rank
    MTP = "mtp"  # multi-token-prediction head; loaded only for speculative decoding


#: Roles that quantization formats convert when they cover "all linear layers".
LINEAR_ROLES = frozenset(
    {
        Role.ATTN_Q,
        Role.ATTN_KV,
        Role.ATTN_O,
        Role.MLP,
        Role.EXPERT,
        Role.SHARED_EXPERT,
        Role.REPLICATED,
        Role.LINEAR_ATTN,
    }
)


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """One tensor (or ``count`` identical tensors) of the checkpoint.

    ``shape`` is the logical (unpacked) shape. A 2-D linear weight is
    ``(out_features, in_features)``; group and block scales are derived from
    it. ``stored_bytes`` is set when the bytes are known exactly (read from a
    safetensors header or GGUF tensor table) and the planner then uses them
    instead of deriving them from a format.
    """

    name: str
    role: Role
    shape: tuple[int, ...]
    count: int = 1
    layer: int | None = None
    stored_dtype: str | None = None
    stored_bytes: int | None = None
    #: A tensor that is part of a quantized layout (packed ints, scales, zeros):
    #: its bytes are kept as stored, never recast to the model dtype.
    quant_aux: bool = False

    @property
    def numel(self) -> int:
        return self.count * math.prod(self.shape)


class LayerKind(StrEnum):
    """How a layer's KV cache grows; mirrors the kinds a paged KV manager knows."""

    FULL = "full"  # full attention: grows with every token
    SLIDING = "sliding"  # sliding window: bounded by the window
    CHUNKED = "chunked"  # chunked local attention (Llama 4 iRoPE)
    MLA = "mla"  # multi-head latent attention: one compressed latent per token
    LINEAR = "linear"  # linear attention / Mamba: a fixed state per sequence
    CROSS = "cross"  # encoder-decoder cross attention: sized by encoder length


@dataclass(frozen=True)
class StateTensor:
    """A per-sequence recurrent state tensor of a linear-attention layer.

    ``elems`` is the element count at tensor-parallel size 1; it is split
    evenly across ranks. ``dtype`` is ``"auto"`` (the model dtype) or a
    concrete dtype such as ``"float32"``.
    """

    name: str
    elems: int
    dtype: str = "auto"
    #: Elements added per speculative token (a convolution state keeps that many more steps).
    elems_per_spec_token: int = 0


@dataclass(frozen=True)
class KVLayer:
    """One decoder layer as the KV cache sees it."""

    index: int
    kind: LayerKind
    num_kv_heads: int = 0
    head_size: int = 0
    #: Size of the value head; 0 when V is not stored separately (K=V tied).
    head_size_v: int = 0
    window: int | None = None
    mla_latent: int = 0
    states: tuple[StateTensor, ...] = ()
    #: Index of the layer whose KV this layer reuses (no cache of its own).
    shares_kv_with: int | None = None
    #: K and V are the same tensor (Gemma 4 global layers); engines that know
    #: it store one of them.
    k_eq_v: bool = False


@dataclass(frozen=True)
class RopeBuffer:
    """A rotary-embedding cos/sin table that engines keep on the GPU."""

    max_positions: int
    rotary_dim: int


@dataclass(frozen=True)
class MoEInfo:
    num_experts: int
    top_k: int
    intermediate_size: int
    shared_intermediate_size: int = 0
    num_moe_layers: int = 0


@dataclass(frozen=True)
class QuantInfo:
    """How a checkpoint is quantized, as its ``quantization_config`` says.

    ``method`` is one of the keys of :data:`labctl.catalog.formats.FORMATS`;
    ``scope`` lists the roles it converts (empty means every linear role);
    ``skip`` lists substrings of tensor names left unquantized.
    """

    method: str
    group_size: int | None = None
    symmetric: bool = True
    scope: frozenset[Role] = frozenset()
    skip: tuple[str, ...] = ()
    block: tuple[int, int] | None = None
    #: Mixed-precision checkpoints: (name pattern, method) pairs that override
    #: ``method`` for matching tensors; method "bf16" keeps them unquantized.
    overrides: tuple[tuple[str, str], ...] = ()

    def method_for(self, spec: WeightSpec) -> str | None:
        """The format ``spec`` is stored in, or None when it stays unquantized."""
        if len(spec.shape) < 2:
            return None
        for pattern, method in self.overrides:
            if _name_matches(pattern, spec.name):
                return None if method == "bf16" else method
        return self.method if self.covers(spec) else None

    def covers(self, spec: WeightSpec) -> bool:
        """Whether this format converts ``spec`` (1-D tensors never are)."""
        if len(spec.shape) < 2:
            return False
        plain, patterns = self._skip_kinds
        name = spec.name
        # Substring tests run in C (a skip list may name a few thousand modules).
        if any(map(name.__contains__, plain)) or any(_pattern_matches(p, name) for p in patterns):
            return False
        if self.scope:
            return spec.role in self.scope
        return spec.role in LINEAR_ROLES

    @functools.cached_property
    def _skip_kinds(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The skip list split into plain names and wildcard or regex patterns."""
        plain = tuple(p for p in self.skip if p and not _is_pattern(p))
        return plain, tuple(p for p in self.skip if p and _is_pattern(p))


def _is_pattern(pattern: str) -> bool:
    return pattern.startswith("re:") or any(ch in pattern for ch in "*?[")


def _name_matches(pattern: str, name: str) -> bool:
    """Match an ignore-list entry the way checkpoint configs write them."""
    if not pattern:
        return False
    if _is_pattern(pattern):
        return _pattern_matches(pattern, name)
    return pattern in name


@functools.lru_cache(maxsize=1 << 16)
def _pattern_matches(pattern: str, name: str) -> bool:
    """A wildcard or regular-expression match, remembered: the suggestions plan the same
    model a dozen times over and each plan matches every pattern against every name."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern + "*")


@dataclass(frozen=True)
class ModelArch:
    """The whole model as the planner sees it."""

    name: str
    model_type: str
    weights: tuple[WeightSpec, ...]
    kv_layers: tuple[KVLayer, ...]
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    dtype: str = "bfloat16"
    tie_word_embeddings: bool = False
    moe: MoEInfo | None = None
    quant: QuantInfo | None = None
    rope_buffers: tuple[RopeBuffer, ...] = ()
    #: Multi-token-prediction layers shipped with the model (used as a speculative drafter).
    mtp_layers: int = 0
    multimodal: bool = False
    #: Positions of an encoder-decoder model's encoder output, which cross-attention
    #: keeps per request (Whisper: 1,500 per 30 s chunk); 0 for decoder-only models.
    encoder_positions: int = 0
    #: Where the description came from: "catalog", a directory, a GGUF file.
    source: str = "catalog"
    #: Free-form facts worth showing (verified config, notes on caveats).
    notes: tuple[str, ...] = ()
    #: The file type of a GGUF model (per-tensor ggml types live in weights).
    gguf_file_type: str | None = None

    @property
    def param_count(self) -> int:
        """Logical parameters, MTP heads excluded (they are not served by default)."""
        return sum(w.numel for w in self.weights if w.role is not Role.MTP and not w.quant_aux)

    @property
    def active_param_count(self) -> int:
        """Parameters one token touches: routed experts count ``top_k`` of ``num_experts``."""
        total = 0
        for w in self.weights:
            if w.role is Role.MTP or w.quant_aux:
                continue
            if w.role is Role.EXPERT and self.moe is not None:
                total += w.numel * self.moe.top_k // max(self.moe.num_experts, 1)
            else:
                total += w.numel
        return total
