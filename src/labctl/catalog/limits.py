"""Bounds on what a model file may claim, and the checks that apply them.

A config.json, a safetensors header or a GGUF file is untrusted input: a number in it
decides how many layers the builder enumerates, how many tensors the planner sums and
how long its searches run. Each bound sits far above the largest published model
(named beside it, and in the error message), so no real model comes near it, while a
hostile file is refused before any work proportional to its claim is done.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from labctl.catalog.arch import LayerKind, ModelArch
from labctl.errors import ModelFormatError


@dataclass(frozen=True)
class Bound:
    """The largest value labctl accepts, and the published value it is measured against."""

    high: int
    published: str


# Architecture: about ten times the largest published value, rounded to a power of two.
LAYERS = Bound(2048, "126 (Llama 3.1 405B)")
HEADS = Bound(2048, "232 (Falcon 180B)")
HEAD_DIM = Bound(8192, "576 (DeepSeek-V3's MLA latent)")
HIDDEN = Bound(262_144, "18,432 (Nemotron-4 340B)")
INTERMEDIATE = Bound(1_048_576, "73,728 (Nemotron-4 340B)")
VOCAB = Bound(4_194_304, "262,400 (Gemma 3n)")
EXPERTS = Bound(8192, "512 (Qwen3-Next 80B-A3B)")
TOP_K = Bound(128, "10 (Qwen3-Next 80B-A3B)")
POSITIONS = Bound(134_217_728, "10,485,760 (Llama 4 Scout)")
MTP_LAYERS = Bound(32, "1 (DeepSeek-V3, GLM-4.5, Qwen3-Next)")
SMALL = Bound(64, "4 (Qwen3-Next's convolution kernel)")
PATCH = Bound(1024, "32 (CLIP ViT-B/32)")
IMAGE = Bound(65_536, "1,540 (Mistral Small 3.1's image size)")
MELS = Bound(4096, "128 (Whisper large-v3)")
PARAMS = Bound(10**12, "about 6e9 (InternViT-6B, a vision tower)")

#: Config and GGUF field names and their bounds; a count field not listed gets PARAMS.
LIMITS: dict[str, Bound] = {
    key: bound
    for keys, bound in (
        (
            (
                "num_hidden_layers",
                "num_layers",
                "n_layer",
                "encoder_layers",
                "decoder_layers",
                "depth",
                "block_count",
                "full_attention_interval",
                "sliding_window_pattern",
                "moe_layer_freq",
                "decoder_sparse_step",
                "interleave_moe_layer_step",
                "no_rope_layer_interval",
                "first_k_dense_replace",
                "num_kv_shared_layers",
                "leading_dense_block_count",
            ),
            LAYERS,
        ),
        (
            (
                "num_attention_heads",
                "num_key_value_heads",
                "num_global_key_value_heads",
                "decoder_attention_heads",
                "encoder_attention_heads",
                "linear_num_key_heads",
                "linear_num_value_heads",
                "attention.head_count",
                "attention.head_count_kv",
            ),
            HEADS,
        ),
        (
            (
                "head_dim",
                "global_head_dim",
                "qk_rope_head_dim",
                "qk_nope_head_dim",
                "v_head_dim",
                "linear_key_head_dim",
                "linear_value_head_dim",
                "attention.key_length",
                "attention.value_length",
                "rope.dimension_count",
            ),
            HEAD_DIM,
        ),
        (
            (
                "hidden_size",
                "d_model",
                "width",
                "kv_lora_rank",
                "q_lora_rank",
                "embedding_length",
                "attention.kv_lora_rank",
                "attention.q_lora_rank",
            ),
            HIDDEN,
        ),
        (
            (
                "intermediate_size",
                "moe_intermediate_size",
                "shared_expert_intermediate_size",
                "intermediate_size_mlp",
                "encoder_ffn_dim",
                "decoder_ffn_dim",
                "feed_forward_length",
                "expert_feed_forward_length",
                "expert_shared_feed_forward_length",
            ),
            INTERMEDIATE,
        ),
        (("vocab_size",), VOCAB),
        (
            (
                "num_experts",
                "num_local_experts",
                "n_routed_experts",
                "n_shared_experts",
                "expert_count",
                "expert_shared_count",
            ),
            EXPERTS,
        ),
        (
            (
                "num_experts_per_tok",
                "experts_per_token",
                "top_k_experts",
                "expert_used_count",
            ),
            TOP_K,
        ),
        (
            (
                "max_position_embeddings",
                "n_positions",
                "max_seq_len",
                "seq_length",
                "max_sequence_length",
                "original_max_position_embeddings",
                "sliding_window",
                "attention_chunk_size",
                "max_source_positions",
                "max_target_positions",
                "context_length",
                "attention.sliding_window",
            ),
            POSITIONS,
        ),
        (("mtp_num_hidden_layers", "num_nextn_predict_layers", "nextn_predict_layers"), MTP_LAYERS),
        (
            ("linear_conv_kernel_dim", "spatial_merge_size", "num_channels"),
            SMALL,
        ),
        (("patch_size",), PATCH),
        (("image_size",), IMAGE),
        (("num_mel_bins",), MELS),
    )
    for key in keys
}

# Files: how much of them is read, and how much they may declare.
#: Nesting of any JSON document labctl reads (config.json nests 4 levels, headers 3).
MAX_JSON_DEPTH = 64
#: config.json: real ones are under 100 KiB, the largest (quantization configs that
#: list modules) a few hundred KiB.
MAX_CONFIG_BYTES = 4 * 2**20
MAX_CONFIG_ITEMS = 2**19
#: Tensors of one checkpoint, all shards together: about 300,000 in the largest published
#: one (Qwen3-Next 80B-A3B in 4-bit GPTQ: four tensors for each of 73,728 expert projections).
MAX_TENSORS = Bound(2**19, "about 300,000 (Qwen3-Next 80B-A3B in 4-bit GPTQ)")
#: model.safetensors.index.json: 8.9 MB for DeepSeek-V3 (92,000 tensors).
MAX_INDEX_BYTES = 64 * 2**20
MAX_INDEX_ITEMS = 2 * MAX_TENSORS.high + 1024
#: JSON items (members and elements) in one safetensors header, which bounds the memory
#: its parse takes (~90 MB): about 115,000 tensors; a 5 GB shard holds a few thousand.
MAX_HEADER_ITEMS = 2**20
#: Shards of one checkpoint.
MAX_SHARDS = Bound(4096, "191 (Llama 3.1 405B in BF16)")
#: Dimensions of one tensor: 5 in published checkpoints (Conv3d patch embeddings).
MAX_TENSOR_DIMS = 16
#: Size of one tensor dimension: bitsandbytes packs a 53,248 x 16,384 matrix (Llama 3.1
#: 405B) into one column of 436,207,616.
MAX_DIM = Bound(2**36, "436,207,616 (a bitsandbytes 4-bit Llama 3.1 405B matrix)")
#: Length of a tensor name: published names are under 120 characters (ggml allows 63).
MAX_NAME = 1024
#: Weight entries of one model once identical tensors are grouped: ~2,000 in the largest
#: published models (per-expert tensors group into one entry per layer and projection);
#: the builder makes at most ~37,000 for a config at the layer bound.
MAX_WEIGHT_SPECS = Bound(2**16, "about 2,000 (Llama 3.1 405B)")
#: Distinct tensor names once layer and expert indices are set aside: a few hundred in
#: published checkpoints (a vision tower adds ~100).
MAX_NAME_PATTERNS = Bound(16_384, "a few hundred")

_REMEDY = "check it against the model's published files or re-download it"


def show(value: object, width: int = 60) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def bound_for(key: str) -> Bound:
    """The bound of a config field or GGUF key suffix (``PARAMS`` for unlisted counts)."""
    return LIMITS.get(key, PARAMS)


def whole(value: object, label: str, where: str, minimum: int = 0, bound: Bound = PARAMS) -> int:
    """``value`` as a count between ``minimum`` and ``bound``, or a one-line error.

    ``label`` names what is checked (``field 'num_hidden_layers'``).

    Raises:
        ModelFormatError: not a whole number (booleans, strings, NaN and infinities
            included), or outside the range.
    """
    span = f"a whole number from {minimum} to {bound.high:,}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFormatError(f"{where}: {label} must be {span}, got {show(value)}; {_REMEDY}")
    if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
        raise ModelFormatError(f"{where}: {label} must be {span}, got {value}; {_REMEDY}")
    n = int(value)
    if n < 0:
        raise ModelFormatError(
            f"{where}: {label} must not be negative, got {_num(n)}; it is {span}; {_REMEDY}"
        )
    if n < minimum:
        raise ModelFormatError(
            f"{where}: {label} is {n}, and no model works with that; it must be {span}; {_REMEDY}"
        )
    if n > bound.high:
        raise ModelFormatError(
            f"{where}: {label} is {_num(n)}, beyond the limit of {bound.high:,} (the largest "
            f"published model has {bound.published}); {_REMEDY}"
        )
    return n


def _num(n: int) -> str:
    """A count for a message; astronomically large ones by their order of magnitude."""
    return f"{n:,}" if abs(n) < 10**30 else f"about 2^{abs(n).bit_length() - 1}"


def check_arch(arch: ModelArch, where: str) -> ModelArch:
    """Refuse an architecture no engine could serve, whichever reader built it.

    The readers bound each field as they read it; this is the last line, over the
    derived numbers (head sizes computed from widths, windows, expert counts) that the
    planner divides by, loops over or searches up to.

    Raises:
        ModelFormatError: a count is zero where one is needed, or beyond its bound.
    """
    whole(arch.num_hidden_layers, "num_hidden_layers", where, 1, LAYERS)
    whole(arch.hidden_size, "hidden_size", where, 1, HIDDEN)
    whole(arch.num_attention_heads, "num_attention_heads", where, 1, HEADS)
    whole(arch.num_kv_heads, "num_key_value_heads", where, 1, HEADS)
    whole(arch.head_dim, "head_dim", where, 1, HEAD_DIM)
    whole(arch.intermediate_size, "intermediate_size", where, 0, INTERMEDIATE)
    whole(arch.vocab_size, "vocab_size", where, 1, VOCAB)
    whole(arch.max_position_embeddings, "context length", where, 1, POSITIONS)
    whole(arch.mtp_layers, "multi-token-prediction layers", where, 0, MTP_LAYERS)
    if arch.moe is not None and arch.moe.num_experts:
        experts = whole(arch.moe.num_experts, "expert count", where, 1, EXPERTS)
        top_k = whole(arch.moe.top_k, "experts per token", where, 0, TOP_K)
        if top_k > experts:
            raise ModelFormatError(
                f"{where}: experts per token {top_k} exceeds the {experts} experts; {_REMEDY}"
            )
        whole(arch.moe.intermediate_size, "expert intermediate size", where, 0, INTERMEDIATE)
        whole(arch.moe.shared_intermediate_size, "shared expert size", where, 0, INTERMEDIATE)
    if len(arch.kv_layers) > 2 * LAYERS.high:
        raise ModelFormatError(
            f"{where}: {len(arch.kv_layers):,} attention layers, beyond the limit of "
            f"{2 * LAYERS.high:,}; {_REMEDY}"
        )
    for layer in arch.kv_layers:
        # Every attention layer stores something per token (the planner divides by it).
        attention = layer.kind not in (LayerKind.LINEAR, LayerKind.MLA)
        whole(layer.num_kv_heads, "KV heads of a layer", where, int(attention), HEADS)
        whole(layer.head_size, "head size of a layer", where, int(attention), HEAD_DIM)
        whole(layer.head_size_v, "value head size of a layer", where, 0, HEAD_DIM)
        mla = layer.kind is LayerKind.MLA
        whole(layer.mla_latent, "MLA latent size", where, int(mla), HEAD_DIM)
        if layer.window is not None:
            whole(layer.window, "attention window", where, 1, POSITIONS)
        elif layer.kind in (LayerKind.SLIDING, LayerKind.CHUNKED):
            raise ModelFormatError(
                f"{where}: layer {layer.index} is {layer.kind.value} attention without a window "
                f"size; {_REMEDY}"
            )
    if len(arch.weights) > MAX_WEIGHT_SPECS.high:
        raise ModelFormatError(
            f"{where}: {len(arch.weights):,} distinct weight tensors, beyond the limit of "
            f"{MAX_WEIGHT_SPECS.high:,} (the largest published model has "
            f"{MAX_WEIGHT_SPECS.published}); {_REMEDY}"
        )
    for w in arch.weights:
        for d in w.shape:
            whole(d, f"tensor {show(w.name, 80)} dimension", where, 0, MAX_DIM)
    return arch
