"""The catalog covers what users run: every model and GPU the published serving points name."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest

from labctl.catalog.gpus import gpu, match_published
from labctl.catalog.models import resolve
from labctl.errors import CatalogError
from labctl.fit.plan import FitRequest, plan

POINT_FILES = ("vllm-perf-points.jsonl", "vllm-perf-points-2.jsonl")
#: Models the published points name that the catalog cannot build yet, and why.
NOT_YET: dict[str, str] = {}


def published_points(shared_dir: Path) -> list[dict[str, object]]:
    rows = []
    for name in POINT_FILES:
        text = (shared_dir / "data" / "sim" / name).read_text("utf-8")
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def model_name(text: str) -> str:
    """The repo id of a point's model, without the benchmark's note ("… (latency_llama8B_tp1)")."""
    return re.sub(r"\s*\(.*\)$", "", text).strip()


def test_every_published_gpu_maps_to_a_catalog_gpu(shared_dir: Path) -> None:
    names = {str(p["gpu"]) for p in published_points(shared_dir)}
    assert len(names) > 15
    ids = {name: match_published(name).id for name in names}
    assert ids["8x NVIDIA H100 SXM"] == "h100-sxm"
    assert ids["DGX Spark (GB10)"] == "gb10"
    assert ids["NVIDIA A100 SXM"] == "a100-80gb"  # memory unstated: the 80 GB part
    assert ids["RTX PRO 6000 (Blackwell)"] == "rtx-pro-6000"
    assert ids["GB200"] == "gb200"


def test_every_published_model_resolves(shared_dir: Path) -> None:
    names = {model_name(str(p["model"])) for p in published_points(shared_dir)}
    assert len(names) > 20
    for name in sorted(names - set(NOT_YET)):
        assert resolve(name).param_count > 0, name
    for name in NOT_YET:
        with pytest.raises(CatalogError):
            resolve(name)


@pytest.mark.parametrize(
    ("name", "b_params"),
    [
        ("Qwen/Qwen3-4B", 4.02),
        ("meta-llama/Meta-Llama-3-70B", 70.6),
        ("meta-llama/Llama-3.2-1B-Instruct", 1.24),
        ("mistralai/Mistral-7B-Instruct-v0.3", 7.25),
        ("google/gemma-3-1b-it", 1.0),
        ("zai-org/GLM-4.5-Air", 106),
    ],
)
def test_new_entries_plan_their_published_checkpoint_size(name: str, b_params: float) -> None:
    arch = resolve(name)
    tp = 4 if b_params > 50 else 1
    fit = plan(arch, FitRequest.on_gpu(gpu("h100-sxm"), tensor_parallel_size=tp), suggest=False)
    assert fit.fits
    weights = tp * sum(fit.weights_by_role.values())  # bf16 checkpoints: 2 bytes a parameter
    assert weights == pytest.approx(2 * b_params * 1e9, rel=0.03)


def test_glm_air_keeps_its_first_layer_dense_and_routes_eight_of_128() -> None:
    arch = resolve("zai-org/GLM-4.5-Air")
    assert arch.moe is not None and arch.moe.num_moe_layers == 45
    assert (arch.moe.num_experts, arch.moe.top_k) == (128, 8)
    assert arch.active_param_count == pytest.approx(12.5e9, rel=0.1)


def test_quantized_variants_of_new_entries_resolve_by_name() -> None:
    assert resolve("Qwen/Qwen3-4B-AWQ").quant.method == "awq"  # type: ignore[union-attr]
    assert resolve("Qwen/Qwen3-1.7B-FP8").quant.method == "fp8-block"  # type: ignore[union-attr]
    deepseek_awq = resolve("cognitivecomputations/DeepSeek-V3-AWQ")
    assert deepseek_awq.quant is not None and deepseek_awq.quant.method == "awq"


def test_unknown_published_gpu_names_the_catalog() -> None:
    with pytest.raises(CatalogError, match="no catalog GPU matches 'TPU v5e'.*gh200-96gb"):
        match_published("TPU v5e")
