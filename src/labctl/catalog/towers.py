"""Towers around a language model: vision encoders and projectors, Whisper's audio
encoder-decoder. Parameter counts follow the standard layer layouts.
"""

from __future__ import annotations

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, Role
from labctl.catalog.configview import ConfigView, WeightList, dtype_of


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


def audio_tower(audio: ConfigView | None, text_hidden: int, w: WeightList) -> None:
    """An audio encoder beside the language model (``audio_config``): a transformer
    encoder over spectrogram frames, and a projector into the text width."""
    if audio is None:
        return
    hidden = audio.int("hidden_size", audio.int("d_model", 0))
    if not hidden:
        return
    layers = audio.int("num_hidden_layers", audio.int("encoder_layers", 0))
    inter = audio.int("intermediate_size", audio.int("encoder_ffn_dim", 4 * hidden))
    mels = audio.int("num_mel_bins", 128)
    per_layer = 4 * hidden * hidden + 2 * hidden * inter + 9 * hidden + inter
    frontend = mels * hidden * 3 + hidden * hidden * 3 + 2 * hidden
    w.blob("audio_tower", Role.VISION, layers * per_layer + frontend + hidden * text_hidden)


def vision_tower(
    vision: ConfigView | None, text_hidden: int, outer: ConfigView, w: WeightList
) -> None:
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
    patch = vision.int("patch_size", 14, minimum=1)
    image = vision.int("image_size", 224)
    vtype = str(vision.get("model_type", ""))
    gated = vtype in ("pixtral", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
    n = vit_params(
        hidden, inter, layers, patch, image, vision.int("num_channels", 3), gated, not gated
    )
    w.blob("vision_tower", Role.VISION, n)
    merge = outer.int("spatial_merge_size", vision.int("spatial_merge_size", 1))
    merge = max(merge, 1)
    feature_layers = outer.get("vision_feature_layer")
    n_features = len(feature_layers) if isinstance(feature_layers, list) else 1
    proj_in = hidden * merge * merge * n_features
    proj = proj_in * text_hidden + text_hidden * text_hidden + 2 * text_hidden
    if merge > 1:
        proj += proj_in * hidden
    w.blob("multi_modal_projector", Role.VISION, proj)


def whisper(cfg: ConfigView, name: str, w: WeightList) -> ModelArch:
    d = cfg.int("d_model", minimum=1)
    enc_layers = cfg.int("encoder_layers")
    dec_layers = cfg.int("decoder_layers", minimum=1)
    heads = cfg.int("decoder_attention_heads", minimum=1)
    enc_ffn = cfg.int("encoder_ffn_dim")
    dec_ffn = cfg.int("decoder_ffn_dim")
    vocab = cfg.int("vocab_size", minimum=1)
    mels = cfg.int("num_mel_bins", 80)
    src = cfg.int("max_source_positions", 1500)
    tgt = cfg.int("max_target_positions", 448, minimum=1)
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
        dtype=dtype_of(cfg, cfg),
        tie_word_embeddings=True,
        multimodal=True,
        encoder_positions=src,
    )
