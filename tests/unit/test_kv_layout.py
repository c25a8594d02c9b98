"""The paged-KV layout reproduces what vLLM printed, given the memory vLLM had."""

from __future__ import annotations

import pytest

from labctl.catalog.gpus import gpu
from labctl.catalog.models import resolve
from labctl.fit.plan import FitRequest, plan
from labctl.units import GiB


def request(gpu_id: str, **kw: object) -> FitRequest:
    return FitRequest.on_gpu(gpu(gpu_id), **kw)


def test_llama_single_group_tokens_and_concurrency() -> None:
    r = plan(
        resolve("meta-llama/Llama-3.1-8B-Instruct"),
        request(
            "h100-sxm",
            max_model_len=8192,
            kv_cache_memory_bytes=int(58.11 * GiB),
            vllm_version="0.19.0",
        ),
    )
    assert r.kv_bytes_per_token == 131072
    assert r.kv_groups == 1 and r.block_size == 16
    assert r.kv_cache_tokens == pytest.approx(476_016, abs=16)
    assert r.max_concurrency == pytest.approx(58.11, abs=0.01)


def test_gemma3_sliding_layers_are_grouped_with_padding() -> None:
    r = plan(
        resolve("google/gemma-3-27b-it"),
        request(
            "h100-sxm",
            max_model_len=8192,
            kv_cache_memory_bytes=int(19.53 * GiB),
            vllm_version="0.19.0",
        ),
    )
    assert (r.kv_groups, r.padding_layers) == (7, 8)  # 52 sliding + 10 full -> 6 + 1 groups of 10
    assert r.kv_cache_tokens == 36_560
    assert r.max_concurrency == pytest.approx(4.46, abs=0.01)


def test_mla_latent_is_not_split_and_uses_16_token_blocks() -> None:
    arch = resolve("deepseek-ai/DeepSeek-V2-Lite-Chat")
    r = plan(
        arch,
        request(
            "h100-sxm",
            max_model_len=8192,
            kv_cache_memory_bytes=int(43.61 * GiB),
            vllm_version="0.19.0",
        ),
    )
    assert r.kv_bytes_per_token == 27 * 576 * 2
    assert r.kv_cache_tokens == pytest.approx(1_505_552, rel=2e-4)  # the log rounds GiB to 0.01
    tp2 = plan(
        arch, request("h100-sxm", max_model_len=8192, tensor_parallel_size=2, vllm_version="0.19.0")
    )
    assert tp2.kv_bytes_per_token == r.kv_bytes_per_token


def test_gated_deltanet_hybrid_raises_the_block_to_hold_the_state() -> None:
    # RTX 5090, vLLM 0.24.0: the logged 569,878 tokens and 4.35x.
    r = plan(
        resolve("Qwen/Qwen3.6-35B-A3B-NVFP4"),
        request(
            "rtx-5090",
            max_model_len=131072,
            kv_cache_dtype="fp8",
            max_num_seqs=1,
            max_num_batched_tokens=8192,
            enable_prefix_caching=True,
            kv_cache_memory_bytes=int(6.01 * GiB),
            vllm_version="0.24.0",
        ),
    )
    assert r.block_size == 2096  # 16 * cdiv(conv + fp32 recurrent state, 16 * 1024)
    assert r.kv_state_bytes_per_sequence == 30 * (3 * 8192 * 2 + 32 * 128 * 128 * 4)
    assert r.num_gpu_blocks == 300
    assert r.kv_cache_tokens == 569_878
    assert r.max_concurrency == pytest.approx(4.35, abs=0.01)


def test_mtp_drafter_adds_an_attention_layer_and_state_blocks() -> None:
    # 2x RTX 3090, Qwen3.6-27B AutoRound, fp8_e5m2 KV, MTP 3 tokens, prefix caching.
    arch = resolve("Intel/Qwen3.6-27B-int4-AutoRound")
    page, group = 1600 * 1024, 17  # 16 target + 1 MTP attention layers in each pool tensor
    req = request(
        "rtx-3090",
        tensor_parallel_size=2,
        kv_cache_dtype="fp8_e5m2",
        max_model_len=262144,
        speculative_tokens=3,
        enable_prefix_caching=True,
        max_num_seqs=2,
        max_num_batched_tokens=8192,
        kv_cache_memory_bytes=426 * page * group,
        vllm_version="0.22.0",
    )
    r = plan(arch, req)
    assert (r.block_size, r.kv_groups, r.padding_layers) == (1600, 4, 3)
    assert r.num_gpu_blocks == 426
    assert r.kv_cache_tokens == 623_873
    assert r.max_concurrency == pytest.approx(2.38, abs=0.01)


def test_sliding_window_concurrency_counts_window_plus_batch() -> None:
    r = plan(
        resolve("openai/gpt-oss-20b"),
        request(
            "h100-sxm",
            tensor_parallel_size=2,
            max_model_len=8192,
            kv_cache_memory_bytes=int(63.28 * GiB),
            vllm_version="0.19.0",
        ),
    )
    assert r.kv_cache_tokens == pytest.approx(2_764_768, rel=1e-4)
    assert r.max_concurrency == pytest.approx(337.17, abs=0.05)


def test_token_report_changed_to_concurrency_times_length_in_0_21() -> None:
    arch = resolve("google/gemma-3-27b-it")
    old = plan(
        arch,
        request(
            "a100-80gb", max_model_len=32768, kv_cache_memory_bytes=40 * GiB, vllm_version="0.20.0"
        ),
    )
    new = plan(
        arch,
        request(
            "a100-80gb", max_model_len=32768, kv_cache_memory_bytes=40 * GiB, vllm_version="0.21.0"
        ),
    )
    assert old.num_gpu_blocks == new.num_gpu_blocks
    assert new.kv_cache_tokens == pytest.approx(new.max_concurrency * 32768, rel=0.005)
    assert old.kv_cache_tokens == old.num_gpu_blocks // old.kv_groups * 16
    assert new.kv_cache_tokens > 3 * old.kv_cache_tokens  # the same memory, a different headline


def test_older_engines_size_sliding_layers_as_full() -> None:
    arch = resolve("google/gemma-2-27b-it")
    v0 = plan(
        arch,
        request(
            "h100-sxm", max_model_len=8192, kv_cache_memory_bytes=20 * GiB, vllm_version="0.7.3"
        ),
    )
    v1 = plan(
        arch,
        request(
            "h100-sxm", max_model_len=8192, kv_cache_memory_bytes=20 * GiB, vllm_version="0.19.0"
        ),
    )
    assert v0.kv_groups == 1 and v1.kv_groups == 2


def test_whisper_cross_attention_holds_one_chunk_but_vllm_reserves_the_batch_budget() -> None:
    r = plan(resolve("openai/whisper-large-v3"), request("rtx-3090", kv_cache_memory_bytes=4 * GiB))
    assert r.kv_groups == 2 and r.max_model_len == 448
    per_block = 32 * 20 * 64 * 2 * 2 * 16
    blocks = 4 * GiB // per_block
    # A request holds 448 self positions and 1,500 encoder positions: 28 + 94 blocks.
    assert r.max_concurrency == pytest.approx(blocks / (28 + 94), abs=0.01)
    # vLLM's startup line reserves cross blocks for max_num_batched_tokens encoder tokens.
    assert r.encoder_decoder is not None
    assert r.encoder_decoder.vllm_logged_concurrency == pytest.approx(
        blocks / (28 + 2048 // 16), abs=0.01
    )


def test_a_request_holds_a_sliding_groups_blocks_only_as_far_as_its_window_reaches() -> None:
    """gpt-oss: 12 full + 12 sliding (128-token window) layers, one pool. A request of
    4,096 tokens holds 256 blocks of the full group and the 8 its window still reaches of
    the sliding group (a prefill chunk reaches back a window before its first new token);
    a dense model holds a block per 16 tokens, one group."""
    r = plan(
        resolve("openai/gpt-oss-20b"),
        request("h100-sxm", max_model_len=8192, kv_cache_memory_bytes=8 * GiB),
    )
    layout = r.kv_layout
    assert layout is not None and not layout.uniform and r.kv_groups == 2
    assert layout.blocks_held(4096, 1) == 256 + 8
    assert layout.blocks_held(4096, 2048) == 256 + 136  # tokens 1,921..4,095: blocks 120..255
    assert layout.blocks_held(100, 100) == 7 + 7
    assert layout.blocks_held(0) == 0
    dense = plan(resolve("meta-llama/Llama-3.1-8B-Instruct"), request("h100-sxm"))
    assert dense.kv_layout is not None and dense.kv_layout.blocks_held(4097, 1) == 257
    assert "kv_layout" not in r.to_json()


def test_a_chunked_local_group_holds_blocks_from_its_current_chunk_on() -> None:
    """Llama 4: 36 layers of 8,192-token chunked local attention (three groups) and 12 full.
    Decoding the 8,193rd token starts a new chunk: the chunked groups hold one block each,
    not the 8,192 tokens before it that a sliding window would keep."""
    r = plan(
        resolve("meta-llama/Llama-4-Scout-17B-16E-Instruct"),
        request("h100-sxm", tensor_parallel_size=4, max_model_len=32768,
                kv_cache_memory_bytes=8 * GiB),
    )  # fmt: skip
    layout = r.kv_layout
    assert layout is not None and r.kv_groups == 4
    assert layout.blocks_held(8192, 1) == 4 * 512
    assert layout.blocks_held(8193, 1) == 513 + 3 * 1
    assert layout.blocks_held(20_000, 1) == 1250 + 3 * (20_000 - 16_384) // 16
