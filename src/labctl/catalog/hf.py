"""Read a local Hugging Face model directory.

``config.json`` gives the architecture (and ``quantization_config`` the
format); the safetensors headers, when present, give the exact bytes of every
tensor, which then replace the weights derived from the config. Tensors that
differ only in an expert (or other) index are grouped into one weight entry, so
a checkpoint of 100,000 per-expert tensors plans as fast as its config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
import re
from typing import Any

from labctl.catalog.arch import ModelArch, Role, WeightSpec
from labctl.catalog.builder import build_arch
from labctl.catalog.formats import SAFETENSORS_FLOATS
from labctl.catalog.jsonfile import read_json
from labctl.catalog.limits import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_ITEMS,
    MAX_NAME_PATTERNS,
    MAX_WEIGHT_SPECS,
    Bound,
    check_arch,
)
from labctl.catalog.safetensors import TensorInfo, iter_checkpoint
from labctl.errors import CatalogError, ModelFormatError

_LAYER = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
#: A dotted name component made only of digits (a layer or expert index).
_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")
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
    try:
        present = path.is_file()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not present:
        raise CatalogError(
            f"{directory}: no config.json; point MODEL at a Hugging Face model directory, "
            "a .gguf file or a catalog id"
        )
    data = read_json(path, "config.json", MAX_CONFIG_BYTES, MAX_CONFIG_ITEMS)
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: the top level must be a JSON object")
    if "quantization_config" in data:
        return data
    found = {}
    for name in QUANT_FILES:
        if (directory / name).is_file():
            found[name] = read_json(directory / name, name, MAX_CONFIG_BYTES, MAX_CONFIG_ITEMS)
    return with_quant_files(data, found)


#: Files that hold the quantization config beside config.json (AutoGPTQ's; NVIDIA
#: ModelOpt's), read as vLLM reads them when config.json has no ``quantization_config``.
QUANT_FILES = ("quantize_config.json", "hf_quant_config.json")


def with_quant_files(config: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the quantization config of :data:`QUANT_FILES` (by name) as its
    ``quantization_config``, where it has none of its own."""
    if "quantization_config" in config:
        return config
    for name in QUANT_FILES:
        qc = files.get(name)
        if isinstance(qc, dict):
            if name == "quantize_config.json" and "quant_method" not in qc:
                qc = {"quant_method": "gptq", **qc}  # AutoGPTQ's file names no method
            return {**config, "quantization_config": qc}
    return config


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


def _group_name(name: str) -> str:
    """The name of a group of tensors: ``name`` with its indices other than the layer's
    replaced by ``*`` (``model.layers.3.mlp.experts.*.up_proj.weight``)."""
    m = _LAYER.search("." + name)
    if m is None:
        return _INDEX.sub("*", name)
    start, end = m.start(1) - 1, m.end(1) - 1
    return _INDEX.sub("*", name[:start]) + name[start:end] + _INDEX.sub("*", name[end:])


def _too_many(directory: Path | str, what: str, bound: Bound) -> ModelFormatError:
    return ModelFormatError(
        f"{directory}: the safetensors shards hold more than {bound.high:,} {what} (published "
        f"checkpoints have {bound.published}); the files are corrupt or not one model"
    )


def _checkpoint_weights(
    tensors: Iterable[TensorInfo], directory: Path | str
) -> tuple[list[WeightSpec], bool]:
    """The checkpoint's tensors as weight entries, identical ones grouped with a count,
    and whether there was a checkpoint at all.

    Tensors group when their names differ only in numeric components other than the
    layer index, and their dtype and shape agree: the experts of one projection of
    one layer. The role of a name is worked out once per name pattern; empty tensors
    (no bytes) are left out.
    """
    kinds: dict[str, tuple[Role, bool]] = {}
    groups: dict[tuple[str, int | None, str, tuple[int, ...]], list[Any]] = {}
    found = False
    for t in tensors:
        found = True
        if not t.nbytes or t.name.endswith("rotary_emb.inv_freq"):
            continue
        pattern = _INDEX.sub("#", t.name)
        kind = kinds.get(pattern)
        if kind is None:
            if len(kinds) >= MAX_NAME_PATTERNS.high:
                raise _too_many(directory, "distinct tensor names", MAX_NAME_PATTERNS)
            kind = kinds[pattern] = (classify(t.name), any(k in t.name for k in _QUANT_AUX))
        m = _LAYER.search("." + t.name)
        key = (pattern, int(m.group(1)) if m else None, t.dtype, t.shape)
        group = groups.get(key)
        if group is None:
            if len(groups) >= MAX_WEIGHT_SPECS.high:
                raise _too_many(directory, "distinct weight tensors", MAX_WEIGHT_SPECS)
            groups[key] = [t.name, 1, t.nbytes]
        else:
            group[1] += 1
            group[2] += t.nbytes
    weights = []
    for (pattern, layer, dtype, shape), (name, count, nbytes) in groups.items():
        role, aux_name = kinds[pattern]
        weights.append(
            WeightSpec(
                name=name if count == 1 else _group_name(name),
                role=role,
                shape=shape,
                count=count,
                layer=layer,
                stored_dtype=dtype,
                stored_bytes=nbytes,
                quant_aux=dtype not in SAFETENSORS_FLOATS or aux_name,
            )
        )
    return weights, found


def load_hf_dir(directory: Path, name: str | None = None) -> ModelArch:
    """Describe a local Hugging Face model directory.

    Raises:
        CatalogError: the directory has no config.json.
        ModelFormatError: config.json or a safetensors header is malformed.
    """
    config = read_config(directory)
    return arch_from_parts(
        config, iter_checkpoint(directory), name or directory.name, str(directory)
    )


def arch_from_parts(
    config: dict[str, Any], tensors: Iterable[TensorInfo], name: str, source: str
) -> ModelArch:
    """Describe a model from its ``config.json`` and the tensors its safetensors headers
    declare (none: weights derived from the config), wherever they were read: a directory,
    or a hub repo read over HTTP. ``source`` names where in messages.

    Raises:
        ModelFormatError: config.json or a header is malformed.
    """
    arch = build_arch(config, name, f"{source}/config.json")
    weights, found = _checkpoint_weights(tensors, source)
    if not found:
        return replace(
            arch,
            source=source,
            notes=(*arch.notes, "no safetensors files: weights derived from config.json"),
        )
    if arch.tie_word_embeddings:
        weights = [w for w in weights if w.role is not Role.LM_HEAD]
    weights = [
        replace(w, role=Role.MTP)
        if w.layer is not None and w.layer >= arch.num_hidden_layers and w.role is not Role.VISION
        else w
        for w in weights
    ]
    return check_arch(replace(arch, weights=tuple(weights), source=source), source)
