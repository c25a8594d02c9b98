"""Whisper plans: vLLM's encoder-decoder accounting, and whisper.cpp's buffers from a ggml file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
import re
import struct

import pytest
from tests.tinywhisper import write_model
from tests.unit.test_kv_layout import request

from labctl.catalog.arch import Role
from labctl.catalog.ggml import MAGIC, WhisperHparams, is_whisper_ggml, read_whisper_ggml
from labctl.catalog.models import resolve
from labctl.errors import ModelFormatError, UsageError
from labctl.fit.encdec import EncoderDecoderPlan
from labctl.fit.ggmlgraph import Graph, compute_buffer_bytes
from labctl.fit.plan import FitResult, plan
from labctl.fit.whispercpp import META_BYTES, plan_file, plan_hparams, weight_bytes
from labctl.units import GiB

# ---------------------------------------------------------------------------
# vLLM


def whisper_plan(model: str, gpu_id: str, **kw: object) -> tuple[FitResult, EncoderDecoderPlan]:
    r = plan(resolve(model), request(gpu_id, **kw))
    assert r.encoder_decoder is not None
    return r, r.encoder_decoder


def test_large_v3_parameters_encoder_plus_decoder() -> None:
    arch = resolve("openai/whisper-large-v3")
    # Encoder 636,968,960 (convs, 1,500 positions, 32 blocks) + decoder 906,521,600
    # (tied 51,866 × 1,280 embedding, 448 positions, 32 blocks) = 1.543 B, bf16 3.09 GB.
    encoder = sum(w.numel for w in arch.weights if w.role is Role.VISION)
    assert encoder == 636_968_960
    assert arch.param_count - encoder == 906_521_600
    assert arch.param_count == 1_543_490_560
    r, _ = whisper_plan("openai/whisper-large-v3", "rtx-3090")
    assert r.weights_bytes == 2 * 1_543_490_560 and r.dtype == "float16"


@pytest.mark.parametrize(
    ("model", "params", "per_position"),
    [
        # (params as the published safetensors count them, KV bytes per position in fp16)
        ("openai/whisper-large-v3-turbo", 808_878_080, 4 * 2 * 1280 * 2),
        ("openai/whisper-medium", 763_857_920, 24 * 2 * 1024 * 2),
        ("openai/whisper-small", 241_734_912, 12 * 2 * 768 * 2),
        ("openai/whisper-base", 72_593_920, 6 * 2 * 512 * 2),
        ("openai/whisper-tiny", 37_760_640, 4 * 2 * 384 * 2),
    ],
)
def test_variants_count_parameters_and_kv_per_position(
    model: str, params: int, per_position: int
) -> None:
    assert resolve(model).param_count == params
    _, e = whisper_plan(model, "rtx-3090", dtype="float16")
    assert e.kv_self_bytes_per_position == e.kv_cross_bytes_per_position == per_position
    assert e.kv_cross_bytes_per_request == 1500 * per_position


def test_turbo_is_not_an_alias_of_large_v3() -> None:
    turbo = resolve("openai/whisper-large-v3-turbo")
    assert turbo.name == "openai/whisper-large-v3-turbo" and turbo.num_hidden_layers == 4


def test_large_v3_kv_per_request_self_and_cross() -> None:
    r, e = whisper_plan("openai/whisper-large-v3", "rtx-3090")
    assert e.kv_self_bytes_per_position == e.kv_cross_bytes_per_position == 163_840
    assert e.encoder_positions == 1500
    assert e.kv_cross_bytes_per_request == 245_760_000  # 245.8 MB
    assert round(e.kv_cross_bytes_per_request / 1e6, 1) == 245.8
    assert e.kv_self_bytes_per_request == 448 * 163_840  # 73.4 MB
    assert (e.kv_self_blocks_per_request, e.kv_cross_blocks_per_request) == (28, 94)
    assert e.kv_blocks_per_request == 122 and r.block_size == 16


@pytest.mark.parametrize(
    ("gpu_id", "budget", "clips", "seqs"),
    [("rtx-3090", 2048, 1, 256), ("a100-80gb", 2048, 1, 256), ("h100-sxm", 8192, 5, 1024)],
)
def test_encoder_budget_and_clips_per_step(gpu_id: str, budget: int, clips: int, seqs: int) -> None:
    r, e = whisper_plan("openai/whisper-large-v3", gpu_id)
    assert r.max_num_batched_tokens == budget and e.encoder_budget_tokens == budget
    assert e.clips_per_step == clips and e.max_num_seqs == r.max_num_seqs == seqs


def test_a_budget_below_one_clip_still_starts_one() -> None:
    _, e = whisper_plan("openai/whisper-large-v3", "h100-sxm", max_num_batched_tokens=1024)
    assert e.encoder_budget_tokens == 1500 and e.clips_per_step == 1
    _, e = whisper_plan("openai/whisper-large-v3", "h100-sxm", max_num_batched_tokens=32768)
    assert e.clips_per_step == 21


def test_concurrency_is_pool_blocks_over_one_chunk_request() -> None:
    r, e = whisper_plan("openai/whisper-large-v3", "rtx-3090", kv_cache_memory_bytes=16 * GiB)
    block = 16 * 163_840  # one pool block: 16 positions of the 32 layers of one group
    blocks = 16 * GiB // block
    assert r.num_gpu_blocks == blocks
    assert e.kv_concurrency == pytest.approx(blocks / 122, abs=0.01)
    assert r.max_concurrency == e.max_concurrency == e.kv_concurrency
    # vLLM's own line reserves cross blocks for the 2,048-token batch budget.
    assert e.vllm_logged_concurrency == pytest.approx(blocks / (28 + 128), abs=0.01)


def test_concurrency_on_default_gpus() -> None:
    r3090, _ = whisper_plan("openai/whisper-large-v3", "rtx-3090")
    h100, eh100 = whisper_plan("openai/whisper-large-v3", "h100-sxm")
    assert r3090.num_gpu_blocks // 122 <= r3090.max_concurrency < r3090.num_gpu_blocks // 122 + 1
    # ~18 GB of KV on a 3090 holds ~57 one-chunk requests, ~71 GB on an H100 ~223.
    assert 50 < r3090.max_concurrency < 60 and 200 < h100.max_concurrency < 240
    assert eh100.vllm_logged_concurrency < h100.max_concurrency / 4


def test_concurrency_is_capped_by_max_num_seqs() -> None:
    r, e = whisper_plan("openai/whisper-tiny", "h100-sxm", max_num_seqs=64)
    assert e.kv_concurrency > 64 and r.max_concurrency == 64


def test_json_carries_the_whisper_fields_and_llms_do_not() -> None:
    r, _ = whisper_plan("openai/whisper-large-v3", "h100-sxm")
    doc = r.to_json()
    assert doc["kv_self_bytes_per_request"] == 73_400_320
    assert doc["kv_cross_bytes_per_request"] == 245_760_000
    assert doc["clips_per_step"] == 5 and doc["max_num_seqs"] == 1024
    assert doc["max_concurrency"] == r.max_concurrency
    assert "encoder_decoder" not in doc
    llm = plan(resolve("Qwen/Qwen2.5-7B-Instruct"), request("rtx-3090")).to_json()
    assert "clips_per_step" not in llm and "kv_cross_bytes_per_request" not in llm


# ---------------------------------------------------------------------------
# whisper.cpp


def fake_source(path: Path, tokens: int = 3) -> Path:
    """A header-only ggml file like whisper.cpp's test models, with a tiny vocabulary."""
    hp = (51865, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1)
    parts = [struct.pack("<12i", MAGIC, *hp), struct.pack("<2i", 80, 201), bytes(80 * 201 * 4)]
    parts.append(struct.pack("<i", tokens))
    for i in range(tokens):
        word = f"t{i}".encode()
        parts.append(struct.pack("<i", len(word)) + word)
    path.write_bytes(b"".join(parts))
    return path


def hparams(**kw: int) -> WhisperHparams:
    base = {"n_vocab": 51865, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
            "n_audio_layer": 4, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6,
            "n_text_layer": 4, "n_mels": 80, "ftype": 1}  # fmt: skip
    return WhisperHparams(**(base | kw))


#: Released geometries (whisper.cpp's test models carry the real headers).
TINY = hparams()
BASE = hparams(n_audio_state=512, n_text_state=512, n_audio_head=8, n_text_head=8,
               n_audio_layer=6, n_text_layer=6)  # fmt: skip
LARGE = hparams(n_audio_state=1280, n_text_state=1280, n_audio_head=20, n_text_head=20,
                n_audio_layer=32, n_text_layer=32)  # fmt: skip
LARGE_V3 = replace(LARGE, n_mels=128, n_vocab=51866)


def test_reads_the_header_and_tensor_table(tmp_path: Path) -> None:
    src = fake_source(tmp_path / "src.bin")
    path = write_model(tmp_path / "m.bin", n_audio_layer=2, n_text_layer=3, source=src)
    model = read_whisper_ggml(path)
    hp = model.hparams
    assert (hp.n_audio_state, hp.n_audio_layer, hp.n_text_layer, hp.n_vocab) == (64, 2, 3, 51865)
    assert (model.n_mel_filters, model.n_fft, model.n_tokens) == (80, 201, 3)
    assert len(model.tensors) == 7 + 15 * 2 + 4 + 24 * 3
    te = next(t for t in model.tensors if t.name == "decoder.token_embedding.weight")
    assert te.ne == (64, 51865) and te.type == 1 and te.nbytes == 64 * 51865 * 2
    # The weight buffer is every tensor the loader creates, each padded to 32 bytes.
    assert weight_bytes(hp) == sum((t.nbytes + 31) // 32 * 32 for t in model.tensors)
    assert is_whisper_ggml(path) and not is_whisper_ggml(tmp_path / "missing.bin")


def test_a_header_only_file_has_no_tensors(tmp_path: Path) -> None:
    model = read_whisper_ggml(fake_source(tmp_path / "src.bin"))
    assert model.tensors == () and model.hparams == TINY and model.hparams.model_name == "tiny"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"GGUF" + b[4:], "not a whisper.cpp ggml model"),
        (lambda b: b[:30], "ends inside the hyper-parameters"),
        (lambda b: b[: 56 + 80 * 201 * 4 + 6], "ends inside the vocabulary"),
        (lambda b: b[:-5], "ends inside the data of tensor"),
        (lambda b: b[:28] + struct.pack("<i", 128) + b[32:], "n_text_state 128 differs"),
        (lambda b: b[:12] + struct.pack("<i", 0) + b[16:], "n_audio_state 0"),
        (lambda b: b[:40] + struct.pack("<i", 128) + b[44:], "mel filter bank has 80 bands"),
        (lambda b: b[:44] + struct.pack("<i", 5) + b[48:], "unknown ggml file type 5"),
        (lambda b: b[:56 + 80 * 201 * 4] + struct.pack("<i", 1 << 30) + b[60 + 80 * 201 * 4:],
         "declares 1073741824 vocabulary tokens"),
    ],
)  # fmt: skip
def test_malformed_files_are_refused_in_one_line(
    tmp_path: Path, mutate: Callable[[bytes], bytes], message: str
) -> None:
    src = fake_source(tmp_path / "src.bin")
    good = write_model(tmp_path / "m.bin", source=src).read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(good))
    with pytest.raises(ModelFormatError, match=re.escape(message)) as info:
        plan_file(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_kv_caches_are_padded_to_256_cells() -> None:
    # whisper-server logs for large: kv self 83.89 MB, kv cross 251.66 MB, kv pad 7.86 MB.
    p = plan_hparams(LARGE)
    assert p.kv_self == 2 * 2 * 1280 * 32 * 512 == 83_886_080
    assert p.kv_cross == 2 * 2 * 1280 * 32 * 1536 == 251_658_240
    assert p.kv_pad == 2 * 2 * 1280 * 1536 == 7_864_320
    # Five beams re-create the self-attention cache for 5 + 2 sequences.
    assert plan_hparams(LARGE, decoders=5).kv_self == 7 * p.kv_self
    with pytest.raises(UsageError, match="decoders 9"):
        plan_hparams(LARGE, decoders=9)


# (hparams, figures whisper-server 1.8.5 printed at load, in MB, flash attention on)
LOGGED = [
    (TINY, (77.11, 3.15, 9.44, 2.36, 13.21, 17.72, 3.89, 95.91)),
    (BASE, (147.37, 6.29, 18.87, 3.15, 16.28, 23.09, 4.66, 96.37)),
    (LARGE, (3093.99, 83.89, 251.66, 7.86, 34.71, 55.35, 9.27, 99.12)),
]


@pytest.mark.parametrize(("hp", "logged"), LOGGED)
def test_plan_reproduces_the_load_log_of_released_geometries(
    hp: WhisperHparams, logged: tuple[float, ...]
) -> None:
    p = plan_hparams(hp)
    figures = (p.weights, p.kv_self, p.kv_cross, p.kv_pad, p.compute_conv, p.compute_encode,
               p.compute_cross, p.compute_decode)  # fmt: skip
    for got, printed in zip(figures, logged, strict=True):
        assert abs(got / 1e6 - printed) <= 0.005 + 1e-9, (got, printed)


def test_without_flash_attention_the_encoder_holds_the_attention_matrix() -> None:
    # whisper-server -nfa printed compute buffer (encode) = 64.81 MB for tiny, 212.31 MB
    # for large: the n_ctx × n_ctx scores of every head in f32.
    assert abs(plan_hparams(TINY, flash_attn=False).compute_encode / 1e6 - 64.81) <= 0.005
    assert abs(plan_hparams(LARGE, flash_attn=False).compute_encode / 1e6 - 212.31) <= 0.005
    assert plan_hparams(TINY, flash_attn=False).compute_decode == plan_hparams(TINY).compute_decode


def test_quantized_weights_and_the_v3_front_end() -> None:
    # whisper-server printed CPU_REPACK 24.77 MB + CPU 21.11 MB for base in q4_0, 81.18 in q8_0.
    assert abs(weight_bytes(replace(BASE, ftype=2)) / 1e6 - 45.88) <= 0.01
    assert abs(weight_bytes(replace(BASE, ftype=7)) / 1e6 - 81.18) <= 0.005
    v3 = plan_hparams(LARGE_V3)
    assert v3.compute_conv > plan_hparams(LARGE).compute_conv  # 128 mel bands
    assert v3.model == "large v3" and v3.kv_cross == plan_hparams(LARGE).kv_cross


def test_decoder_buffer_is_dominated_by_logits_for_every_token() -> None:
    logits = 448 * 51865 * 4
    assert 0 < plan_hparams(TINY).compute_decode - META_BYTES - logits < 4_000_000
    shorter = plan_hparams(replace(TINY, n_text_ctx=224))
    assert shorter.compute_decode - META_BYTES < 224 * 51865 * 4 + 2_000_000


def test_plan_file_summary_and_total(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.bin", source=fake_source(tmp_path / "src.bin"))
    p = plan_file(path)
    assert p == plan_hparams(read_whisper_ggml(path).hparams, model="m.bin")
    assert p.total == sum(n for name, n, _ in p.rows() if name != "total")
    summary = p.summary()
    assert "\n" not in summary and summary.startswith("weights 7.43 MB, kv self 0.13 MB")
    assert "decode 94.76)" in summary
    doc = p.to_json()
    assert doc["kv_cross_bytes"] == p.kv_cross and doc["total_bytes"] == p.total


# ---------------------------------------------------------------------------
# ggml's graph allocator


def test_allocator_reuses_a_sole_consumer_in_place_and_frees_after_last_use() -> None:
    g = Graph()
    x = g.input("f32", 1000)
    a = g.mul_mat(Graph.external("f16", 1000, 1000), x)  # 4,000 B
    b = g.add(a, Graph.external("f32", 1000))  # in place of a
    c = g.gelu(b)  # in place of b
    g.expand(c)
    assert compute_buffer_bytes(g) == 4000 + 4000


def test_allocator_grows_the_tail_when_a_freed_hole_is_too_small() -> None:
    # The mel → im2col → matmul sequence of whisper.cpp's first convolution: the freed
    # input leaves a hole smaller than the product, so the buffer grows past the live sum.
    g = Graph()
    mel = g.input("f32", 3000, 80)
    out = g.conv_1d_ph(Graph.external("f16", 3, 80, 128), mel, 1)
    g.expand(out)
    mel_b, cols, prod = 3000 * 80 * 4, 240 * 3000 * 2, 3000 * 128 * 4
    assert compute_buffer_bytes(g) == mel_b + cols + prod > cols + prod


def test_a_shared_parent_is_not_overwritten() -> None:
    def peak(shared: bool) -> int:
        g = Graph()
        a = g.norm(Graph.external("f32", 256))  # 1 KiB
        b = g.gelu(a)  # in place of a unless a is read again
        g.expand(g.add(a, b) if shared else b)
        return compute_buffer_bytes(g)

    assert peak(shared=False) == 1024 and peak(shared=True) == 2048
