"""Nemotron 3 (``nemotron_h``): hybrid Mamba-2 / attention / MoE layers from the layer pattern.

The parameter counts are the checkpoints' own: Nano's safetensors index says
31,577,937,344 and its 23 MoE layers add 128 float32 score-correction biases each
(2,944, which the index leaves out); Super's BF16 headers say 123,611,012,096 of which
2,942,324,736 are the MTP head, plus 41 such biases of 512.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
import pytest

from labctl.catalog.arch import LayerKind, Role, WeightSpec
from labctl.catalog.builder import build_arch
from labctl.catalog.gpus import gpu
from labctl.catalog.models import catalog, catalog_arch, resolve
from labctl.cli.main import cli
from labctl.errors import ModelFormatError
from labctl.fit.plan import FitRequest, plan

NANO = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
NANO_FP8 = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-FP8"
NANO_FP4 = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-NVFP4"
SUPER = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-NVFP4"


def _spec(model: str, name: str) -> WeightSpec:
    return next(w for w in catalog_arch(model).weights if w.name == name)


def test_nano_counts_its_checkpoint_exactly() -> None:
    arch = catalog_arch(NANO)
    assert arch.param_count == 31_577_937_344 + 23 * 128
    # Model card: 31.6B total, 3.2B active without the embedding table (3.6B with it).
    embed = 131_072 * 2688
    assert arch.active_param_count == 3_580_076_352
    assert arch.active_param_count - embed == pytest.approx(3.2e9, rel=0.02)
    assert arch.moe is not None and arch.moe.num_moe_layers == 23
    assert (arch.moe.num_experts, arch.moe.top_k, arch.moe.shared_intermediate_size) == (
        128,
        6,
        3712,
    )


def test_super_counts_its_checkpoint_exactly_with_latent_experts_and_mtp() -> None:
    arch = catalog_arch(SUPER)
    mtp = sum(w.numel for w in arch.weights if w.role is Role.MTP)
    assert mtp == 2_942_324_736 + 512
    assert arch.param_count + mtp == 123_611_012_096 + 41 * 512
    assert arch.mtp_layers == 1
    # 12B active: routed experts count 22 of 512.
    assert arch.active_param_count == 12_770_216_960 + 40 * 512
    up = _spec(SUPER, "backbone.layers.1.mixer.experts.up_proj.weight")
    assert (up.shape, up.count) == ((2688, 1024), 512)  # experts work in the latent width
    assert _spec(SUPER, "backbone.layers.1.mixer.fc1_latent_proj.weight").shape == (1024, 4096)


def test_layer_schedule_follows_the_pattern() -> None:
    arch = catalog_arch(NANO)
    kinds = [k.kind for k in arch.kv_layers]
    assert kinds.count(LayerKind.LINEAR) == 23 and kinds.count(LayerKind.FULL) == 6
    assert [k.index for k in arch.kv_layers if k.kind is LayerKind.FULL] == [5, 12, 19, 26, 33, 42]
    attn = next(k for k in arch.kv_layers if k.kind is LayerKind.FULL)
    assert (attn.num_kv_heads, attn.head_size) == (2, 128)
    assert arch.rope_buffers == ()  # Nemotron-H's attention has no rotary embedding
    sup = [k.kind for k in catalog_arch(SUPER).kv_layers]
    assert sup.count(LayerKind.LINEAR) == 40 and sup.count(LayerKind.FULL) == 8


def test_mamba_layers_keep_a_fixed_state_of_conv_window_and_float32_ssm() -> None:
    mamba = next(k for k in catalog_arch(NANO).kv_layers if k.kind is LayerKind.LINEAR)
    conv, ssm = mamba.states
    conv_dim = 64 * 64 + 2 * 8 * 128
    assert (conv.elems, conv.dtype, conv.elems_per_spec_token) == (conv_dim * 3, "auto", conv_dim)
    assert (ssm.elems, ssm.dtype) == (64 * 64 * 128, "float32")
    in_proj = _spec(NANO, "backbone.layers.0.mixer.in_proj.weight")
    assert in_proj.shape == (2 * 4096 + 2 * 8 * 128 + 64, 2688) and in_proj.role is Role.LINEAR_ATTN


def test_only_attention_layers_grow_with_the_context() -> None:
    fit = plan(resolve(NANO), FitRequest.on_gpu(gpu("h200")), suggest=False)
    assert fit.kv_bytes_per_token == 6 * 2 * 2 * 128 * 2  # six layers, K and V, bf16
    # 23 layers of (conv window in bf16 + SSM state in float32), under 50 MB a sequence.
    state = 23 * ((64 * 64 + 2 * 8 * 128) * 3 * 2 + 64 * 64 * 128 * 4)
    assert fit.kv_state_bytes_per_sequence == state < 50e6


def test_quantized_checkpoints_keep_their_excluded_layers_in_bf16() -> None:
    fp8 = resolve(NANO_FP8)
    assert fp8.quant is not None and fp8.quant.method == "fp8"
    names = {w.name: w for w in fp8.weights}
    assert fp8.quant.covers(names["backbone.layers.0.mixer.in_proj.weight"])
    assert fp8.quant.covers(names["backbone.layers.1.mixer.experts.up_proj.weight"])
    for excluded in ("backbone.layers.4.mixer.in_proj.weight", "backbone.layers.5.mixer.q_proj.weight", "lm_head.weight"):  # fmt: skip
        assert not fp8.quant.covers(names[excluded]), excluded
    assert resolve(NANO_FP4).quant.method == "nvfp4"  # type: ignore[union-attr]
    sup = resolve("Nemotron-3-Super-120B-A12B-NVFP4")  # the name the published point uses
    assert sup.name == SUPER and sup.quant is not None
    assert sup.quant.method == "nvfp4"  # most of its modules: the twin takes FP4 rates for it
    methods = {w.name: sup.quant.method_for(w) for w in sup.weights}
    assert methods["backbone.layers.1.mixer.experts.down_proj.weight"] == "nvfp4"
    assert methods["backbone.layers.0.mixer.in_proj.weight"] == "fp8"
    assert methods["backbone.layers.7.mixer.q_proj.weight"] is None
    assert methods["lm_head.weight"] is None


@pytest.mark.parametrize(("model", "gpu_id"), [(NANO_FP8, "h200"), (NANO_FP8, "gb10"), (SUPER, "h200"), (SUPER, "gb10")])  # fmt: skip
def test_fit_plans_them_on_h200_and_dgx_spark(model: str, gpu_id: str) -> None:
    fit = plan(resolve(model), FitRequest.on_gpu(gpu(gpu_id)))
    assert fit.fits and fit.max_model_len_fit == 262_144
    expected = {NANO_FP8: 32.7e9, SUPER: 74.4e9}[model]  # FP8 ~1 byte, NVFP4 ~0.56 a weight
    assert fit.weights_bytes == pytest.approx(expected, rel=0.02)


def test_sim_run_serves_nemotron_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["sim", "run", "--model", NANO_FP8, "--gpu", "h200", "--num-prompts", "20", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["completed"] == 20


def _config(**changes: object) -> dict[str, object]:
    config = dict(next(e.config for e in catalog() if e.id == NANO))
    config.update(changes)
    return config


def test_layers_block_type_list_reads_like_the_pattern() -> None:
    base = _config()
    names = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}
    listed = _config(
        hybrid_override_pattern=None,
        layers_block_type=[names[c] for c in str(base["hybrid_override_pattern"])],
    )
    assert build_arch(listed, "x").param_count == build_arch(base, "x").param_count


def test_dense_mlp_layers_are_ungated() -> None:
    arch = build_arch(_config(hybrid_override_pattern="M-*", num_hidden_layers=3), "x")
    mlp = [w.name for w in arch.weights if w.layer == 1 and w.role is Role.MLP]
    assert mlp == ["backbone.layers.1.mixer.up_proj.weight", "backbone.layers.1.mixer.down_proj.weight"]  # fmt: skip
    assert arch.moe is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_hidden_layers": 51}, "num_hidden_layers is 51 but the layer pattern names 52"),
        ({"hybrid_override_pattern": "MEX*"}, "holds 'X'; each character is M"),
        ({"hybrid_override_pattern": None}, "'hybrid_override_pattern' must be a string"),
        ({"layers_block_type": ["mamba", "conv"], "hybrid_override_pattern": None}, "holds 'conv'"),
        ({"mamba_num_heads": 10**9}, "'mamba_num_heads' is 1,000,000,000, beyond the limit"),
        ({"mamba_ssm_cache_dtype": "float7"}, "'mamba_ssm_cache_dtype' is 'float7'"),
        ({"n_routed_experts": 4}, "num_experts_per_tok 6 exceeds the 4 routed experts"),
    ],
)
def test_malformed_configs_are_refused_in_one_line(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelFormatError, match=message) as err:
        build_arch(_config(**changes), "x", "config.json")
    assert "\n" not in str(err.value)


def test_a_local_directory_builds_like_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_config()), "utf-8")
    assert resolve(str(tmp_path)).param_count == catalog_arch(NANO).param_count
