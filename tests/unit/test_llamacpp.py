from __future__ import annotations

from pathlib import Path

import pytest
from tests.tinymodels import write_gguf

from labctl.catalog.gguf import arch_from_gguf, read_gguf
from labctl.catalog.models import resolve
from labctl.errors import UsageError
from labctl.fit.llamacpp import CACHE_TYPES, LlamaCppRequest, plan_llamacpp
from labctl.units import GiB, MiB


@pytest.fixture
def tiny(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hidden=256, layers=4, vocab=512, context=4096)
    return arch_from_gguf(read_gguf(path))


def test_kv_cache_is_cells_times_rows_of_offloaded_layers(tiny) -> None:  # type: ignore[no-untyped-def]
    r = plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=1000))
    assert r.kv_cache_tokens == 1024  # padded to 256 cells
    per_token = 4 * 2 * 64 * 2 * 2  # layers x KV heads x head dim x (K, V) x f16
    assert r.kv_bytes_per_token == per_token
    assert r.kv_cache_bytes == 1024 * per_token
    q8 = plan_llamacpp(
        tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=1000, cache_type="q8_0")
    )
    assert q8.kv_cache_bytes == int(1024 * 4 * 2 * 64 * 2 * CACHE_TYPES["q8_0"])


def test_partial_offload_keeps_layers_in_host_memory(tiny) -> None:  # type: ignore[no-untyped-def]
    full = plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=512))
    half = plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=512, n_gpu_layers=2))
    total = sum(w.stored_bytes or 0 for w in tiny.weights)
    assert full.weights_bytes + full.weights_host_bytes == total
    assert half.weights_bytes < full.weights_bytes
    assert half.kv_cache_bytes == full.kv_cache_bytes // 2
    assert "-ngl" in half.recommended_args


def test_context_is_capped_at_the_training_context(tiny) -> None:  # type: ignore[no-untyped-def]
    r = plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=100_000))
    assert r.max_model_len == 4096 and r.warnings


def test_a_context_too_long_for_the_gpu_reports_what_fits() -> None:
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    r = plan_llamacpp(arch, LlamaCppRequest(gpu_total_bytes=16 * GiB, n_ctx=131072))
    assert not r.fits and r.reasons
    assert 4096 < r.max_model_len_fit < 131072
    assert r.recommended_args[:2] == ["-c", str(r.max_model_len_fit // 1024 * 1024)]


def test_weights_too_big_for_the_gpu_offload_fewer_layers() -> None:
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    r = plan_llamacpp(arch, LlamaCppRequest(gpu_total_bytes=12 * GiB, n_ctx=8192))
    assert not r.fits and r.max_model_len_fit == 0
    assert 0 < r.max_gpu_layers_fit < 32
    assert r.recommended_args[:4] == ["-c", "8192", "-ngl", str(r.max_gpu_layers_fit)]
    ok = plan_llamacpp(
        arch,
        LlamaCppRequest(gpu_total_bytes=12 * GiB, n_ctx=8192, n_gpu_layers=r.max_gpu_layers_fit),
    )
    assert ok.fits


def test_bad_cache_type() -> None:
    with pytest.raises(UsageError, match="llama.cpp cache type"):
        plan_llamacpp(
            resolve("Qwen/Qwen3-8B"), LlamaCppRequest(gpu_total_bytes=24 * GiB, cache_type="fp8")
        )


def test_compute_buffer_matches_what_llama_server_reserved(tiny) -> None:  # type: ignore[no-untyped-def]
    # llama-server (CPU build, -c 4096 -ub 512) printed "compute buffer size = 8.01 MiB" with
    # flash attention and 43.01 MiB without, for this geometry (hidden 256, ff 512, 2x64 KV).
    fa = plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=4096))
    no_fa = plan_llamacpp(
        tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, n_ctx=4096, flash_attn=False)
    )
    assert fa.activation_peak_bytes / MiB == pytest.approx(8.01, rel=0.15)
    assert no_fa.activation_peak_bytes / MiB == pytest.approx(43.01, rel=0.15)


def test_catalog_model_in_a_gguf_preset() -> None:
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    r = plan_llamacpp(
        arch, LlamaCppRequest(gpu_total_bytes=24 * GiB, n_ctx=8192, quantization="Q4_K_M")
    )
    total = r.weights_bytes + r.weights_host_bytes
    # Published Q4_K_M files of this model are 4.92 GB.
    assert total / 1e9 == pytest.approx(4.92, rel=0.05)
    with pytest.raises(UsageError, match="not a GGUF preset"):
        plan_llamacpp(arch, LlamaCppRequest(gpu_total_bytes=24 * GiB, quantization="Q9_X"))


def test_a_gguf_file_is_planned_as_it_is(tiny) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="drop --quantization"):
        plan_llamacpp(tiny, LlamaCppRequest(gpu_total_bytes=8 * GiB, quantization="Q8_0"))
