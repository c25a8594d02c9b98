"""Properties every plan must have, over many random configurations."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from labctl.catalog.models import resolve
from labctl.fit.plan import FitRequest, plan
from labctl.units import GiB

MODELS = [
    "Qwen/Qwen3-8B",
    "google/gemma-3-27b-it",
    "openai/gpt-oss-20b",
    "Qwen/Qwen3.6-35B-A3B",
    "deepseek-ai/DeepSeek-V2-Lite-Chat",
]
ARCHS = {m: resolve(m) for m in MODELS}


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    gib=st.floats(min_value=8, max_value=200),
    extra=st.floats(min_value=0.5, max_value=64),
    util=st.floats(min_value=0.5, max_value=0.98),
    length=st.sampled_from([2048, 8192, 32768]),
    version=st.sampled_from(["0.11.0", "0.19.0", "0.24.0"]),
)
@example(model="Qwen/Qwen3-8B", gib=62.0, extra=8.0, util=0.5, length=2048, version="0.11.0")
def test_more_memory_never_means_less_cache(
    model: str, gib: float, extra: float, util: float, length: int, version: str
) -> None:
    # With the batch sizes fixed: vLLM's defaults grow with the card's memory (a card
    # past 70 GiB batches more tokens and so reserves a larger activation peak), and a
    # card just past that threshold can rightly keep less KV cache than one just below.
    arch = ARCHS[model]
    small = plan(
        arch,
        FitRequest(
            gpu_total_bytes=int(gib * GiB),
            gpu_memory_utilization=util,
            max_model_len=length,
            vllm_version=version,
            max_num_seqs=128,
            max_num_batched_tokens=4096,
        ),
        suggest=False,
    )
    big = plan(
        arch,
        FitRequest(
            gpu_total_bytes=int((gib + extra) * GiB),
            gpu_memory_utilization=util,
            max_model_len=length,
            vllm_version=version,
            max_num_seqs=128,
            max_num_batched_tokens=4096,
        ),
        suggest=False,
    )
    assert big.kv_cache_bytes >= small.kv_cache_bytes
    assert big.num_gpu_blocks >= small.num_gpu_blocks
    assert big.max_model_len_fit >= small.max_model_len_fit
    assert small.fits <= big.fits


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    kv=st.floats(min_value=0.1, max_value=60),
    length=st.sampled_from([4096, 16384]),
)
def test_fit_verdict_agrees_with_the_largest_context(model: str, kv: float, length: int) -> None:
    arch = ARCHS[model]
    r = plan(
        arch,
        FitRequest(
            gpu_total_bytes=80 * GiB, max_model_len=length, kv_cache_memory_bytes=int(kv * GiB)
        ),
        suggest=False,
    )
    assert r.fits == (r.max_model_len_fit >= length)
    assert r.kv_cache_bytes == int(kv * GiB)
    if r.fits:
        assert r.max_concurrency >= 1 - 1e-9
