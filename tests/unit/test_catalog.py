from __future__ import annotations

import pytest

from labctl.catalog.arch import LayerKind, Role
from labctl.catalog.gpus import GPUS, gpu, match_nvml_name
from labctl.catalog.models import catalog, catalog_arch, resolve, variants
from labctl.errors import CatalogError

REQUIRED_GPUS = {
    "rtx-3090",
    "rtx-4070-ti",
    "rtx-4080",
    "rtx-4090",
    "rtx-5090",
    "a10",
    "a10g",
    "l4",
    "l40",
    "l40s",
    "rtx-6000-ada",
    "t4",
    "a100-40gb",
    "a100-80gb",
    "h100-pcie",
    "h100-sxm",
    "h100-nvl",
    "gh200-96gb",
    "gh200-144gb",
    "h200",
    "b200",
    "gb200",
    "rtx-pro-6000",
    "gb10",
}


def test_gpu_catalog_has_every_required_id_with_sources() -> None:
    assert {g.id for g in GPUS} == REQUIRED_GPUS
    for g in GPUS:
        assert g.sources and g.bandwidth_gbs > 0 and g.bf16_tflops > 0
        assert g.fp8 == (g.fp8_tflops is not None) and g.fp4 == (g.fp4_tflops is not None)
        if g.nvml_total_bytes is not None:
            assert g.cuda_total_bytes < g.nvml_total_bytes  # the driver reserves some


def test_gb10_reports_unified_memory_and_no_nvml_total() -> None:
    g = gpu("GB10")
    assert g.unified_memory and g.nvml_total_bytes is None and "fp4_tflops" in g.derived


def test_unknown_gpu_lists_the_catalog() -> None:
    with pytest.raises(CatalogError, match="rtx-3090.*Known GPUs: rtx-3090"):
        gpu("rtx-3090x")


@pytest.mark.parametrize(
    ("name", "total", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", None, "h100-sxm"),
        ("NVIDIA A100-SXM4-40GB", 40 << 30, "a100-40gb"),
        ("NVIDIA A10", None, "a10"),
        ("NVIDIA L40S", None, "l40s"),
        ("NVIDIA GeForce RTX 3090", None, "rtx-3090"),
        ("NVIDIA GH200 480GB", None, "gh200-96gb"),
        ("NVIDIA GH200 144G HBM3e", None, "gh200-144gb"),
        ("NVIDIA H100 NVL", None, "h100-nvl"),
        ("NVIDIA A10G", None, "a10g"),
        ("NVIDIA L40", None, "l40"),
        ("NVIDIA RTX 6000 Ada Generation", None, "rtx-6000-ada"),
        ("NVIDIA GB200", None, "gb200"),
    ],
)
def test_nvml_names_map_to_catalog_ids(name: str, total: int | None, expected: str) -> None:
    m = match_nvml_name(name, total)
    assert m is not None and m.id == expected


# Parameter counts published for these checkpoints (safetensors totals).
@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
        ("meta-llama/Llama-3.3-70B-Instruct", 70_553_706_496),
        ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
        ("Qwen/Qwen3-8B", 8_190_735_360),
        ("Qwen/Qwen3-30B-A3B", 30_532_122_624),
        ("Qwen/Qwen3-235B-A22B", 235_093_634_560),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", 46_702_792_704),
        ("google/gemma-2-27b-it", 27_227_128_320),
        ("microsoft/phi-2", 2_779_683_840),
        ("openai/gpt-oss-20b", 20_914_757_184),
        ("openai/gpt-oss-120b", 116_829_156_672),
        ("openai/whisper-large-v3", 1_543_490_560),
    ],
)
def test_architectures_count_parameters_exactly(model: str, params: int) -> None:
    assert catalog_arch(model).param_count == params


def test_every_catalog_entry_and_variant_builds() -> None:
    for e in catalog():
        a = catalog_arch(e.id)
        assert a.param_count > 0 and a.kv_layers, e.id
    for v in variants():
        assert catalog_arch(v.id).quant is not None, v.id


def test_seed_models_are_in_the_catalog() -> None:
    seeds = {e.id for e in catalog() if e.seed}
    assert seeds == {
        "google/gemma-4-31B-it",
        "google/gemma-4-26B-A4B-it",
        "Qwen/Qwen3.6-35B-A3B",
        "openai/whisper-large-v3",
        "openvla/openvla-7b",
    }


def test_hybrid_and_sliding_layer_schedules() -> None:
    q = catalog_arch("Qwen/Qwen3.6-35B-A3B")
    kinds = [k.kind for k in q.kv_layers]
    assert kinds.count(LayerKind.LINEAR) == 30 and kinds.count(LayerKind.FULL) == 10
    g = catalog_arch("google/gemma-4-31B-it")
    full = [k for k in g.kv_layers if k.kind is LayerKind.FULL]
    assert (
        len(full) == 10
        and full[0].num_kv_heads == 4
        and full[0].head_size == 512
        and full[0].k_eq_v
    )
    assert {k.window for k in g.kv_layers if k.kind is LayerKind.SLIDING} == {1024}
    w = catalog_arch("openai/whisper-large-v3")
    assert [k.kind for k in w.kv_layers].count(LayerKind.CROSS) == 32


@pytest.mark.parametrize(
    ("text", "method", "base"),
    [
        (
            "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic",
            "fp8-channel",
            "meta-llama/Llama-3.3-70B-Instruct",
        ),
        ("someone/Llama-3.3-70B-Instruct-AWQ", "awq", "meta-llama/Llama-3.3-70B-Instruct"),
        ("Qwen/Qwen3.6-35B-A3B-FP8", "fp8-block", "Qwen/Qwen3.6-35B-A3B"),
        ("anyone/gemma-4-26B-A4B-it-GPTQ-Int4", "gptq", "google/gemma-4-26B-A4B-it"),
        ("x/Qwen3-8B-NVFP4", "nvfp4", "Qwen/Qwen3-8B"),
        ("x/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "bnb-nf4", "meta-llama/Llama-3.1-8B-Instruct"),
    ],
)
def test_quantized_repo_ids_resolve_to_base_and_format(text: str, method: str, base: str) -> None:
    arch = resolve(text)
    assert arch.quant is not None and arch.quant.method == method
    assert arch.param_count == catalog_arch(base).param_count


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(CatalogError, match="Did you mean 'google/gemma-4-31B-it'"):
        resolve("google/gemma-4-31B-instruct")


def test_gpt_oss_converts_only_experts() -> None:
    arch = catalog_arch("openai/gpt-oss-20b")
    assert arch.quant is not None
    by_role = {w.role for w in arch.weights if arch.quant.covers(w)}
    assert by_role == {Role.EXPERT}
