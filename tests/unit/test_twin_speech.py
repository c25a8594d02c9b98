"""The twin's Whisper: encoder pass and decode in the step model, encoder admission in the
scheduler, chunked requests in the offline run, and what a request generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import audio
from labctl.errors import UsageError
from labctl.sim.engine import Twin, TwinConfig, build_twin
from labctl.sim.offline import simulate
from labctl.sim.perf import StepCost
from labctl.sim.report import percentile
from labctl.sim.scheduler import Scheduler, SimRequest
from labctl.sim.whisper import (
    decoder_prompt_tokens,
    duration_chunks,
    mel_frames,
    plan_chunk,
    segments,
)
from labctl.sim.workload import Item, audio_files, audio_lengths, synthetic

WHISPER = "openai/whisper-large-v3"
POSITIONS = 1500
KV_PER_POSITION = 2 * 32 * 1280 * 2  # K and V, 32 layers, width 1280, fp16


def whisper(gpu: str = "rtx-4090", **flags: int) -> Twin:
    return build_twin(TwinConfig(WHISPER, gpu, **flags))  # type: ignore[arg-type]


def one_clip_step(decoding: int) -> StepCost:
    """A step that admits one clip (its 4-token decoder prompt) while ``decoding`` decode."""
    return StepCost(decoding + 1, decoding + 4, 0, decoding * 20 + 4, encoder_items=1,
                    cross_tokens_read=(decoding + 1) * POSITIONS)  # fmt: skip


def decode_step(decoding: int) -> StepCost:
    return StepCost(decoding, decoding, 0, decoding * 20, cross_tokens_read=decoding * POSITIONS)


def test_twin_speech_encoder_pass_is_constant_across_concurrency() -> None:
    perf = whisper().perf
    alone = perf.step_seconds(one_clip_step(0))
    # sglang-omni#1888 on an RTX 4090: the encoder pass takes 30.7-33.6 ms at every concurrency.
    assert 0.029 < alone < 0.036
    for decoding in (1, 8, 32, 63):
        assert perf.step_seconds(one_clip_step(decoding)) == pytest.approx(alone, rel=0.1)
    # ... and it is compute: a faster GPU's encoder is faster.
    assert whisper("h100-sxm").perf.step_seconds(one_clip_step(0)) < alone / 3


def test_twin_speech_clips_batched_in_one_pass_cost_less_each() -> None:
    perf = whisper().perf
    one, four = perf.encoder_seconds(1), perf.encoder_seconds(4)
    assert 4 * one > four > 2 * one  # SMs idle in one clip's last wave; four fill them better


def test_twin_speech_decode_is_bandwidth_bound_on_weights_self_and_cross_kv() -> None:
    perf = whisper().perf
    one, many = perf.step_seconds(decode_step(1)), perf.step_seconds(decode_step(32))
    assert perf.cross_kv_bytes_per_token == KV_PER_POSITION
    assert perf.full_kv_bytes_per_token == KV_PER_POSITION  # self-attention only
    # The decoder's weights (about 1.8 GB) once per step; each sequence its 246 MB of cross K/V.
    assert 1.7e9 < perf.dense_bytes < 1.9e9
    extra = 31 * (POSITIONS + 20) * KV_PER_POSITION / perf.bandwidth
    assert many - one == pytest.approx(extra + 31 * 25e-6, rel=0.05)


def speech_scheduler(budget: int) -> Scheduler:
    return Scheduler(num_blocks=2000, block_size=16, max_num_seqs=64,
                     max_num_batched_tokens=budget, encoder_budget=max(budget, POSITIONS))  # fmt: skip


@pytest.mark.parametrize(("budget", "clips"), [(2048, 1), (6144, 4)])
def test_twin_speech_starts_as_many_clips_per_step_as_the_encoder_budget_allows(
    budget: int, clips: int
) -> None:
    s = speech_scheduler(budget)
    for i in range(6):
        s.add(SimRequest(i, 4, 10, 0.0, encoder_positions=POSITIONS))
    batch = s.schedule(0.0)
    assert batch.cost.encoder_items == clips and len(batch.items) == clips
    s.complete(batch, 1.0)
    batch = s.schedule(1.0)  # the next step decodes those and starts the next clips
    assert batch.cost.encoder_items == min(clips, 6 - clips)
    assert batch.cost.cross_tokens_read == len(batch.items) * POSITIONS


def test_twin_speech_request_keeps_cross_attention_blocks_until_it_ends() -> None:
    s = speech_scheduler(2048)
    r = SimRequest(0, 4, 3, 0.0, encoder_positions=POSITIONS)
    s.add(r)
    t = 0.0
    while r.finished is None:
        s.complete(s.schedule(t), t + 1)
        if r.finished is None:
            assert s.free_blocks == 2000 - 94 - 1  # 1,500 cross positions, 4-7 of its own
        t += 1
    assert s.free_blocks == 2000 and r.generated == 3


def clips(n: int, seconds: float) -> list[Item]:
    return audio_lengths(n, seconds)


def run(twin: Twin, seconds: float, n: int, concurrency: int) -> dict[str, float]:
    summary, _ = simulate(twin, clips(n, seconds), [0.0] * n, concurrency)
    return summary


def test_twin_speech_latency_grows_with_audio_length() -> None:
    twin = whisper()
    e2el = [run(twin, s, 2, 1)["mean_e2el_ms"] for s in (2.0, 10.0, 29.0, 75.0)]
    assert e2el == sorted(e2el) and len(set(e2el)) == 4
    # A clip under 30 s is one encoder pass however long: its first token comes as soon.
    ttft = [run(twin, s, 2, 1)["mean_ttft_ms"] for s in (2.0, 29.0)]
    assert ttft[0] == pytest.approx(ttft[1])
    # 75 s is three chunks, one after another: three encoder passes and ~206 tokens.
    assert e2el[3] > 2.4 * e2el[2]


def test_twin_speech_latency_grows_with_concurrency_until_the_batch_is_full() -> None:
    twin = whisper(max_num_batched_tokens=6144, max_num_seqs=32)
    runs = {c: run(twin, 4.7, 20 * c, c) for c in (1, 8, 32, 64)}
    lat = [runs[c]["mean_e2el_ms"] for c in (1, 8, 32, 64)]
    rps = [runs[c]["request_throughput"] for c in (1, 8, 32, 64)]
    assert lat == sorted(lat) and rps[:3] == sorted(rps[:3])
    assert rps[3] == pytest.approx(rps[2], rel=0.1)  # 32 running at most: no gain at 64 ...
    assert lat[3] == pytest.approx(2 * lat[2], rel=0.2)  # ... and twice the latency


def test_twin_speech_offline_run_matches_the_published_rtx_4090_run() -> None:
    """sglang-omni#1888 (Whisper large-v3, RTX 4090, ~4.7 s clips, 32 running at most, four
    1,504-token requests per prefill batch): 9.74 req/s and p95 0.124 s at c=1; 47.7 req/s
    and p95 0.923 s at c=32. The live benchmark is benchmarks/twin_speech.py."""
    twin = whisper(max_num_batched_tokens=6144, max_num_seqs=32)
    published = {1: (9.74, 0.124), 32: (47.68, 0.923)}
    for c, (rps, p95) in published.items():
        items = clips(20 * c, 4.7)
        summary, _ = simulate(twin, items, [0.0] * len(items), c, percentiles=(95,))
        assert summary["request_throughput"] == pytest.approx(rps, rel=0.25), c
        assert summary["p95_e2el_ms"] / 1000 == pytest.approx(p95, rel=0.25), c


def test_twin_speech_run_reports_audio_seconds_and_rtfx() -> None:
    summary, _ = simulate(whisper(), clips(10, 6.0), [0.0] * 10, 2)
    assert summary["completed"] == 10 and summary["audio_seconds"] == pytest.approx(60.0)
    assert summary["rtfx"] == pytest.approx(60.0 / summary["duration"])
    # Prompt tokens as vLLM counts them: 4 decoder tokens and 600 mel frames a clip.
    assert summary["total_input_tokens"] == 10 * (4 + 600)


def test_twin_speech_run_refuses_a_workload_of_the_wrong_kind() -> None:
    with pytest.raises(UsageError, match="is a speech model: give --audio-seconds"):
        simulate(whisper(), synthetic(2, 10, 10), [0.0, 0.0])
    text = build_twin(TwinConfig("Qwen/Qwen3-0.6B", "rtx-4090"))
    with pytest.raises(UsageError, match="need a speech model"):
        simulate(text, clips(2, 3.0), [0.0, 0.0])


def test_twin_speech_request_generates_at_a_speaking_rate_within_its_cap() -> None:
    samples = round(4.7 * audio.SAMPLE_RATE)
    c = plan_chunk(0, samples, 4, 444, verbose=False)
    assert (c.words, c.generated, c.stops, c.text_tokens) == (13, 14, True, 13)  # and EOS
    capped = plan_chunk(0, samples, 4, 5, verbose=False)
    assert (capped.generated, capped.stops, capped.text_tokens) == (5, False, 5)
    verbose = plan_chunk(1, 12 * audio.SAMPLE_RATE, 4, 444, verbose=True)
    assert verbose.segments == 3 and verbose.generated == 33 + 6 + 1
    segs = segments(verbose, ["a", "b"], 0.0)
    assert [(s["start"], s["end"], s["seek"]) for s in segs] == [
        (30.0, 34.0, 30), (34.0, 38.0, 30), (38.0, 42.0, 30)
    ]  # fmt: skip
    assert "".join(str(s["text"]) for s in segs) == " a b" * 16 + " a"


def test_twin_speech_counts_chunks_prompt_and_frames_as_vllm_does() -> None:
    assert duration_chunks(75.0) == [30.0, 30.0, 15.0] and duration_chunks(30.0) == [30.0]
    assert decoder_prompt_tokens("") == 4 and decoder_prompt_tokens("names: Ada, Bo") == 8
    assert mel_frames(6.0) == 600 and mel_frames(4.7) == 470 and mel_frames(4.701) == 471


def test_twin_speech_workload_from_files_cuts_long_audio(tmp_path: Path) -> None:
    (tmp_path / "short.wav").write_bytes(audio.clip(4.0))
    (tmp_path / "long.wav").write_bytes(audio.clip(70.0, seed=2))
    (tmp_path / "notes.txt").write_text("not audio")
    items = audio_files([tmp_path], 4)
    chunks = sorted(len(i.audio) for i in items)
    assert chunks == [1, 1, 3, 3]
    long = next(i for i in items if len(i.audio) == 3)
    assert sum(long.audio) == 70 * audio.SAMPLE_RATE
    assert all(n <= 30 * audio.SAMPLE_RATE for n in long.audio)
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(UsageError, match="bad.wav: not an audio file"):
        audio_files([tmp_path / "bad.wav"], 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no audio files"):
        audio_files([tmp_path / "empty"], 1)


def test_twin_speech_lengths_spread_by_the_range_ratio() -> None:
    lengths = [i.audio_seconds for i in audio_lengths(200, 10.0, 0.5, seed=3)]
    assert 5.0 <= min(lengths) < 6.0 and 14.0 < max(lengths) <= 15.0
    assert percentile(lengths, 50) == pytest.approx(10.0, abs=1.0)
    with pytest.raises(UsageError, match="must be a positive length"):
        audio_lengths(1, 0.0)
