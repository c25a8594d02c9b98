"""Build a :class:`ModelArch` from a Hugging Face ``config.json`` dictionary.

The weight inventory is enumerated from the architecture, tensor by tensor,
with the names the checkpoints use, so that a quantization config's ignore
list applies to them as it would to the real file. The same code serves the
built-in catalog (which stores real config.json contents) and local
directories that have a config but no weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from labctl.catalog.arch import (
    KVLayer,
    LayerKind,
    ModelArch,
    MoEInfo,
    Role,
    RopeBuffer,
    StateTensor,
    WeightSpec,
)
from labctl.catalog.quantconfig import parse_quantization_config
from labctl.errors import ModelFormatError

Config = Mapping[str, Any]

#: model_type values whose feed-forward is a plain two-matrix MLP (no gate).
_UNGATED_MLP = frozenset({"phi", "gpt2", "starcoder2", "gpt_bigcode", "falcon", "gpt_neox"})
#: model_type values whose norms are LayerNorm (weight and bias) rather than RMSNorm.
_LAYERNORM = frozenset({"phi", "gpt2", "starcoder2", "gpt_bigcode", "falcon", "gpt_neox"})
#: model_type values with biases on q, k and v.
_QKV_BIAS = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "phi", "gpt_oss"})
#: model_type values with per-head RMS norms on q and k.
_QK_NORM = frozenset(
    {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "gemma4", "gemma4_text", "qwen3_next"}
)
_QWEN35 = frozenset({"qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next"})
_GEMMA = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gemma4", "gemma4_text"})
_MLA = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2", "kimi_vl", "deepseek_vl_v2"})


class _Cfg:
    """Typed access to one config dictionary, naming the file and key on errors."""

    def __init__(self, data: Config, where: str) -> None:
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def int(self, key: str, default: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise ModelFormatError(
                    f"{self.where}: required field {key!r} is missing; "
                    "check that the file is a Hugging Face config.json for a supported model"
                )
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be a whole number, got {value!r}"
            )
        if value < 0:
            raise ModelFormatError(f"{self.where}: field {key!r} must not be negative, got {value}")
        return int(value)

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be true or false, got {value!r}"
            )
        return value

    def sub(self, key: str) -> _Cfg | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ModelFormatError(f"{self.where}: field {key!r} must be an object, got {value!r}")
        return _Cfg(value, f"{self.where} {key}")


class _Weights:
    """Accumulates WeightSpecs with checkpoint-style names."""

    def __init__(self) -> None:
        self.items: list[WeightSpec] = []

    def mat(
        self, name: str, role: Role, out: int, inp: int, layer: int | None = None, count: int = 1
    ) -> None:
        if out and inp and count:
            self.items.append(WeightSpec(name, role, (out, inp), count=count, layer=layer))

    def vec(
        self, name: str, n: int, role: Role = Role.NORM, layer: int | None = None, count: int = 1
    ) -> None:
        if n and count:
            self.items.append(WeightSpec(name, role, (n,), count=count, layer=layer))

    def blob(self, name: str, role: Role, numel: int, layer: int | None = None) -> None:
        if numel:
            self.items.append(WeightSpec(name, role, (numel,), layer=layer))


# ---------------------------------------------------------------------------
# config normalisation


def _text_config(cfg: _Cfg) -> tuple[_Cfg, _Cfg | None]:
    """Split a (possibly multimodal) config into its text part and its vision part."""
    for key in ("text_config", "llm_config", "language_config"):
        sub = cfg.sub(key)
        if sub is not None and (sub.has("hidden_size") or sub.has("num_hidden_layers")):
            merged = dict(sub.data)
            for inherit in ("tie_word_embeddings", "torch_dtype", "quantization_config"):
                if inherit not in merged and cfg.has(inherit):
                    merged[inherit] = cfg.data[inherit]
            text = _Cfg(merged, sub.where)
            vision = cfg.sub("vision_config")
            return text, vision
    return cfg, cfg.sub("vision_config")


def _model_type(cfg: _Cfg) -> str:
    mt = cfg.get("model_type")
    if isinstance(mt, str) and mt:
        return mt
    arch = cfg.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return str(arch[0]).removesuffix("ForCausalLM").lower()
    raise ModelFormatError(
        f"{cfg.where}: neither 'model_type' nor 'architectures' is set; "
        "a Hugging Face config.json names the model type"
    )


def derived_max_model_len(text: _Cfg) -> int:
    """The context length an engine uses by default: the model's position limit,
    stretched by a RoPE scaling factor for scaling types that extend it."""
    base = 0
    for key in (
        "max_position_embeddings",
        "n_positions",
        "max_seq_len",
        "seq_length",
        "max_sequence_length",
    ):
        if text.has(key):
            base = text.int(key)
            break
    if not base:
        base = 2048
    scaling = text.get("rope_scaling") or {}
    if isinstance(scaling, Mapping):
        rtype = scaling.get("rope_type", scaling.get("type"))
        factor = scaling.get("factor")
        if (
            rtype in ("yarn", "dynamic", "linear")
            and isinstance(factor, int | float)
            and factor > 1
        ):
            original = scaling.get("original_max_position_embeddings")
            if rtype == "yarn" and isinstance(original, int):
                base = int(original * factor)
            else:
                base = int(base * factor)
    return base


def _dtype(cfg: _Cfg, text: _Cfg) -> str:
    for c in (text, cfg):
        value = c.get("torch_dtype") or c.get("dtype")
        if isinstance(value, str):
            return value.removeprefix("torch.")
    return "bfloat16"


# ---------------------------------------------------------------------------
# layer schedules


def _layer_types(text: _Cfg, model_type: str, n_layers: int) -> list[str]:
    """Attention type of each decoder layer: full, sliding, chunked, linear, mla."""
    raw = text.get("layer_types")
    if isinstance(raw, list) and len(raw) >= n_layers:
        out = []
        for t in raw[:n_layers]:
            t = str(t)
            if "linear" in t or "mamba" in t or "deltanet" in t:
                out.append("linear")
            elif "sliding" in t or "local" in t:
                out.append("sliding")
            elif "chunk" in t:
                out.append("chunked")
            else:
                out.append("full")
        return out
    if model_type in _QWEN35:
        interval = text.int("full_attention_interval", 4)
        return ["full" if (i + 1) % interval == 0 else "linear" for i in range(n_layers)]
    window = text.get("sliding_window")
    if model_type == "gemma2":
        return ["sliding" if i % 2 == 0 else "full" for i in range(n_layers)]
    if model_type in ("gemma3", "gemma3_text", "gemma4", "gemma4_text"):
        pattern = text.int("sliding_window_pattern", 6)
        return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers)]
    if model_type in ("llama4", "llama4_text") and text.has("attention_chunk_size"):
        no_rope = text.get("no_rope_layers")
        if isinstance(no_rope, list) and len(no_rope) == n_layers:
            return ["chunked" if flag else "full" for flag in no_rope]
        step = text.int("no_rope_layer_interval", 4)
        return ["full" if (i + 1) % step == 0 else "chunked" for i in range(n_layers)]
    if model_type in _MLA or model_type == "kimi_vl":
        return ["mla"] * n_layers
    if window and (
        model_type in ("mistral", "mixtral", "phi3", "starcoder2")
        or (model_type.startswith("qwen2") and text.bool("use_sliding_window"))
    ):
        return ["sliding"] * n_layers
    return ["full"] * n_layers


def _moe_layers(text: _Cfg, model_type: str, n_layers: int, n_experts: int) -> list[bool]:
    if not n_experts:
        return [False] * n_layers
    if model_type in _MLA:
        first_dense = text.int("first_k_dense_replace", 0)
        freq = text.int("moe_layer_freq", 1)
        return [i >= first_dense and i % freq == 0 for i in range(n_layers)]
    if model_type in ("llama4", "llama4_text"):
        step = text.int("interleave_moe_layer_step", 1)
        moe_layers = text.get("moe_layers")
        if isinstance(moe_layers, list):
            return [i in moe_layers for i in range(n_layers)]
        return [(i + 1) % step == 0 for i in range(n_layers)]
    only_dense = text.get("mlp_only_layers") or []
    step = text.int("decoder_sparse_step", 1)
    return [i not in only_dense and (i + 1) % step == 0 for i in range(n_layers)]


# ---------------------------------------------------------------------------
# the decoder


def _decoder(cfg: _Cfg, text: _Cfg, name: str, w: _Weights) -> ModelArch:
    model_type = _model_type(text) if text is not cfg else _model_type(cfg)
    outer_type = _model_type(cfg)
    hidden = text.int("hidden_size")
    n_layers = text.int("num_hidden_layers")
    n_heads = text.int("num_attention_heads")
    n_kv = text.int("num_key_value_heads", n_heads)
    head_dim = text.int("head_dim", hidden // max(n_heads, 1))
    vocab = text.int("vocab_size")
    tie = text.bool("tie_word_embeddings", model_type in _GEMMA)
    layernorm = model_type in _LAYERNORM
    norm_n = 2 if layernorm else 1
    gated = model_type not in _UNGATED_MLP
    qkv_bias = text.bool("attention_bias", model_type in _QKV_BIAS) or text.bool("qkv_bias")
    o_bias = model_type in ("phi", "gpt_oss") or text.bool("o_bias")
    mlp_bias = text.bool("mlp_bias", model_type in _UNGATED_MLP)
    qk_norm = model_type in _QK_NORM or model_type in _QWEN35

    n_experts = (
        text.int("num_experts", 0)
        or text.int("num_local_experts", 0)
        or text.int("n_routed_experts", 0)
    )
    if model_type in ("gemma4", "gemma4_text") and not text.bool("enable_moe_block", n_experts > 0):
        n_experts = 0
    top_k = (
        text.int("num_experts_per_tok", 0)
        or text.int("experts_per_token", 0)
        or text.int("top_k_experts", 0)
    )
    dense_inter = text.int("intermediate_size", 0)
    if model_type in ("llama4", "llama4_text"):
        moe_inter = dense_inter
        dense_inter = text.int("intermediate_size_mlp", dense_inter)
    elif model_type in ("mixtral", "gpt_oss"):
        moe_inter = dense_inter
    else:
        moe_inter = text.int("moe_intermediate_size", dense_inter)
    shared_inter = text.int("shared_expert_intermediate_size", 0)
    if text.has("n_shared_experts"):
        shared_inter = text.int("n_shared_experts") * moe_inter
    if model_type in ("llama4", "llama4_text") and n_experts:
        shared_inter = moe_inter
    gemma4_moe = model_type in ("gemma4", "gemma4_text") and n_experts > 0
    moe_flags = _moe_layers(text, model_type, n_layers, n_experts)
    types = _layer_types(text, model_type, n_layers)
    cross_layers = set(text.get("cross_attention_layers") or [])

    window = text.get("sliding_window")
    window = int(window) if isinstance(window, int | float) and window else None
    chunk = text.get("attention_chunk_size")
    # Gemma 4: global layers have their own KV geometry, possibly with K = V.
    k_eq_v = text.bool("attention_k_eq_v")
    g_kv = text.int("num_global_key_value_heads", n_kv) if k_eq_v else n_kv
    g_head = text.int("global_head_dim", head_dim)
    kv_shared_layers = text.int("num_kv_shared_layers", 0)

    mla = model_type in _MLA or outer_type in _MLA
    if mla:
        q_lora = text.get("q_lora_rank")
        kv_lora = text.int("kv_lora_rank")
        rope_d = text.int("qk_rope_head_dim")
        nope_d = text.int("qk_nope_head_dim")
        v_d = text.int("v_head_dim")

    lin = None
    if model_type in _QWEN35:
        lin = (
            text.int("linear_num_key_heads"),
            text.int("linear_num_value_heads"),
            text.int("linear_key_head_dim"),
            text.int("linear_value_head_dim"),
            text.int("linear_conv_kernel_dim", 4),
        )

    kv_layers: list[KVLayer] = []
    w.mat("model.embed_tokens.weight", Role.EMBED, vocab, hidden)
    for i in range(n_layers):
        p = f"model.layers.{i}"
        kind = types[i]
        w.vec(f"{p}.input_layernorm.weight", hidden * norm_n, layer=i)
        if model_type not in ("phi",):
            w.vec(f"{p}.post_attention_layernorm.weight", hidden * norm_n, layer=i)
        if model_type in ("gemma2", "gemma3", "gemma3_text", "gemma4", "gemma4_text"):
            w.vec(f"{p}.pre_feedforward_layernorm.weight", hidden, layer=i)
            w.vec(f"{p}.post_feedforward_layernorm.weight", hidden, layer=i)

        if kind == "linear" and lin is not None:
            nk, nv, dk, dv, kernel = lin
            conv_dim = 2 * nk * dk + nv * dv
            a = f"{p}.linear_attn"
            w.mat(
                f"{a}.in_proj_qkvz.weight", Role.LINEAR_ATTN, 2 * nk * dk + 2 * nv * dv, hidden, i
            )
            w.mat(f"{a}.in_proj_ba.weight", Role.LINEAR_ATTN, 2 * nv, hidden, i)
            w.vec(f"{a}.conv1d.weight", conv_dim * kernel, Role.NORM, i)
            w.vec(f"{a}.dt_bias", nv, layer=i)
            w.vec(f"{a}.A_log", nv, layer=i)
            w.vec(f"{a}.norm.weight", dv, layer=i)
            w.mat(f"{a}.out_proj.weight", Role.LINEAR_ATTN, hidden, nv * dv, i)
            ssm_dtype = str(text.get("mamba_ssm_dtype", "auto")).removeprefix("torch.")
            kv_layers.append(
                KVLayer(
                    i,
                    LayerKind.LINEAR,
                    states=(
                        StateTensor("conv", conv_dim * (kernel - 1), "auto", conv_dim),
                        StateTensor("ssm", nv * dk * dv, ssm_dtype),
                    ),
                )
            )
        elif mla:
            a = f"{p}.self_attn"
            qk_d = nope_d + rope_d
            if q_lora:
                w.mat(f"{a}.q_a_proj.weight", Role.REPLICATED, int(q_lora), hidden, i)
                w.vec(f"{a}.q_a_layernorm.weight", int(q_lora), layer=i)
                w.mat(f"{a}.q_b_proj.weight", Role.ATTN_Q, n_heads * qk_d, int(q_lora), i)
            else:
                w.mat(f"{a}.q_proj.weight", Role.ATTN_Q, n_heads * qk_d, hidden, i)
            w.mat(f"{a}.kv_a_proj_with_mqa.weight", Role.REPLICATED, kv_lora + rope_d, hidden, i)
            w.vec(f"{a}.kv_a_layernorm.weight", kv_lora, layer=i)
            w.mat(f"{a}.kv_b_proj.weight", Role.ATTN_Q, n_heads * (nope_d + v_d), kv_lora, i)
            w.mat(f"{a}.o_proj.weight", Role.ATTN_O, hidden, n_heads * v_d, i)
            kv_layers.append(
                KVLayer(
                    i,
                    LayerKind.MLA,
                    num_kv_heads=1,
                    head_size=kv_lora + rope_d,
                    mla_latent=kv_lora + rope_d,
                )
            )
        else:
            is_global = kind == "full"
            kvh = g_kv if is_global else n_kv
            hd = g_head if is_global else head_dim
            tied_kv = k_eq_v and is_global
            a = f"{p}.self_attn"
            q_out = n_heads * hd * (2 if text.bool("attn_output_gate") else 1)
            w.mat(f"{a}.q_proj.weight", Role.ATTN_Q, q_out, hidden, i)
            w.mat(f"{a}.k_proj.weight", Role.ATTN_KV, kvh * hd, hidden, i)
            if not tied_kv:
                w.mat(f"{a}.v_proj.weight", Role.ATTN_KV, kvh * hd, hidden, i)
            w.mat(f"{a}.o_proj.weight", Role.ATTN_O, hidden, n_heads * hd, i)
            if qkv_bias:
                w.vec(f"{a}.q_proj.bias", q_out, Role.ATTN_Q, i)
                w.vec(f"{a}.k_proj.bias", kvh * hd, Role.ATTN_KV, i)
                w.vec(f"{a}.v_proj.bias", kvh * hd, Role.ATTN_KV, i)
            if o_bias:
                w.vec(f"{a}.o_proj.bias", hidden, layer=i)
            if model_type == "gpt_oss":
                w.vec(f"{a}.sinks", n_heads, Role.ATTN_Q, i)
            if qk_norm:
                w.vec(f"{a}.q_norm.weight", hd, layer=i)
                w.vec(f"{a}.k_norm.weight", hd, layer=i)
            lkind = {"sliding": LayerKind.SLIDING, "chunked": LayerKind.CHUNKED}.get(
                kind, LayerKind.FULL
            )
            if i in cross_layers:
                lkind = LayerKind.CROSS  # attends to image tokens, not to the text
            lwindow = (
                window
                if kind == "sliding"
                else (int(chunk) if kind == "chunked" and chunk else None)
            )
            shares = None
            if kv_shared_layers and i >= n_layers - kv_shared_layers:
                # Shared-KV layers reuse the cache of the last earlier layer of the same type.
                shares = next(
                    (j for j in range(n_layers - kv_shared_layers - 1, -1, -1) if types[j] == kind),
                    None,
                )
            kv_layers.append(
                KVLayer(
                    i,
                    lkind,
                    num_kv_heads=kvh,
                    head_size=hd,
                    head_size_v=hd,
                    window=lwindow,
                    shares_kv_with=shares,
                    k_eq_v=tied_kv,
                )
            )

        m = f"{p}.mlp"
        if moe_flags[i]:
            w.mat(f"{m}.gate.weight", Role.ROUTER, n_experts, hidden, i)
            if model_type == "gpt_oss":
                w.vec(f"{m}.router.bias", n_experts, layer=i)
            if gemma4_moe:
                # Gemma 4 runs a dense MLP beside the routed experts in every layer.
                _dense_mlp(w, f"{p}.mlp", hidden, dense_inter, gated, mlp_bias, i, Role.MLP)
                w.vec(f"{p}.router.scale", hidden + n_experts, layer=i)
                w.vec(f"{p}.post_feedforward_layernorm_1.weight", hidden * 3, layer=i)
                m = f"{p}.moe"
            w.mat(
                f"{m}.experts.gate_up_proj", Role.EXPERT, 2 * moe_inter, hidden, i, count=n_experts
            )
            w.mat(f"{m}.experts.down_proj", Role.EXPERT, hidden, moe_inter, i, count=n_experts)
            if model_type == "gpt_oss":
                w.vec(
                    f"{m}.experts.gate_up_proj_bias", 2 * moe_inter, Role.NORM, i, count=n_experts
                )
                w.vec(f"{m}.experts.down_proj_bias", hidden, Role.NORM, i, count=n_experts)
            if shared_inter:
                _dense_mlp(
                    w,
                    f"{m}.shared_expert",
                    hidden,
                    shared_inter,
                    True,
                    False,
                    i,
                    Role.SHARED_EXPERT,
                )
                if model_type == "qwen2_moe":
                    w.mat(f"{m}.shared_expert_gate.weight", Role.ROUTER, 1, hidden, i)
            if mla and text.get("topk_method") == "noaux_tc":
                w.vec(f"{m}.gate.e_score_correction_bias", n_experts, layer=i)
        else:
            _dense_mlp(w, m, hidden, dense_inter, gated, mlp_bias, i, Role.MLP)

    w.vec("model.norm.weight", hidden * norm_n)
    if not tie:
        w.mat("lm_head.weight", Role.LM_HEAD, vocab, hidden)
        if model_type == "phi":
            w.vec("lm_head.bias", vocab, Role.LM_HEAD)
    mtp_layers = text.int("mtp_num_hidden_layers", 0) or text.int("num_nextn_predict_layers", 0)
    if mtp_layers:
        per_layer = sum(x.numel for x in w.items if x.layer == n_layers - 1)
        w.blob("mtp.layers", Role.MTP, mtp_layers * (per_layer + 2 * hidden * hidden))

    rope_buffers = _rope_buffers(text, model_type, head_dim, g_head, types, rope_d if mla else 0)
    moe = None
    if n_experts:
        moe = MoEInfo(n_experts, top_k, moe_inter, shared_inter, sum(moe_flags))
    return ModelArch(
        name=name,
        model_type=outer_type,
        weights=(),
        kv_layers=tuple(kv_layers),
        num_hidden_layers=n_layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=dense_inter,
        max_position_embeddings=derived_max_model_len(text),
        dtype=_dtype(cfg, text),
        tie_word_embeddings=tie,
        moe=moe,
        rope_buffers=rope_buffers,
        mtp_layers=mtp_layers,
    )


def _dense_mlp(
    w: _Weights,
    prefix: str,
    hidden: int,
    inter: int,
    gated: bool,
    bias: bool,
    layer: int,
    role: Role,
) -> None:
    if gated:
        w.mat(f"{prefix}.gate_proj.weight", role, inter, hidden, layer)
        w.mat(f"{prefix}.up_proj.weight", role, inter, hidden, layer)
        w.mat(f"{prefix}.down_proj.weight", role, hidden, inter, layer)
    else:
        w.mat(f"{prefix}.fc1.weight", role, inter, hidden, layer)
        w.mat(f"{prefix}.fc2.weight", role, hidden, inter, layer)
    if bias:
        w.vec(f"{prefix}.fc1.bias", inter * (2 if gated else 1), role, layer)
        w.vec(f"{prefix}.fc2.bias", hidden, Role.NORM, layer)


def _rope_buffers(
    text: _Cfg,
    model_type: str,
    head_dim: int,
    global_head_dim: int,
    types: Sequence[str],
    mla_rope_dim: int,
) -> tuple[RopeBuffer, ...]:
    """Cos/sin tables engines keep on the GPU: one per distinct rotary setup."""
    max_pos = derived_max_model_len(text)
    if model_type in ("phi",) or model_type in _QWEN35:
        factor = float(text.get("partial_rotary_factor", 1.0))
        return (RopeBuffer(max_pos, int(head_dim * factor)),)
    if mla_rope_dim:
        return (RopeBuffer(max_pos, mla_rope_dim),)
    buffers = {RopeBuffer(max_pos, head_dim)}
    if "full" in types and "sliding" in types and global_head_dim != head_dim:
        buffers.add(RopeBuffer(max_pos, int(global_head_dim * 0.25)))
    elif "full" in types and "sliding" in types and model_type in ("gemma3", "gemma3_text"):
        buffers.add(RopeBuffer(max_pos, head_dim))
        return (RopeBuffer(max_pos, head_dim), RopeBuffer(max_pos, head_dim))
    return tuple(sorted(buffers, key=lambda b: b.rotary_dim))


# ---------------------------------------------------------------------------
# towers: vision, audio, projector


def vit_params(
    hidden: int,
    inter: int,
    layers: int,
    patch: int,
    image: int,
    channels: int = 3,
    gated: bool = False,
    bias: bool = True,
    cls_token: bool = False,
) -> int:
    """Parameters of a standard pre-norm ViT encoder."""
    attn = 4 * hidden * hidden + (4 * hidden if bias else 0)
    mlp = (3 if gated else 2) * hidden * inter + ((inter + hidden) if bias else 0)
    norms = 4 * hidden if bias else 2 * hidden
    per_layer = attn + mlp + norms
    patches = (image // patch) ** 2 + (1 if cls_token else 0)
    embed = channels * patch * patch * hidden + hidden + patches * hidden
    return layers * per_layer + embed + 2 * hidden


def _vision(vision: _Cfg | None, text_hidden: int, outer: _Cfg, w: _Weights) -> None:
    if vision is None:
        return
    if vision.has("vision_params"):
        w.blob("vision_tower", Role.VISION, vision.int("vision_params"))
        return
    hidden = vision.int("hidden_size", vision.int("width", 0))
    if not hidden:
        return
    layers = vision.int("num_hidden_layers", vision.int("depth", 0))
    inter = vision.int("intermediate_size", 4 * hidden)
    patch = vision.int("patch_size", 14)
    image = vision.int("image_size", 224)
    vtype = str(vision.get("model_type", ""))
    gated = vtype in ("pixtral", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
    n = vit_params(
        hidden, inter, layers, patch, image, vision.int("num_channels", 3), gated, not gated
    )
    w.blob("vision_tower", Role.VISION, n)
    merge = outer.int("spatial_merge_size", vision.int("spatial_merge_size", 1))
    feature_layers = outer.get("vision_feature_layer")
    n_features = len(feature_layers) if isinstance(feature_layers, list) else 1
    proj_in = hidden * merge * merge * n_features
    proj = proj_in * text_hidden + text_hidden * text_hidden + 2 * text_hidden
    if merge > 1:
        proj += proj_in * hidden
    w.blob("multi_modal_projector", Role.VISION, proj)


def _whisper(cfg: _Cfg, name: str, w: _Weights) -> ModelArch:
    d = cfg.int("d_model")
    enc_layers = cfg.int("encoder_layers")
    dec_layers = cfg.int("decoder_layers")
    heads = cfg.int("decoder_attention_heads")
    enc_ffn = cfg.int("encoder_ffn_dim")
    dec_ffn = cfg.int("decoder_ffn_dim")
    vocab = cfg.int("vocab_size")
    mels = cfg.int("num_mel_bins", 80)
    src = cfg.int("max_source_positions", 1500)
    tgt = cfg.int("max_target_positions", 448)
    head_dim = d // heads

    def attn(prefix: str, layer: int, role_q: Role = Role.ATTN_Q) -> None:
        w.mat(f"{prefix}.q_proj.weight", role_q, d, d, layer)
        w.mat(f"{prefix}.k_proj.weight", Role.ATTN_KV, d, d, layer)
        w.mat(f"{prefix}.v_proj.weight", Role.ATTN_KV, d, d, layer)
        w.mat(f"{prefix}.out_proj.weight", Role.ATTN_O, d, d, layer)
        w.vec(f"{prefix}.biases", 4 * d - d, Role.NORM, layer)
        w.vec(f"{prefix}_layer_norm", 2 * d, layer=layer)

    # The encoder runs once per request; it is a tower on the first rank.
    enc_layer = 4 * d * d + 3 * d + 2 * d + 2 * d * enc_ffn + enc_ffn + d + 2 * d
    enc = enc_layers * enc_layer + mels * d * 3 + d + d * d * 3 + d + src * d + 2 * d
    w.blob("model.encoder", Role.VISION, enc)
    w.mat("model.decoder.embed_tokens.weight", Role.EMBED, vocab, d)
    w.vec("model.decoder.embed_positions.weight", tgt * d, Role.NORM)
    kv_layers: list[KVLayer] = []
    for i in range(dec_layers):
        p = f"model.decoder.layers.{i}"
        attn(f"{p}.self_attn", i)
        attn(f"{p}.encoder_attn", i)
        w.mat(f"{p}.fc1.weight", Role.MLP, dec_ffn, d, i)
        w.mat(f"{p}.fc2.weight", Role.MLP, d, dec_ffn, i)
        w.vec(f"{p}.fc_biases", dec_ffn + d, Role.NORM, i)
        w.vec(f"{p}.final_layer_norm", 2 * d, layer=i)
        kv_layers.append(KVLayer(i, LayerKind.FULL, heads, head_dim, head_dim))
    for i in range(dec_layers):
        kv_layers.append(KVLayer(dec_layers + i, LayerKind.CROSS, heads, head_dim, head_dim))
    w.vec("model.decoder.layer_norm", 2 * d)
    return ModelArch(
        name=name,
        model_type="whisper",
        weights=(),
        kv_layers=tuple(kv_layers),
        num_hidden_layers=dec_layers,
        hidden_size=d,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=dec_ffn,
        max_position_embeddings=tgt,
        dtype=_dtype(cfg, cfg),
        tie_word_embeddings=True,
        encoder_positions=src,
        multimodal=True,
    )


def _openvla(cfg: _Cfg, name: str, w: _Weights) -> ModelArch:
    text = cfg.sub("text_config")
    if text is None:
        raise ModelFormatError(
            f"{cfg.where}: an OpenVLA config needs 'text_config' (the Llama backbone)"
        )
    merged = dict(text.data)
    merged.setdefault("model_type", "llama")
    arch = _decoder(_Cfg(merged, text.where), _Cfg(merged, text.where), name, w)
    # Fused DINOv2 ViT-L/14 and SigLIP So400m/14 at 224 px, then a 3-layer GELU MLP projector.
    dino = vit_params(1024, 4096, 24, 14, 224, cls_token=True) + 4 * 1024 + 2 * 1024 * 24
    siglip = vit_params(1152, 4304, 27, 14, 224)
    fused = 1024 + 1152
    hidden = arch.hidden_size
    projector = (
        fused * 4 * fused + 4 * fused + 4 * fused * hidden + hidden + hidden * hidden + hidden
    )
    w.blob("vision_backbone.featurizer", Role.VISION, dino)
    w.blob("vision_backbone.fused_featurizer", Role.VISION, siglip)
    w.blob("projector", Role.VISION, projector)
    return arch


def build_arch(config: Config, name: str, where: str = "config.json") -> ModelArch:
    """Turn a config.json dictionary into a :class:`ModelArch`.

    Raises:
        ModelFormatError: a required field is missing or has the wrong type.
    """
    if not isinstance(config, Mapping):
        raise ModelFormatError(f"{where}: the top level must be a JSON object")
    cfg = _Cfg(config, where)
    outer_type = _model_type(cfg)
    w = _Weights()
    if outer_type == "whisper":
        arch = _whisper(cfg, name, w)
    elif outer_type in ("openvla", "prismatic"):
        arch = _openvla(cfg, name, w)
    else:
        text, vision = _text_config(cfg)
        arch = _decoder(cfg, text, name, w)
        _vision(vision, arch.hidden_size, cfg, w)
        if vision is not None:
            arch = _replace(arch, multimodal=True)
    quant = parse_quantization_config(config.get("quantization_config"), where)
    if quant is None and isinstance(cfg.get("text_config"), Mapping):
        quant = parse_quantization_config(config["text_config"].get("quantization_config"), where)
    return _replace(arch, weights=tuple(w.items), quant=quant)


def _replace(arch: ModelArch, **changes: Any) -> ModelArch:
    return replace(arch, **changes)


def check_divisible(arch: ModelArch, tp: int) -> None:
    """Raise when tensor parallelism cannot split this model's heads evenly."""
    if tp < 1:
        raise ModelFormatError(f"tensor parallel size must be at least 1, got {tp}")
    if arch.num_attention_heads % tp:
        raise ModelFormatError(
            f"--tensor-parallel-size {tp} does not divide the {arch.num_attention_heads} attention "
            f"heads of {arch.name}; use one of {divisors(arch.num_attention_heads)}"
        )
    if arch.num_kv_heads and arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise ModelFormatError(
            f"--tensor-parallel-size {tp} neither divides nor is a multiple of the "
            f"{arch.num_kv_heads} KV heads of {arch.name}"
        )


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and d <= 64]
