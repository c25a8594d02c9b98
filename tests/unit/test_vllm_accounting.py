"""Version-dependent rules of vLLM's memory accounting."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.unit.test_kv_layout import request

from labctl.catalog.models import resolve
from labctl.errors import UsageError
from labctl.fit.plan import plan
from labctl.fit.vllm import VllmVersion, behaviour, default_batching
from labctl.units import GiB


@pytest.mark.parametrize(
    ("text", "key", "v0"),
    [
        ("0.19.0", (0, 19, 0), False),
        ("0.6.4.dev26+g92d86da2", (0, 6, 4), True),
        ("0.11", (0, 11, 0), False),
        ("v0.24.0", (0, 24, 0), False),
    ],
)
def test_version_parsing(text: str, key: tuple[int, int, int], v0: bool) -> None:
    v = VllmVersion.parse(text)
    assert v.key == key and v.v0 is v0


def test_v0_can_be_forced_only_before_0_11() -> None:
    assert VllmVersion.parse("0.8.2", v0=True).v0
    assert not VllmVersion.parse("0.12.0", v0=True).v0


@pytest.mark.parametrize("text", ["latest", "0.4.0"])
def test_bad_versions_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--vllm-version"):
        VllmVersion.parse(text)


@pytest.mark.parametrize(
    ("version", "nvml_gib", "name", "expected"),
    [
        ("0.19.0", 79.6, "NVIDIA H100 80GB HBM3", (1024, 8192)),
        (
            "0.19.0",
            80.0,
            "NVIDIA A100-SXM4-80GB",
            (256, 2048),
        ),  # A100 is excluded from the large defaults
        ("0.8.5", 80.0, "NVIDIA A100-SXM4-80GB", (1024, 8192)),
        ("0.19.0", 24.0, "NVIDIA GeForce RTX 3090", (256, 2048)),
        ("0.28.0", 179.1, "NVIDIA B200", (1024, 16384)),
    ],
)
def test_default_batching_by_gpu_and_version(
    version: str, nvml_gib: float, name: str, expected: tuple[int, int]
) -> None:
    b = default_batching(VllmVersion.parse(version), int(nvml_gib * GiB), name, 8192, None, None)
    assert (b.max_num_seqs, b.max_num_batched_tokens) == expected


def test_v0_profiles_the_whole_context_without_chunked_prefill() -> None:
    v = VllmVersion.parse("0.6.4")
    short = default_batching(v, 24 * GiB, "RTX 3090", 29000, None, None)
    long = default_batching(v, 24 * GiB, "RTX 3090", 131072, None, None)
    assert short.max_num_batched_tokens == 29000 and not short.chunked_prefill
    assert long.chunked_prefill and long.max_num_batched_tokens == 512


def test_sampler_got_cheaper_in_0_17() -> None:
    # Qwen3-14B on H100: activation 5.64 GiB up to 0.16, 2.23 GiB from 0.17 (llm-d version sweep).
    arch = resolve("Qwen/Qwen3-14B")
    base = request("h100-sxm", max_model_len=8192, gpu_memory_utilization=0.95)
    old = plan(arch, replace(base, vllm_version="0.16.0"))
    new = plan(arch, replace(base, vllm_version="0.17.0"))
    assert old.activation_peak_bytes / GiB == pytest.approx(5.64, abs=0.1)
    assert new.activation_peak_bytes / GiB == pytest.approx(2.23, abs=0.1)
    assert new.kv_cache_bytes - old.kv_cache_bytes == pytest.approx(3.4 * GiB, rel=0.05)


def test_cuda_graphs_enter_the_budget_in_0_20() -> None:
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    base = request("h100-sxm", max_model_len=8192)
    v19 = plan(arch, replace(base, vllm_version="0.19.0"))
    v20 = plan(arch, replace(base, vllm_version="0.20.0"))
    assert not v19.cuda_graphs_in_budget and v20.cuda_graphs_in_budget
    assert v19.kv_cache_bytes - v20.kv_cache_bytes == v20.cuda_graph_bytes
    eager = plan(arch, replace(base, vllm_version="0.20.0", enforce_eager=True))
    assert eager.cuda_graph_bytes == 0 and eager.kv_cache_bytes == v19.kv_cache_bytes


def test_tensor_parallel_adds_communication_buffers_from_0_18() -> None:
    assert behaviour(VllmVersion.parse("0.19.0")).non_torch_bytes(2, 1) > 2 * GiB
    assert behaviour(VllmVersion.parse("0.11.0")).non_torch_bytes(2, 1) < 1 * GiB
    assert behaviour(VllmVersion.parse("0.19.0")).non_torch_bytes(1, 2) < 0.1 * GiB


def test_only_the_last_pipeline_rank_runs_the_sampler() -> None:
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    pp1 = plan(arch, request("h100-sxm", max_model_len=8192, vllm_version="0.19.0"))
    pp2 = plan(
        arch,
        request("h100-sxm", max_model_len=8192, vllm_version="0.19.0", pipeline_parallel_size=2),
    )
    assert pp2.weights_bytes < pp1.weights_bytes * 0.55
    assert pp2.activation_peak_bytes >= pp1.activation_peak_bytes  # the worst rank is the last one
