"""Nemotron-H (``nemotron_h``): NVIDIA's hybrid of Mamba-2, attention, MLP and MoE layers.

Nemotron 3 Nano and Super, and the Nemotron-H family before them, build each decoder
layer from one kind of mixer, named by one character of ``hybrid_override_pattern``
(or one entry of the newer ``layers_block_type`` list): ``M`` a Mamba-2 mixer, ``*``
grouped-query attention, ``-`` a dense MLP, ``E`` a mixture of experts. Every layer has
one RMS norm in front of its mixer. The shapes follow vLLM's ``nemotron_h.py`` and its
``MambaMixer2``; the tensor names are the checkpoint's (``backbone.layers.N.mixer.…``),
so a quantization config's module lists apply to them as to the real file.

- Mamba-2: ``in_proj`` to ``2·d_inner + 2·n_groups·d_state + heads`` (gate, x, B, C, dt),
  a depthwise convolution over ``d_inner + 2·n_groups·d_state`` channels, ``dt_bias``,
  ``A_log`` and ``D`` per head, a gated RMS norm over ``d_inner`` and ``out_proj``;
  ``d_inner`` is ``mamba_num_heads × mamba_head_dim``. Its per-sequence state is the
  convolution window (``conv_dim × (conv_kernel − 1)``, in the model dtype) and the SSM
  state (``heads × head_dim × d_state``, in ``mamba_ssm_cache_dtype``, float32 unless
  the config says otherwise, as vLLM's NemotronH config hook sets it).
- Attention: q, k, v and o without biases and without rotary embeddings; the only
  layers whose cache grows with the context.
- MLP and experts: squared ReLU, no gate (``up_proj`` and ``down_proj`` only).
- MoE: a sigmoid router with a float32 score-correction bias, routed experts, a shared
  expert of ``moe_shared_expert_intermediate_size × n_shared_experts``; with
  ``moe_latent_size`` (Super's LatentMoE) the routed experts work in that latent width
  between ``fc1_latent_proj`` and ``fc2_latent_proj``.
- Multi-token prediction (Super): ``num_nextn_predict_layers`` repeats of
  ``mtp_hybrid_override_pattern`` plus the ``eh_proj`` that joins embedding and hidden
  state and three norms, counted as one MTP entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, MoEInfo, Role, StateTensor
from labctl.catalog.configview import ConfigView, WeightList, derived_max_model_len, dtype_of
from labctl.catalog.formats import DTYPE_BYTES
from labctl.catalog.limits import (
    EXPERTS,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    SMALL,
    Bound,
    show,
    whole,
)
from labctl.errors import ModelFormatError

#: Pattern characters and the ``layers_block_type`` names they stand for.
BLOCKS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_BY_NAME = {name: char for char, name in BLOCKS.items()}


@dataclass(frozen=True)
class _Dims:
    """The widths every layer of one kind shares."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_inter: int
    mlp_bias: bool
    m_heads: int
    m_head_dim: int
    groups: int
    d_state: int
    kernel: int
    conv_bias: bool
    proj_bias: bool
    ssm_dtype: str
    experts: int
    top_k: int
    moe_inter: int
    shared_inter: int
    latent: int

    @property
    def d_inner(self) -> int:
        return self.m_heads * self.m_head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.groups * self.d_state


def _count(
    cfg: ConfigView, key: str, bound: Bound, default: int | None = None, minimum: int = 1
) -> int:
    """A width the shared limits table does not name, held to ``bound``."""
    value = cfg.get(key, default)
    if value is None:
        raise ModelFormatError(
            f"{cfg.where}: required field {key!r} is missing; a nemotron_h config.json "
            "sets it (see the model's published config)"
        )
    return whole(value, f"field {key!r}", cfg.where, minimum, bound)


def _schedule(cfg: ConfigView, pattern_key: str, list_key: str, default: str | None) -> str:
    """The layer kinds as a pattern string, from ``pattern_key`` or else ``list_key``."""
    raw = cfg.get(pattern_key)
    if raw is None and cfg.has(list_key):
        names = cfg.names(list_key) or []
        if len(names) > LAYERS.high:
            raise ModelFormatError(
                f"{cfg.where}: field {list_key!r} lists {len(names):,} layers, beyond the "
                f"limit of {LAYERS.high:,}; check it against the model's published config.json"
            )
        unknown = [n for n in names if n not in _BY_NAME]
        if unknown:
            raise ModelFormatError(
                f"{cfg.where}: field {list_key!r} holds {show(unknown[0])}; the block types "
                f"are {', '.join(_BY_NAME)}"
            )
        return "".join(_BY_NAME[n] for n in names)
    if raw is None:
        raw = default
    if not isinstance(raw, str) or not raw or len(raw) > LAYERS.high:
        raise ModelFormatError(
            f"{cfg.where}: field {pattern_key!r} must be a string of one character a layer "
            f"(at most {LAYERS.high:,}), got {show(raw)}; a nemotron_h config.json sets it"
        )
    bad = set(raw) - set(BLOCKS)
    if bad:
        raise ModelFormatError(
            f"{cfg.where}: field {pattern_key!r} holds {show(min(bad))}; each character is "
            "M (Mamba-2), * (attention), - (MLP) or E (mixture of experts)"
        )
    return raw


def _dims(cfg: ConfigView, pattern: str) -> _Dims:
    """The widths of ``cfg``, each checked; a layer kind's fields are required only when
    ``pattern`` uses that kind."""
    hidden = cfg.int("hidden_size", minimum=1)
    heads = cfg.int("num_attention_heads", minimum=1)
    ssm_dtype = str(cfg.get("mamba_ssm_cache_dtype", "float32")).removeprefix("torch.")
    if ssm_dtype not in DTYPE_BYTES:
        raise ModelFormatError(
            f"{cfg.where}: field 'mamba_ssm_cache_dtype' is {show(ssm_dtype)}; use one of "
            f"{', '.join(DTYPE_BYTES)}"
        )
    mamba, mlp, moe = "M" in pattern, "-" in pattern, "E" in pattern
    experts = cfg.int("n_routed_experts", minimum=1) if moe else 0
    top_k = cfg.int("num_experts_per_tok", minimum=1) if moe else 0
    if top_k > experts:
        raise ModelFormatError(
            f"{cfg.where}: num_experts_per_tok {top_k} exceeds the {experts} routed experts; "
            "check it against the model's published config.json"
        )
    shared = _count(cfg, "n_shared_experts", EXPERTS, 1, minimum=0) if moe else 0
    shared_inter = _count(cfg, "moe_shared_expert_intermediate_size", INTERMEDIATE, 0, 0)
    return _Dims(
        hidden=hidden,
        heads=heads,
        kv_heads=cfg.int("num_key_value_heads", heads, minimum=1),
        head_dim=cfg.int("head_dim", hidden // heads, minimum=1),
        mlp_inter=cfg.int("intermediate_size", None if mlp else 0, minimum=int(mlp)),
        mlp_bias=cfg.bool("mlp_bias"),
        m_heads=_count(cfg, "mamba_num_heads", HEADS) if mamba else 0,
        m_head_dim=_count(cfg, "mamba_head_dim", HEAD_DIM) if mamba else 0,
        groups=_count(cfg, "n_groups", HEADS, 1) if mamba else 0,
        d_state=_count(cfg, "ssm_state_size", HEAD_DIM) if mamba else 0,
        kernel=_count(cfg, "conv_kernel", SMALL, 4) if mamba else 0,
        conv_bias=cfg.bool("use_conv_bias", True),
        proj_bias=cfg.bool("use_bias"),
        ssm_dtype=ssm_dtype,
        experts=experts,
        top_k=top_k,
        moe_inter=cfg.int("moe_intermediate_size", minimum=1) if moe else 0,
        shared_inter=shared_inter * shared,
        latent=_count(cfg, "moe_latent_size", HIDDEN) if moe and cfg.has("moe_latent_size") else 0,
    )


def _layer(w: WeightList, p: str, kind: str, i: int, d: _Dims) -> KVLayer | None:
    """List one layer's tensors under prefix ``p``; its cache, when it keeps one."""
    h = d.hidden
    w.vec(f"{p}.norm.weight", h, layer=i)
    m = f"{p}.mixer"
    if kind == "M":
        in_out = 2 * d.d_inner + 2 * d.groups * d.d_state + d.m_heads
        w.mat(f"{m}.in_proj.weight", Role.LINEAR_ATTN, in_out, h, i)
        if d.proj_bias:
            w.vec(f"{m}.in_proj.bias", in_out, Role.LINEAR_ATTN, i)
        w.vec(f"{m}.conv1d.weight", d.conv_dim * d.kernel, Role.NORM, i)
        if d.conv_bias:
            w.vec(f"{m}.conv1d.bias", d.conv_dim, Role.NORM, i)
        for vector in ("dt_bias", "A_log", "D"):
            w.vec(f"{m}.{vector}", d.m_heads, layer=i)
        w.vec(f"{m}.norm.weight", d.d_inner, layer=i)
        w.mat(f"{m}.out_proj.weight", Role.LINEAR_ATTN, h, d.d_inner, i)
        if d.proj_bias:
            w.vec(f"{m}.out_proj.bias", h, layer=i)
        states = (
            StateTensor("conv", d.conv_dim * (d.kernel - 1), "auto", d.conv_dim),
            StateTensor("ssm", d.m_heads * d.m_head_dim * d.d_state, d.ssm_dtype),
        )
        return KVLayer(i, LayerKind.LINEAR, states=states)
    if kind == "*":
        w.mat(f"{m}.q_proj.weight", Role.ATTN_Q, d.heads * d.head_dim, h, i)
        w.mat(f"{m}.k_proj.weight", Role.ATTN_KV, d.kv_heads * d.head_dim, h, i)
        w.mat(f"{m}.v_proj.weight", Role.ATTN_KV, d.kv_heads * d.head_dim, h, i)
        w.mat(f"{m}.o_proj.weight", Role.ATTN_O, h, d.heads * d.head_dim, i)
        return KVLayer(
            i, LayerKind.FULL, num_kv_heads=d.kv_heads, head_size=d.head_dim, head_size_v=d.head_dim
        )
    if kind == "-":
        _mlp(w, m, h, d.mlp_inter, d.mlp_bias, i, Role.MLP)
        return None
    w.mat(f"{m}.gate.weight", Role.ROUTER, d.experts, h, i)
    w.vec(f"{m}.gate.e_score_correction_bias", d.experts, layer=i)
    width = d.latent or h
    w.mat(f"{m}.experts.up_proj.weight", Role.EXPERT, d.moe_inter, width, i, count=d.experts)
    w.mat(f"{m}.experts.down_proj.weight", Role.EXPERT, width, d.moe_inter, i, count=d.experts)
    if d.shared_inter:
        _mlp(w, f"{m}.shared_experts", h, d.shared_inter, d.mlp_bias, i, Role.SHARED_EXPERT)
    if d.latent:
        w.mat(f"{m}.fc1_latent_proj.weight", Role.REPLICATED, d.latent, h, i)
        w.mat(f"{m}.fc2_latent_proj.weight", Role.REPLICATED, h, d.latent, i)
    return None


def _mlp(w: WeightList, p: str, hidden: int, inter: int, bias: bool, i: int, role: Role) -> None:
    """An ungated squared-ReLU MLP: up, then down."""
    w.mat(f"{p}.up_proj.weight", role, inter, hidden, i)
    w.mat(f"{p}.down_proj.weight", role, hidden, inter, i)
    if bias:
        w.vec(f"{p}.up_proj.bias", inter, role, i)
        w.vec(f"{p}.down_proj.bias", hidden, Role.NORM, i)


def _mtp_params(cfg: ConfigView, d: _Dims) -> tuple[int, int]:
    """(MTP depth, parameters of all of it): each repeat holds the MTP pattern's layers,
    ``eh_proj`` (2·hidden to hidden) and the embedding, hidden and final norms."""
    depth = cfg.int("num_nextn_predict_layers", 0)
    if not depth:
        return 0, 0
    pattern = _schedule(cfg, "mtp_hybrid_override_pattern", "mtp_layers_block_type", "*E")
    scratch = WeightList()
    for j, kind in enumerate(pattern):
        _layer(scratch, f"mtp.layers.{j}", kind, j, d)
    per_repeat = sum(x.numel for x in scratch.items) + 2 * d.hidden * d.hidden + 3 * d.hidden
    return depth, depth * per_repeat


def nemotron_h(cfg: ConfigView, name: str, w: WeightList) -> ModelArch:
    """Build a Nemotron-H architecture from its config.json.

    Raises:
        ModelFormatError: the layer pattern or a width is missing, malformed or beyond
            any published model.
    """
    pattern = _schedule(cfg, "hybrid_override_pattern", "layers_block_type", None)
    n_layers = cfg.int("num_hidden_layers", len(pattern), minimum=1)
    if n_layers != len(pattern):
        raise ModelFormatError(
            f"{cfg.where}: num_hidden_layers is {n_layers} but the layer pattern names "
            f"{len(pattern)} layers; check both against the model's published config.json"
        )
    d = _dims(cfg, pattern)
    vocab = cfg.int("vocab_size", minimum=1)
    tie = cfg.bool("tie_word_embeddings")
    w.mat("backbone.embeddings.weight", Role.EMBED, vocab, d.hidden)
    kv_layers = []
    for i, kind in enumerate(pattern):
        layer = _layer(w, f"backbone.layers.{i}", kind, i, d)
        if layer is not None:
            kv_layers.append(layer)
    w.vec("backbone.norm_f.weight", d.hidden)
    if not tie:
        w.mat("lm_head.weight", Role.LM_HEAD, vocab, d.hidden)
    mtp_layers, mtp_params = _mtp_params(cfg, d)
    w.blob("mtp.layers", Role.MTP, mtp_params)
    moe = None
    if d.experts:
        moe = MoEInfo(d.experts, d.top_k, d.moe_inter, d.shared_inter, pattern.count("E"))
    return ModelArch(
        name=name,
        model_type="nemotron_h",
        weights=(),
        kv_layers=tuple(kv_layers),
        num_hidden_layers=n_layers,
        hidden_size=d.hidden,
        vocab_size=vocab,
        num_attention_heads=d.heads,
        num_kv_heads=d.kv_heads,
        head_dim=d.head_dim,
        intermediate_size=d.mlp_inter or d.moe_inter,
        max_position_embeddings=derived_max_model_len(cfg),
        dtype=dtype_of(cfg, cfg),
        tie_word_embeddings=tie,
        moe=moe,
        mtp_layers=mtp_layers,
    )
