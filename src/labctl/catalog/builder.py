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
)
from labctl.catalog.configview import (
    Config,
    ConfigView,
    WeightList,
    derived_max_model_len,
    dtype_of,
    model_type_of,
)
from labctl.catalog.formats import DTYPE_BYTES
from labctl.catalog.hybrid import nemotron_h
from labctl.catalog.limits import check_arch, show
from labctl.catalog.quantconfig import check_pattern_work, parse_quantization_config
from labctl.catalog.towers import (
    PRISMATIC_BACKBONES,
    TimmViT,
    audio_tower,
    prismatic_projector,
    timm_vit,
    vision_tower,
    whisper,
)
from labctl.errors import ModelFormatError

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
_MLA = frozenset(
    {"deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2", "kimi_vl", "deepseek_vl_v2"}
)


# ---------------------------------------------------------------------------
# config normalisation


def _text_config(cfg: ConfigView) -> tuple[ConfigView, ConfigView | None]:
    """Split a (possibly multimodal) config into its text part and its vision part."""
    for key in ("text_config", "llm_config", "language_config"):
        sub = cfg.sub(key)
        if sub is not None and (sub.has("hidden_size") or sub.has("num_hidden_layers")):
            merged = dict(sub.data)
            for inherit in ("tie_word_embeddings", "torch_dtype", "quantization_config"):
                if inherit not in merged and cfg.has(inherit):
                    merged[inherit] = cfg.data[inherit]
            text = ConfigView(merged, sub.where)
            vision = cfg.sub("vision_config")
            return text, vision
    return cfg, cfg.sub("vision_config")


# ---------------------------------------------------------------------------
# layer schedules


def _layer_types(text: ConfigView, model_type: str, n_layers: int) -> list[str]:
    """Attention type of each decoder layer: full, sliding, chunked, linear, mla."""
    raw = text.names("layer_types")
    if raw is not None and len(raw) >= n_layers:
        out = []
        for t in raw[:n_layers]:
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
        interval = text.int("full_attention_interval", 4, minimum=1)
        return ["full" if (i + 1) % interval == 0 else "linear" for i in range(n_layers)]
    window = text.window("sliding_window")
    if model_type == "gemma2":
        return ["sliding" if i % 2 == 0 else "full" for i in range(n_layers)]
    if model_type in ("gemma3", "gemma3_text", "gemma4", "gemma4_text"):
        pattern = text.int("sliding_window_pattern", 6, minimum=1)
        return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers)]
    if model_type in ("llama4", "llama4_text") and text.has("attention_chunk_size"):
        no_rope = text.get("no_rope_layers")
        if isinstance(no_rope, list) and len(no_rope) == n_layers:
            return ["chunked" if flag else "full" for flag in no_rope]
        step = text.int("no_rope_layer_interval", 4, minimum=1)
        return ["full" if (i + 1) % step == 0 else "chunked" for i in range(n_layers)]
    if model_type in _MLA or model_type == "kimi_vl":
        return ["mla"] * n_layers
    if window and (
        model_type in ("mistral", "mixtral", "phi3", "starcoder2")
        or (model_type.startswith("qwen2") and text.bool("use_sliding_window"))
    ):
        return ["sliding"] * n_layers
    return ["full"] * n_layers


def _moe_layers(text: ConfigView, model_type: str, n_layers: int, n_experts: int) -> list[bool]:
    if not n_experts:
        return [False] * n_layers
    if model_type in _MLA or model_type == "glm4_moe":
        first_dense = text.int("first_k_dense_replace", 0)
        freq = text.int("moe_layer_freq", 1, minimum=1)
        return [i >= first_dense and i % freq == 0 for i in range(n_layers)]
    if model_type in ("llama4", "llama4_text"):
        step = text.int("interleave_moe_layer_step", 1, minimum=1)
        if text.has("moe_layers"):
            moe_layers = text.indices("moe_layers")
            return [i in moe_layers for i in range(n_layers)]
        return [(i + 1) % step == 0 for i in range(n_layers)]
    only_dense = text.indices("mlp_only_layers")
    step = text.int("decoder_sparse_step", 1, minimum=1)
    return [i not in only_dense and (i + 1) % step == 0 for i in range(n_layers)]


# ---------------------------------------------------------------------------
# the decoder


def _decoder(cfg: ConfigView, text: ConfigView, name: str, w: WeightList) -> ModelArch:
    model_type = model_type_of(text) if text is not cfg else model_type_of(cfg)
    outer_type = model_type_of(cfg)
    hidden = text.int("hidden_size", minimum=1)
    n_layers = text.int("num_hidden_layers", minimum=1)
    n_heads = text.int("num_attention_heads", minimum=1)
    n_kv = text.int("num_key_value_heads", n_heads, minimum=1)
    head_dim = text.int("head_dim", hidden // n_heads, minimum=1)
    vocab = text.int("vocab_size", minimum=1)
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
    cross_layers = text.indices("cross_attention_layers")

    window = text.window("sliding_window")
    chunk = text.window("attention_chunk_size")
    # Gemma 4: global layers have their own KV geometry, possibly with K = V.
    k_eq_v = text.bool("attention_k_eq_v")
    g_kv = text.int("num_global_key_value_heads", n_kv, minimum=1) if k_eq_v else n_kv
    g_head = text.int("global_head_dim", head_dim, minimum=1)
    kv_shared_layers = min(text.int("num_kv_shared_layers", 0), n_layers)

    mla = model_type in _MLA or outer_type in _MLA
    if mla:
        q_lora = text.int("q_lora_rank", 0)
        kv_lora = text.int("kv_lora_rank", minimum=1)
        rope_d = text.int("qk_rope_head_dim")
        nope_d = text.int("qk_nope_head_dim")
        v_d = text.int("v_head_dim", minimum=1)

    lin = None
    ssm_dtype = "auto"
    if model_type in _QWEN35:
        lin = (
            text.int("linear_num_key_heads", minimum=1),
            text.int("linear_num_value_heads", minimum=1),
            text.int("linear_key_head_dim", minimum=1),
            text.int("linear_value_head_dim", minimum=1),
            text.int("linear_conv_kernel_dim", 4, minimum=1),
        )
        ssm_dtype = str(text.get("mamba_ssm_dtype", "auto")).removeprefix("torch.")
        if ssm_dtype != "auto" and ssm_dtype not in DTYPE_BYTES:
            raise ModelFormatError(
                f"{text.where}: field 'mamba_ssm_dtype' is {ssm_dtype[:40]!r}; use one of "
                f"auto, {', '.join(DTYPE_BYTES)}"
            )
    # Shared-KV layers reuse the cache of the last earlier layer of the same type.
    last_of_type: dict[str, int] = {}
    for j, kind in enumerate(types[: n_layers - kv_shared_layers]):
        last_of_type[kind] = j

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
                w.mat(f"{a}.q_a_proj.weight", Role.REPLICATED, q_lora, hidden, i)
                w.vec(f"{a}.q_a_layernorm.weight", q_lora, layer=i)
                w.mat(f"{a}.q_b_proj.weight", Role.ATTN_Q, n_heads * qk_d, q_lora, i)
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
            lwindow = window if kind == "sliding" else (chunk if kind == "chunked" else None)
            if lwindow is None and lkind in (LayerKind.SLIDING, LayerKind.CHUNKED):
                lkind = LayerKind.FULL  # a window of none (null or 0) attends to everything
            shares = None
            if kv_shared_layers and i >= n_layers - kv_shared_layers:
                shares = last_of_type.get(kind)
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
        dtype=dtype_of(cfg, text),
        tie_word_embeddings=tie,
        moe=moe,
        rope_buffers=rope_buffers,
        mtp_layers=mtp_layers,
    )


def _dense_mlp(
    w: WeightList,
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
    text: ConfigView,
    model_type: str,
    head_dim: int,
    global_head_dim: int,
    types: Sequence[str],
    mla_rope_dim: int,
) -> tuple[RopeBuffer, ...]:
    """Cos/sin tables engines keep on the GPU: one per distinct rotary setup."""
    max_pos = derived_max_model_len(text)
    if mla_rope_dim:
        return (RopeBuffer(max_pos, mla_rope_dim),)
    partial = text.number("partial_rotary_factor", 1.0, 0.0, 1.0)
    local = RopeBuffer(max_pos, int(head_dim * partial))
    if model_type in _GEMMA and "full" in types and "sliding" in types:
        # Local and global layers rotate with different bases: two tables. Gemma 4's
        # global layers rotate a quarter of their wider heads.
        factor = 0.25 if global_head_dim != head_dim else 1.0
        return (local, RopeBuffer(max_pos, int(global_head_dim * factor)))
    return (local,)


def _openvla(cfg: ConfigView, name: str, w: WeightList) -> ModelArch:
    """OpenVLA and Prismatic: Llama-2 behind one or two timm vision towers and a projector.

    The towers come from the config's ``timm_model_ids`` and ``image_sizes`` (the Hugging
    Face export), else from its ``vision_backbone_id`` (the catalog's copy); each tensor of
    each tower is listed as timm builds it (:class:`labctl.catalog.towers.TimmViT`), with
    the names of OpenVLA's checkpoint.
    """
    text = cfg.sub("text_config")
    if text is None:
        raise ModelFormatError(
            f"{cfg.where}: an OpenVLA config needs 'text_config' (the Llama backbone)"
        )
    merged = dict(text.data)
    merged.setdefault("model_type", "llama")
    arch = _decoder(ConfigView(merged, text.where), ConfigView(merged, text.where), name, w)
    towers = _prismatic_towers(cfg)
    for prefix, vit in zip(
        ("vision_backbone.featurizer", "vision_backbone.fused_featurizer"), towers, strict=False
    ):
        w.items.extend(vit.specs(prefix))
    vision_dim = sum(vit.width for vit in towers)
    w.items.extend(prismatic_projector(vision_dim, arch.hidden_size, fused=len(towers) == 2))
    # The whole model's type (``openvla``), not its backbone's: engines choose by it.
    return _replace(arch, model_type=model_type_of(cfg))


def _prismatic_towers(cfg: ConfigView) -> list[TimmViT]:
    ids = cfg.names("timm_model_ids")
    if ids is None:
        backbone = str(cfg.get("vision_backbone_id", ""))
        if backbone not in PRISMATIC_BACKBONES:
            raise ModelFormatError(
                f"{cfg.where}: vision_backbone_id {show(backbone)} is not one labctl knows "
                f"({', '.join(PRISMATIC_BACKBONES)}); give 'timm_model_ids' and 'image_sizes' "
                "as OpenVLA's Hugging Face config.json does"
            )
        ids = list(PRISMATIC_BACKBONES[backbone])
    sizes = cfg.get("image_sizes", [224] * len(ids))
    if not 1 <= len(ids) <= 2 or not isinstance(sizes, list) or len(sizes) != len(ids):
        raise ModelFormatError(
            f"{cfg.where}: 'timm_model_ids' must name one or two towers and 'image_sizes' give "
            f"one size for each, got {show(ids)} and {show(sizes)}"
        )
    towers = []
    for timm_id, size in zip(ids, sizes, strict=True):
        image = ConfigView({"image_size": size}, cfg.where).int("image_size", minimum=1)
        vit = timm_vit(timm_id, image)
        if vit is None:
            raise ModelFormatError(
                f"{cfg.where}: vision tower {show(timm_id)} is not one labctl knows; OpenVLA's are "
                "vit_large_patch14_reg4_dinov2 and vit_so400m_patch14_siglip_224"
            )
        towers.append(vit)
    return towers


def build_arch(config: Config, name: str, where: str = "config.json") -> ModelArch:
    """Turn a config.json dictionary into a :class:`ModelArch`.

    Raises:
        ModelFormatError: a required field is missing or has the wrong type.
    """
    if not isinstance(config, Mapping):
        raise ModelFormatError(f"{where}: the top level must be a JSON object")
    cfg = ConfigView(config, where)
    outer_type = model_type_of(cfg)
    w = WeightList()
    if outer_type == "whisper":
        arch = whisper(cfg, name, w)
    elif outer_type in ("openvla", "prismatic"):
        arch = _openvla(cfg, name, w)
    elif outer_type == "nemotron_h":
        arch = nemotron_h(cfg, name, w)
    else:
        text, vision = _text_config(cfg)
        arch = _decoder(cfg, text, name, w)
        vision_tower(vision, arch.hidden_size, cfg, w)
        audio_tower(cfg.sub("audio_config"), arch.hidden_size, w)
        if vision is not None or cfg.has("audio_config"):
            arch = _replace(arch, multimodal=True)
    quant = parse_quantization_config(config.get("quantization_config"), where)
    if quant is None and isinstance(cfg.get("text_config"), Mapping):
        quant = parse_quantization_config(config["text_config"].get("quantization_config"), where)
    arch = check_arch(_replace(arch, weights=tuple(w.items), quant=quant), where)
    check_pattern_work(quant, len(arch.weights), where)
    return arch


def _replace(arch: ModelArch, **changes: Any) -> ModelArch:
    return replace(arch, **changes)
