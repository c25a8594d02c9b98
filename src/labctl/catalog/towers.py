"""Towers around a language model: vision encoders and projectors, Whisper's audio
encoder-decoder. Parameter counts follow the standard layer layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
import itertools

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, Role, WeightSpec
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


@dataclass(frozen=True)
class TimmViT:
    """A timm ``VisionTransformer`` as ``timm.create_model(name, num_classes=0,
    img_size=image)`` builds it (OpenVLA's towers): the tensors its state dict holds.

    The shapes follow timm's ``VisionTransformer.__init__``: a convolutional patch
    embedding with a bias; a class token and register tokens when configured; learned
    position embeddings for the patches alone when ``no_embed_class`` (DINOv2), else for
    the patches and the class token; ``depth`` pre-norm blocks (LayerNorm, a fused qkv
    linear with biases, the output projection, LayerNorm, a two-linear MLP of
    ``int(width * mlp_ratio)``, and two LayerScale vectors when ``init_values`` is set);
    the final LayerNorm; and with ``global_pool='map'`` (SigLIP) the attention-pool head
    (``AttentionPoolLatent``: a latent query, q, kv and output linears, a LayerNorm and an
    MLP as wide as the blocks'). ``num_classes=0`` leaves no classifier.
    """

    timm_id: str
    width: int
    depth: int
    mlp: int
    patch: int
    image: int
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    layer_scale: bool = False
    map_pool: bool = False
    channels: int = 3

    @property
    def patches(self) -> int:
        """Patch tokens per image: (image / patch)²."""
        return (self.image // self.patch) ** 2

    @property
    def tokens(self) -> int:
        """Tokens the blocks run over: the patches, the class token and the registers."""
        return self.patches + int(self.class_token) + self.reg_tokens

    def tensors(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(name under the model, shape, how many blocks hold one) for every tensor."""
        w, m = self.width, self.mlp
        pos = self.patches + (0 if self.no_embed_class else int(self.class_token))
        out: list[tuple[str, tuple[int, ...], int]] = [
            ("patch_embed.proj.weight", (w, self.channels, self.patch, self.patch), 1),
            ("patch_embed.proj.bias", (w,), 1),
            ("pos_embed", (1, pos, w), 1),
        ]
        if self.class_token:
            out.append(("cls_token", (1, 1, w), 1))
        if self.reg_tokens:
            out.append(("reg_token", (1, self.reg_tokens, w), 1))
        block = [
            ("norm1.weight", (w,)),
            ("norm1.bias", (w,)),
            ("attn.qkv.weight", (3 * w, w)),
            ("attn.qkv.bias", (3 * w,)),
            ("attn.proj.weight", (w, w)),
            ("attn.proj.bias", (w,)),
            ("norm2.weight", (w,)),
            ("norm2.bias", (w,)),
            ("mlp.fc1.weight", (m, w)),
            ("mlp.fc1.bias", (m,)),
            ("mlp.fc2.weight", (w, m)),
            ("mlp.fc2.bias", (w,)),
        ]
        if self.layer_scale:
            # OpenVLA's loader renames LayerScale's ``gamma`` to ``scale_factor``.
            block += [("ls1.scale_factor", (w,)), ("ls2.scale_factor", (w,))]
        out += [(f"blocks.*.{name}", shape, self.depth) for name, shape in block]
        out += [("norm.weight", (w,), 1), ("norm.bias", (w,), 1)]
        if self.map_pool:
            out += [
                ("attn_pool.latent", (1, 1, w), 1),
                ("attn_pool.q.weight", (w, w), 1),
                ("attn_pool.q.bias", (w,), 1),
                ("attn_pool.kv.weight", (2 * w, w), 1),
                ("attn_pool.kv.bias", (2 * w,), 1),
                ("attn_pool.proj.weight", (w, w), 1),
                ("attn_pool.proj.bias", (w,), 1),
                ("attn_pool.norm.weight", (w,), 1),
                ("attn_pool.norm.bias", (w,), 1),
                ("attn_pool.mlp.fc1.weight", (m, w), 1),
                ("attn_pool.mlp.fc1.bias", (m,), 1),
                ("attn_pool.mlp.fc2.weight", (w, m), 1),
                ("attn_pool.mlp.fc2.bias", (w,), 1),
            ]
        return out

    @property
    def params(self) -> int:
        total = 0
        for _, shape, count in self.tensors():
            n = count
            for d in shape:
                n *= d
            total += n
        return total

    def specs(self, prefix: str) -> list[WeightSpec]:
        """The tensors as weight entries named under ``prefix`` (blocks grouped)."""
        return [
            WeightSpec(f"{prefix}.{name}", Role.VISION, shape, count=count)
            for name, shape, count in self.tensors()
        ]


def timm_vit(timm_id: str, image: int) -> TimmViT | None:
    """The timm ViTs Prismatic and OpenVLA use, at ``image`` px (None when unknown).

    From timm's registrations: ``vit_large_patch14_reg4_dinov2`` is patch 14, width 1024,
    depth 24, MLP ratio 4, ``init_values=1e-5`` (LayerScale), 4 registers and
    ``no_embed_class``; ``vit_so400m_patch14_siglip_224`` is patch 14, width 1152, depth 27,
    MLP ratio 3.7362 (4,304 wide), no class token, ``global_pool='map'``.
    """
    base = timm_id.split(".", 1)[0]
    if base == "vit_large_patch14_reg4_dinov2":
        return TimmViT(
            base, 1024, 24, 4096, 14, image, reg_tokens=4, no_embed_class=True, layer_scale=True
        )
    if base in ("vit_so400m_patch14_siglip_224", "vit_so400m_patch14_siglip_384"):
        return TimmViT(base, 1152, 27, int(1152 * 3.7362), 14, image, False, map_pool=True)
    return None


#: Prismatic's vision backbone ids and the timm models each fuses (``configuration_prismatic``).
PRISMATIC_BACKBONES: dict[str, tuple[str, ...]] = {
    "dinosiglip-vit-so-224px": (
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "vit_so400m_patch14_siglip_224",
    ),
    "dinov2-vit-l": ("vit_large_patch14_reg4_dinov2.lvd142m",),
    "siglip-vit-so400m": ("vit_so400m_patch14_siglip_224",),
}


def prismatic_projector(vision_dim: int, llm_dim: int, fused: bool) -> list[WeightSpec]:
    """Prismatic's projector: with fused towers an MLP ``vision_dim`` → 4 × ``vision_dim``
    → ``llm_dim`` → ``llm_dim`` (GELU between), else ``vision_dim`` → ``llm_dim`` →
    ``llm_dim``; every linear with a bias."""
    dims = (
        [vision_dim, 4 * vision_dim, llm_dim, llm_dim] if fused else [vision_dim, llm_dim, llm_dim]
    )
    out = []
    for i, (inp, outp) in enumerate(itertools.pairwise(dims), start=1):
        out.append(WeightSpec(f"projector.fc{i}.weight", Role.VISION, (outp, inp)))
        out.append(WeightSpec(f"projector.fc{i}.bias", Role.VISION, (outp,)))
    return out


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
