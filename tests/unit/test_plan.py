"""Whole plans: fit verdicts, suggestions, recommended flags, and bad input."""

from __future__ import annotations

import pytest
from tests.unit.test_kv_layout import request

from labctl.catalog.models import resolve
from labctl.errors import UsageError
from labctl.fit.plan import plan
from labctl.units import GiB


def test_small_model_fits_and_recommends_explicit_flags() -> None:
    r = plan(resolve("Qwen/Qwen2.5-7B-Instruct"), request("rtx-3090"))
    assert r.fits and not r.reasons and not r.suggestions
    assert r.recommended_args[:2] == ["--max-model-len", "32768"]
    assert r.kv_cache_bytes > 0 and r.kv_cache_tokens > 32768


def test_too_long_context_suggests_the_context_that_fits() -> None:
    r = plan(resolve("meta-llama/Llama-3.1-8B-Instruct"), request("rtx-3090"))
    assert not r.fits and 0 < r.max_model_len_fit < 131072
    first = r.suggestions[0]
    assert first.fits and "--max-model-len" in first.args
    assert int(first.args["--max-model-len"]) <= r.max_model_len_fit
    assert r.recommended_args[:2] == ["--max-model-len", str(r.max_model_len_fit // 1024 * 1024)]


def test_weights_too_big_suggests_smaller_formats_first_then_more_gpus() -> None:
    r = plan(resolve("Qwen/Qwen3.6-35B-A3B-FP8"), request("rtx-5090"))
    assert not r.fits and r.kv_cache_bytes < 0
    changes = [s.change for s in r.suggestions]
    assert changes[0] == "use 4-bit weights"
    assert all(s.fits for s in r.suggestions)
    assert any("2 GPUs" in c for c in changes)


def test_fp8_kv_halves_kv_bytes_per_token() -> None:
    arch = resolve("Qwen/Qwen3-8B")
    bf16 = plan(arch, request("h100-sxm"))
    fp8 = plan(arch, request("h100-sxm", kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert fp8.kv_cache_tokens == pytest.approx(2 * bf16.kv_cache_tokens, rel=0.01)


def test_kv_heads_are_replicated_past_their_count() -> None:
    arch = resolve("Qwen/Qwen3-8B")  # 32 heads, 8 KV heads
    tp8 = plan(arch, request("h100-sxm", tensor_parallel_size=8))
    tp16 = plan(arch, request("h100-sxm", tensor_parallel_size=16))
    assert tp8.kv_bytes_per_token == 36 * 1 * 128 * 2 * 2
    assert tp16.kv_bytes_per_token == tp8.kv_bytes_per_token  # one KV head per GPU either way


def test_kv_cache_memory_bytes_overrides_the_profile() -> None:
    r = plan(
        resolve("Qwen/Qwen3-8B"),
        request("rtx-3090", kv_cache_memory_bytes=2 * GiB, max_model_len=8192),
    )
    assert r.kv_cache_bytes == 2 * GiB
    assert "--kv-cache-memory-bytes" in r.recommended_args


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"gpu_memory_utilization": 1.5}, r"outside \(0, 1\]"),
        ({"gpu_memory_utilization": 0.0}, r"outside \(0, 1\]"),
        ({"tensor_parallel_size": 3}, "does not divide the 28 attention heads"),
        ({"tensor_parallel_size": 0}, "at least 1"),
        ({"pipeline_parallel_size": 99}, "exceeds the 28 layers"),
        ({"kv_cache_dtype": "int3"}, "--kv-cache-dtype"),
        ({"block_size": 24}, "power of two"),
        ({"max_model_len": 0}, "at least 1"),
        ({"quantization": "fp7"}, "not a known format"),
        ({"speculative_tokens": 2}, "multi-token-prediction"),
    ],
)
def test_impossible_flags_are_rejected_with_the_fix(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plan(resolve("Qwen/Qwen2.5-7B-Instruct"), request("h100-sxm", **kw))


def test_runtime_quantization_on_a_quantized_checkpoint_is_refused() -> None:
    with pytest.raises(UsageError, match="already quantized as awq"):
        plan(resolve("cyankiwi/gemma-4-31B-it-AWQ-4bit"), request("h100-sxm", quantization="fp8"))


def test_t4_has_no_bf16_and_runs_the_v0_engine_before_0_11() -> None:
    r = plan(
        resolve("meta-llama/Llama-3.2-3B-Instruct"),
        request("t4", vllm_version="0.8.2", max_model_len=2048),
    )
    assert r.dtype == "float16" and "V0" in r.vllm_version
    with pytest.raises(UsageError, match="compute capability 8.0"):
        plan(resolve("meta-llama/Llama-3.2-3B-Instruct"), request("t4", dtype="bfloat16"))


def test_hybrid_state_is_per_sequence_not_per_token() -> None:
    r = plan(resolve("Qwen/Qwen3.6-35B-A3B"), request("h100-sxm", max_model_len=4096))
    assert r.kv_state_bytes_per_sequence > 0
    assert r.kv_bytes_per_token == 10 * 2 * 256 * 2 * 2  # only the 10 full-attention layers grow
