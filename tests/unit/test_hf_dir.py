from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.tinymodels import TINY_LLAMA, write_hf_dir

from labctl.catalog.arch import Role
from labctl.catalog.hf import classify, load_hf_dir
from labctl.errors import CatalogError, ModelFormatError
from labctl.fit.weights import plan_weights


@pytest.mark.parametrize("shards", [1, 3])
def test_weights_bytes_equal_the_sum_of_tensor_bytes(tmp_path: Path, shards: int) -> None:
    cfg = dict(TINY_LLAMA, torch_dtype="float16")
    total = write_hf_dir(tmp_path / "m", cfg, shards=shards)
    arch = load_hf_dir(tmp_path / "m")
    assert sum(w.stored_bytes or 0 for w in arch.weights) == total
    assert plan_weights(arch).weights_bytes == total


def test_tensor_parallel_splits_what_it_splits(tmp_path: Path) -> None:
    total = write_hf_dir(tmp_path / "m", dict(TINY_LLAMA, torch_dtype="float16"))
    arch = load_hf_dir(tmp_path / "m")
    tp2 = plan_weights(arch, tp=2).weights_bytes
    norms = sum(w.stored_bytes or 0 for w in arch.weights if w.role is Role.NORM)
    # everything but the replicated norms halves (KV heads 2 divide TP 2; vocab 256 pads to 256)
    assert tp2 == (total - norms) // 2 + norms


def test_malformed_config_names_file_and_position(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,,}')
    with pytest.raises(ModelFormatError, match=r"config.json: invalid JSON at line 1 column"):
        load_hf_dir(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"num_hidden_layers": "two"}, "'num_hidden_layers' must be a whole number"),
        ({"num_attention_heads": -4}, "must not be negative"),
    ],
)
def test_bad_config_fields_name_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    cfg = {k: v for k, v in (TINY_LLAMA | change).items() if v is not None}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=message) as err:
        load_hf_dir(d)
    assert "config.json" in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no config.json"):
        load_hf_dir(tmp_path)


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("model.layers.0.mlp.experts.3.down_proj.weight", Role.EXPERT),
        ("model.layers.0.mlp.gate.weight", Role.ROUTER),
        ("model.layers.1.self_attn.k_proj.weight", Role.ATTN_KV),
        ("lm_head.weight", Role.LM_HEAD),
        ("model.vision_tower.blocks.0.attn.qkv.weight", Role.VISION),
        ("model.layers.2.linear_attn.in_proj_qkvz.weight", Role.LINEAR_ATTN),
        ("model.layers.0.mlp.shared_expert.up_proj.weight", Role.SHARED_EXPERT),
        ("mtp.layers.0.fc.weight", Role.MTP),
    ],
)
def test_checkpoint_names_classify_by_role(name: str, role: Role) -> None:
    assert classify(name) is role


def test_nested_text_vision_and_audio_configs_are_all_counted(tmp_path: Path) -> None:
    text = dict(TINY_LLAMA)
    cfg = {
        "model_type": "llava",
        "text_config": text,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "patch_size": 8,
            "image_size": 32,
        },
        "audio_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_mel_bins": 16,
        },
        "torch_dtype": "bfloat16",
    }
    d = tmp_path / "mm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    arch = load_hf_dir(d)
    names = {w.name for w in arch.weights if w.role is Role.VISION}
    assert names == {"vision_tower", "multi_modal_projector", "audio_tower"}
    assert arch.multimodal and arch.num_hidden_layers == 2 and arch.hidden_size == 64
