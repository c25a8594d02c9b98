"""Read a local Hugging Face model directory.

``config.json`` gives the architecture (and ``quantization_config`` the
format); the safetensors headers, when present, give the exact bytes of every
tensor, which then replace the weights derived from the config.
"""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import re
from typing import Any

from labctl.catalog.arch import ModelArch, Role, WeightSpec
from labctl.catalog.builder import build_arch
from labctl.catalog.formats import SAFETENSORS_FLOATS
from labctl.catalog.safetensors import TensorInfo, read_checkpoint
from labctl.errors import CatalogError, ModelFormatError

_LAYER = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
_QUANT_AUX = (
    "qweight",
    "qzeros",
    "scales",
    "g_idx",
    "weight_scale",
    "input_scale",
    "weight_packed",
    "weight_shape",
    "weight_zero_point",
    "weight_global_scale",
    "absmax",
    "quant_map",
    "quant_state",
    "_blocks",
    "_scales",
    "SCB",
)


def read_config(directory: Path) -> dict[str, Any]:
    """Load ``config.json`` from a model directory.

    Raises:
        CatalogError: no config.json there.
        ModelFormatError: it is not a JSON object.
    """
    path = directory / "config.json"
    if not path.is_file():
        raise CatalogError(
            f"{directory}: no config.json; point MODEL at a Hugging Face model directory, "
            "a .gguf file or a catalog id"
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ModelFormatError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: the top level must be a JSON object")
    return data


#: Name fragments that identify a tensor's role, checked in order (first match wins).
_ROLE_RULES: tuple[tuple[Role, tuple[str, ...]], ...] = (
    (
        Role.VISION,
        (
            "vision",
            "visual",
            "multi_modal_projector",
            "mm_projector",
            "image_newline",
            "audio_tower",
            "model.encoder.",
            "projector.",
        ),
    ),
    (Role.LM_HEAD, ("lm_head", "embed_out", "proj_out.weight")),
    (Role.EMBED, ("embed_tokens", ".wte.", "word_embeddings", "tok_embeddings")),
    (
        Role.ROUTER,
        ("shared_expert_gate", ".router.", ".gate.weight", ".gate.bias", ".router.weight"),
    ),
    (Role.SHARED_EXPERT, ("shared_expert",)),
    (Role.EXPERT, (".experts.",)),
    (Role.LINEAR_ATTN, ("linear_attn", ".mixer.")),
    (Role.NORM, ("norm",)),
    (Role.REPLICATED, ("q_a_proj", "kv_a_proj")),
    (Role.ATTN_KV, ("k_proj", "v_proj")),
    (Role.ATTN_Q, ("q_proj", "qkv_proj", "query_key_value", "q_b_proj", "kv_b_proj", "c_attn")),
    (Role.ATTN_O, ("o_proj", "out_proj", "self_attn.dense", "attn.c_proj")),
    (
        Role.MLP,
        (
            "gate_proj",
            "up_proj",
            "down_proj",
            "fc1",
            "fc2",
            "w1",
            "w2",
            "w3",
            "c_fc",
            "mlp.c_proj",
            "dense_h_to_4h",
            "dense_4h_to_h",
        ),
    ),
)


def classify(name: str) -> Role:
    """The role of a checkpoint tensor, from its name."""
    n = name.lower()
    if n.startswith(("mtp.", "model.mtp.")) or ".mtp." in n:
        return Role.MTP
    for role, fragments in _ROLE_RULES:
        if any(f in n for f in fragments):
            return role
    return Role.NORM


def _weight(t: TensorInfo) -> WeightSpec:
    m = _LAYER.search("." + t.name)
    aux = t.dtype not in SAFETENSORS_FLOATS or any(k in t.name for k in _QUANT_AUX)
    return WeightSpec(
        name=t.name,
        role=classify(t.name),
        shape=t.shape,
        layer=int(m.group(1)) if m else None,
        stored_dtype=t.dtype,
        stored_bytes=t.nbytes,
        quant_aux=aux,
    )


def load_hf_dir(directory: Path, name: str | None = None) -> ModelArch:
    """Describe a local Hugging Face model directory.

    Raises:
        CatalogError: the directory has no config.json.
        ModelFormatError: config.json or a safetensors header is malformed.
    """
    config = read_config(directory)
    arch = build_arch(config, name or directory.name, str(directory / "config.json"))
    tensors = read_checkpoint(directory)
    if not tensors:
        return replace(
            arch,
            source=str(directory),
            notes=(*arch.notes, "no safetensors files: weights derived from config.json"),
        )
    weights = [_weight(t) for t in tensors if not t.name.endswith("rotary_emb.inv_freq")]
    if arch.tie_word_embeddings:
        weights = [w for w in weights if w.role is not Role.LM_HEAD]
    weights = [
        replace(w, role=Role.MTP)
        if w.layer is not None and w.layer >= arch.num_hidden_layers and w.role is not Role.VISION
        else w
        for w in weights
    ]
    return replace(arch, weights=tuple(weights), source=str(directory))
