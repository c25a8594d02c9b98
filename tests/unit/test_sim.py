"""The twin's pure parts: step-time model, scheduler, workloads, `vllm bench serve` summaries."""

from __future__ import annotations

import math

import pytest

from labctl.catalog.gpus import architecture
from labctl.errors import EngineError, UsageError
from labctl.sim.bottleneck import roofline
from labctl.sim.engine import TwinConfig, build_twin
from labctl.sim.offline import simulate
import labctl.sim.perf as step_model
from labctl.sim.perf import StepCost, chunk_pairs, window_pairs
from labctl.sim.report import Outcome, percentile, summarize
from labctl.sim.scheduler import Scheduler, SimRequest
from labctl.sim.workload import arrival_times, sharegpt_like, synthetic

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_sim_twin_kv_cache_is_what_fit_plans() -> None:
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    sched = twin.scheduler()
    assert sched.num_blocks * sched.block_size == twin.fit.kv_cache_tokens // 16 * 16
    assert sched.max_num_seqs == twin.fit.max_num_seqs


def test_sim_twin_that_does_not_fit_fails_with_vllms_message() -> None:
    with pytest.raises(
        EngineError, match="To serve at least one request with the models's max seq len"
    ):
        build_twin(TwinConfig("Qwen/Qwen3-8B", "rtx-3090"))
    with pytest.raises(EngineError, match="No available memory for the cache blocks"):
        build_twin(TwinConfig("Qwen/Qwen2.5-72B-Instruct", "rtx-3090"))


def test_sim_decode_step_is_bandwidth_bound_and_grows_with_context() -> None:
    perf = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192)).perf
    short = perf.step_seconds(StepCost(1, 1, 1024, 1024))
    long = perf.step_seconds(StepCost(1, 1, 100_000, 100_000))
    # ~15 GB of weights at ~2.9 TB/s plus overheads; 100k tokens add ~13 GB of KV.
    assert 5e-3 < short < 8e-3
    assert long - short == pytest.approx(99_000 * 131072 / perf.bandwidth, rel=0.05)


def test_sim_prefill_is_compute_bound() -> None:
    perf = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192)).perf
    t = perf.step_seconds(StepCost(1, 8192, 8192 * 8193 // 2, 8192))
    flops = 2 * 8.03e9 * 8192
    assert t > flops / perf.peak_flops  # never faster than peak
    assert t < flops / (0.3 * perf.peak_flops)  # nor slower than 30% of it (attention too)


def test_sim_moe_reads_only_the_experts_the_batch_routes_to() -> None:
    perf = build_twin(TwinConfig("Qwen/Qwen3-30B-A3B", "h100-sxm", max_model_len=8192)).perf
    assert perf.experts_touched(1) == pytest.approx(8 / 128)
    assert perf.experts_touched(512) > 0.99
    assert perf.step_seconds(StepCost(1, 1, 100, 100)) < perf.step_seconds(
        StepCost(64, 64, 6400, 6400)
    )


def make_sched(blocks: int = 100, seqs: int = 4, budget: int = 64) -> Scheduler:
    return Scheduler(
        num_blocks=blocks, block_size=16, max_num_seqs=seqs, max_num_batched_tokens=budget
    )


def test_sim_scheduler_chunks_a_long_prompt_under_the_token_budget() -> None:
    s = make_sched(budget=64)
    r = SimRequest(0, prompt_len=150, max_tokens=3, arrival=0.0)
    s.add(r)
    chunks = []
    t = 0.0
    while r.finished is None:
        batch = s.schedule(t)
        chunks.append(batch.items[0][1])
        t += 1
        s.complete(batch, t)
    assert chunks == [64, 64, 22, 1, 1]
    assert r.first_token == 3.0 and r.itl == [1.0, 1.0] and s.free_blocks == 100


def test_sim_scheduler_caps_running_sequences_and_queues_the_rest() -> None:
    s = make_sched(seqs=2, budget=1000)
    reqs = [SimRequest(i, 10, 5, 0.0) for i in range(3)]
    for r in reqs:
        s.add(r)
    batch = s.schedule(0.0)
    assert [r.id for r, _ in batch.items] == [0, 1] and list(s.waiting) == [reqs[2]]


def test_sim_scheduler_preempts_the_newest_when_blocks_run_out() -> None:
    s = make_sched(blocks=4, seqs=4, budget=1000)  # 64 tokens of KV
    a, b = SimRequest(0, 30, 20, 0.0), SimRequest(1, 30, 20, 0.0)
    s.add(a)
    s.add(b)
    t = 0.0
    while a.finished is None:
        t += 1
        s.complete(s.schedule(t), t)
    assert b.preemptions >= 1 and s.preemptions_total >= 1
    assert a.generated == 20
    while b.finished is None:
        t += 1
        s.complete(s.schedule(t), t)
    assert b.generated == 20 and s.free_blocks == 4


def test_sim_scheduler_keeps_a_preempted_requests_work_until_its_blocks_are_taken() -> None:
    """vLLM V1: a preempted request's full blocks stay cached among the free ones; others
    take plain free blocks first, then its last blocks; admitted again, it recomputes only
    what was taken (without keeping, all of it)."""
    recomputed = {}
    for keep in (True, False):
        s = Scheduler(6, 16, 4, 1000, keep_preempted=keep)  # 96 tokens of KV
        a, b = SimRequest(0, 40, 30, 0.0), SimRequest(1, 40, 30, 0.0)
        s.add(a)
        s.add(b)
        t, steps = 0.0, []
        while b.finished is None:
            t += 1
            batch = s.schedule(t)
            steps.append((batch.items, batch.preempted))
            s.complete(batch, t)
        assert [p for _, p in steps if p] == [[b]]  # at 48 tokens, a needs b's third block
        # b had computed 47 tokens (2 full blocks kept); a grew into one of them.
        (n,) = [n for items, _ in steps for r, n in items if r is b and n > 1][1:]
        recomputed[keep] = n
        assert b.cached_tokens == (16 if keep else 0)
        assert b.generated == 30 and s.free_blocks == 6 and s._kept_total == 0
    assert recomputed == {True: 49 - 16, False: 49}


def test_sim_scheduler_prefix_cache_skips_shared_blocks() -> None:
    s = Scheduler(100, 16, 4, 1000, prefix_caching=True)
    first = SimRequest(0, 64, 2, 0.0, prefix_keys=(1, 2, 3, 4))
    s.add(first)
    s.complete(s.schedule(0.0), 1.0)
    second = SimRequest(1, 64, 2, 1.0, prefix_keys=(1, 2, 3, 9))
    s.add(second)
    batch = s.schedule(1.0)
    assert {r.id: n for r, n in batch.items}[1] == 64 - 48
    assert second.cached_tokens == 48


def test_sim_offline_concurrency_one_runs_requests_back_to_back() -> None:
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    summary, timeline = simulate(twin, synthetic(4, 512, 64), [0.0] * 4, max_concurrency=1)
    assert summary["completed"] == 4 and summary["failed"] == 0
    assert summary["median_itl_ms"] == pytest.approx(summary["median_tpot_ms"], rel=0.05)
    per_request = summary["mean_e2el_ms"] / 1000
    assert summary["duration"] == pytest.approx(4 * per_request, rel=0.05)
    assert timeline.running and max(timeline.running) == 1


def test_sim_offline_a_request_reaches_the_api_server_when_its_client_sends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed-loop client sends its next request when the last one's last token reaches
    it, and the API server takes it in from then, while the engine runs its next step: the
    request's prefill runs in the step after that one, so its first token comes about two
    steps after it was sent (one step of waiting, one of prefill), not three. Likewise a
    request sent in the middle of a step is taken in from the moment it is sent."""
    monkeypatch.setattr(step_model, "STEP_OVERHEAD_S", 0.04)  # every step ~40 ms
    monkeypatch.setattr(step_model, "FRONTEND_S", 0.0)
    monkeypatch.setattr(step_model, "INTAKE_S", 1e-3)
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    items = synthetic(30, 16, 40, range_ratio=0.5, seed=1)
    summary, _ = simulate(twin, items, [0.0] * 30, max_concurrency=2)
    step = summary["median_itl_ms"]
    assert 40 <= step < 45
    assert summary["median_ttft_ms"] < 2.2 * step
    # open loop: one request sent 1.01 s in, while another has been decoding since 0 s
    summary, _ = simulate(twin, synthetic(2, 16, 60), [0.0, 1.01])
    # its intake ends 1 ms after it was sent; it waits out the step in flight (< 1 step)
    # and is prefilled in the next: less than two steps in all (the first request, alone,
    # about one)
    assert summary["p99_ttft_ms"] < 2 * step + 1


def test_sim_offline_rejects_requests_longer_than_the_context() -> None:
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=2048))
    summary, _ = simulate(twin, synthetic(2, 4000, 16), [0.0, 0.0])
    assert summary["failed"] == 2 and summary["completed"] == 0


def test_sim_workload_arrivals_have_the_asked_rate_and_are_reproducible() -> None:
    times = arrival_times(20_000, 10.0, seed=3)
    assert times == arrival_times(20_000, 10.0, seed=3)
    assert 20_000 / times[-1] == pytest.approx(10.0, rel=0.03)
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]
    with pytest.raises(UsageError, match="burstiness"):
        arrival_times(3, 1.0, burstiness=0)
    items = sharegpt_like(5000)
    assert 180 < sum(i.prompt_len for i in items) / 5000 < 260
    spread = synthetic(1000, 100, 10, range_ratio=0.5)
    assert min(i.prompt_len for i in spread) >= 50 and max(i.prompt_len for i in spread) <= 150


def test_sim_report_uses_vllm_definitions() -> None:
    outcomes = [
        Outcome(10, 5, ttft=0.1, e2el=0.5, itl=[0.1, 0.1, 0.1, 0.1]),
        Outcome(10, 1, ttft=0.2, e2el=0.2, itl=[]),
        Outcome(10, 0, None, None, [], success=False),
    ]
    doc = summarize(outcomes, duration=2.0, goodput={"ttft": 150})
    assert doc["completed"] == 2 and doc["failed"] == 1
    assert doc["median_tpot_ms"] == pytest.approx(100.0)  # (500 − 100) / (5 − 1); 1-token excluded
    assert doc["output_throughput"] == 3.0 and doc["request_goodput"] == 0.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_sim_live_engine_reports_its_busy_share_once_a_second() -> None:
    import asyncio

    from labctl.sim.live import LiveEngine

    class Clock:
        t = 100.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    reports: list[float] = []

    async def go() -> None:
        engine = LiveEngine(twin, time_scale=1.0, clock=clock)
        engine.on_busy = reports.append
        engine._account(0.3)
        clock.t += 0.5
        engine._account(0.2)  # half a second: nothing yet
        clock.t += 0.5
        engine._account(0.25)
        clock.t += 2.0
        engine._account(0.0)

    asyncio.run(go())
    assert reports == [pytest.approx(0.75), 0.0]


def test_sim_a_burst_reaches_the_engine_together_after_its_intake_offline_and_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API server shares its process among the requests in hand (``perf.INTAKE_S`` of it
    each): a burst of n reaches the engine together after n × that, so its first tokens all
    come after that floor; spaced requests each take only their own. Offline and live alike."""
    import asyncio
    import time

    from labctl.sim import perf
    from labctl.sim.live import LiveEngine

    monkeypatch.setattr(perf, "INTAKE_S", 0.02)
    monkeypatch.setattr(perf, "FRONTEND_S", 0.0)
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    burst, _ = simulate(twin, synthetic(40, 16, 4), [0.0] * 40)
    alone, _ = simulate(twin, synthetic(1, 16, 4), [0.0])
    # all 40 are through at 40 × 20 ms = 0.8 s and prefilled together in one step (640
    # tokens: tens of ms on an H100), not one every 20 ms
    assert 0 < burst["median_ttft_ms"] - 800 < 50
    assert burst["p99_ttft_ms"] - burst["median_ttft_ms"] < 5
    spaced, _ = simulate(twin, synthetic(40, 16, 4), [i * 0.05 for i in range(40)])
    assert spaced["median_ttft_ms"] == pytest.approx(alone["median_ttft_ms"], rel=0.1)

    async def live() -> list[float]:
        engine = LiveEngine(twin, time_scale=0.5)
        t0 = time.monotonic()

        async def one() -> float:
            await engine.submit(16, 4)
            return time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(10)))  # all queued

    took = asyncio.run(live())
    # the first and the last alike: ten shares of 20 ms, at the time scale
    assert 10 * 0.02 * 0.5 <= min(took) <= max(took) < 10 * 0.02 * 0.5 + 0.08


def test_sim_the_api_servers_streaming_caps_the_tokens_clients_see_offline_and_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API server streams each token at a cost, one step after another, and the engine
    does not wait for it: when the engine outruns it, tokens reach the clients late and the
    run's output rate is the API server's, 1 / STREAM_TOKEN_S."""
    import asyncio
    import time

    from labctl.sim import perf
    from labctl.sim.live import LiveEngine

    for name in ("INTAKE_S", "FRONTEND_S"):
        monkeypatch.setattr(perf, name, 0.0)
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192))
    engine_only, _ = simulate(twin, synthetic(8, 16, 50), [0.0] * 8)
    monkeypatch.setattr(perf, "STREAM_TOKEN_S", 3e-3)  # 8 tokens a step: 24 ms a step
    summary, timeline = simulate(twin, synthetic(8, 16, 50), [0.0] * 8)
    assert engine_only["median_tpot_ms"] < 12  # the engine alone: a few ms a step
    assert summary["output_throughput"] == pytest.approx(1 / 3e-3, rel=0.05)
    assert summary["median_tpot_ms"] == pytest.approx(8 * 3.0, rel=0.05)
    # the engine was done long before its clients saw the last tokens
    assert timeline.end < 0.5 * summary["duration"]

    async def live() -> float:
        engine = LiveEngine(twin, time_scale=0.25)
        runner = asyncio.create_task(engine.run())
        t0 = time.monotonic()

        async def one() -> None:
            stream = await engine.submit(16, 50)
            while await stream.queue.get() is not None:
                pass

        await asyncio.gather(*(one() for _ in range(8)))
        runner.cancel()
        return time.monotonic() - t0

    took = asyncio.run(live())
    assert took == pytest.approx(400 * 3e-3 * 0.25, rel=0.15)

    # two API server processes (--api-server-count 2) stream twice as fast
    twin = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192, api_server_count=2))
    two, _ = simulate(twin, synthetic(8, 16, 50), [0.0] * 8)
    assert two["output_throughput"] == pytest.approx(2 / 3e-3, rel=0.05)
    assert asyncio.run(live()) == pytest.approx(400 * 3e-3 * 0.25 / 2, rel=0.15)
    with pytest.raises(UsageError, match="--api-server-count 0"):
        build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192, api_server_count=0))


def test_sim_attention_runs_at_the_kv_caches_rate_not_the_fp8_weights() -> None:
    # FP8 weights make the GEMMs FP8; FlashAttention still takes BF16 Q/K/V unless the
    # KV cache is FP8 too. A 32K prefill chunk is mostly attention.
    fp8 = build_twin(TwinConfig("Qwen/Qwen3-32B-FP8", "h100-sxm", max_model_len=40960)).perf
    assert fp8.peak_flops == 1979e12 and fp8.attn_peak_flops == 989e12
    cost = StepCost(1, 8192, 8192 * 28_000, 8192)
    gemm = fp8.flops_per_token * cost.tokens / fp8.peak_flops
    attn = fp8.attn_flops_per_pair * cost.attended_tokens / 989e12
    assert fp8.step_seconds(cost) > (gemm + attn) / step_model.MFU
    kv8 = build_twin(
        TwinConfig("Qwen/Qwen3-32B-FP8", "h100-sxm", max_model_len=40960, kv_cache_dtype="fp8")
    ).perf
    assert kv8.attn_peak_flops == 1979e12
    assert kv8.step_seconds(cost) < fp8.step_seconds(cost)


def test_sim_mla_attention_counts_its_own_head_dimensions() -> None:
    # DeepSeek's MLA prefill attends with 192-wide query/key heads (128 without rotary, 64
    # with) and 128-wide value heads, 128 of them; the hidden size over the heads (56) is
    # not its head size. Per token pair and rank at TP 8: 61 layers × 2 × 16 × (192 + 128).
    perf = build_twin(TwinConfig("deepseek-ai/DeepSeek-R1-0528", "h200",
                                 tensor_parallel_size=8, vllm_version="0.11.0")).perf  # fmt: skip
    assert perf.attn_flops_per_pair == 61 * 2 * 16 * (192 + 128)
    # other attention keeps Q·K and P·V over its heads' width (Qwen3-32B: 64 heads of 128)
    qwen = build_twin(TwinConfig("Qwen/Qwen3-32B", "h100-sxm", max_model_len=8192)).perf
    assert qwen.attn_flops_per_pair == 64 * 4 * 64 * 128


def test_sim_mla_decodes_absorbed_over_the_latent() -> None:
    # A decoding token attends in the latent: every head Q·K over 576 (512 + 64 rotary)
    # and P·V over 512, 3.4× a prefill pair's work. Decoding alone reads the latents and is
    # bandwidth-bound; beside a prefill chunk the step is compute-bound, and 256 decodes at
    # 8K cost it the absorbed work, more than the same pairs prefilled would.
    perf = build_twin(TwinConfig("deepseek-ai/DeepSeek-R1-0528", "h200",
                                 tensor_parallel_size=8, vllm_version="0.11.0")).perf  # fmt: skip
    assert perf.decode_attn_flops_per_pair == 61 * 2 * 16 * (576 + 512)
    decoding, chunk = 256 * 8000, 8192 * 8193 // 2
    mixed = StepCost(257, 8192 + 256, chunk + decoding, 8192 + decoding,
                     decode_attended_tokens=decoding)  # fmt: skip
    as_prefill = StepCost(257, 8192 + 256, chunk + decoding, 8192 + decoding)
    extra = (perf.decode_attn_flops_per_pair - perf.attn_flops_per_pair) * decoding / 989e12
    assert perf.gpu_seconds(mixed) - perf.gpu_seconds(as_prefill) > extra / step_model.MFU * 0.9
    # without MLA a decoding pair costs a prefill pair's work
    qwen = build_twin(TwinConfig("Qwen/Qwen3-32B", "h100-sxm", max_model_len=8192)).perf
    assert qwen.decode_attn_flops_per_pair == qwen.attn_flops_per_pair


def first_decode_cost(sched: Scheduler, prompt_len: int) -> StepCost:
    """The work of the step after a lone request's prompt is prefilled: its first decode."""
    r = SimRequest(0, prompt_len=prompt_len, max_tokens=2, arrival=0.0)
    sched.add(r)
    t = 0.0
    while r.first_token is None:
        batch = sched.schedule(t)
        t += 1
        sched.complete(batch, t)
    return sched.schedule(t).cost


def test_sim_sliding_window_layers_attend_over_their_window_only() -> None:
    # gpt-oss-20b: 12 full layers and 12 of a 128-token window, 64 heads of 64. A token at
    # position 30,000 attends over 30,000 tokens in the first and 128 in the second.
    perf = build_twin(TwinConfig("openai/gpt-oss-20b", "h100-sxm", max_model_len=32768)).perf
    assert perf.attn_flops_per_pair == perf.window_attn_flops_per_pair == 12 * 4 * 64 * 64
    cost = first_decode_cost(Scheduler(4000, 16, 4, 8192, window=128), 30_000)
    assert cost.attended_tokens == cost.decode_attended_tokens == 30_001
    assert cost.window_attended_tokens == 128
    # a prompt's first chunk: 8,192 tokens, the window full from its 128th on
    assert window_pairs(0, 8192, 128) == 128 * 129 // 2 + (8192 - 128) * 128


def test_sim_chunked_local_layers_attend_within_their_chunk() -> None:
    # Llama 4 Scout: 36 layers attend within 8,192-token chunks. The token at position
    # 8,200 attends over the 9 of its chunk, not over the 8,192 before it.
    twin = build_twin(TwinConfig("meta-llama/Llama-4-Scout-17B-16E-Instruct", "h100-sxm",
                                 tensor_parallel_size=4, max_model_len=32768))  # fmt: skip
    assert twin.perf.chunked and twin.perf.window == 8192
    cost = first_decode_cost(twin.scheduler(), 8200)
    assert (cost.window_attended_tokens, cost.window_tokens_read) == (9, 9)
    assert chunk_pairs(8000, 400, 8192) == sum(p % 8192 + 1 for p in range(8000, 8400))


def experts_alone(tp: int = 1) -> step_model.PerfModel:
    """Qwen3-30B-A3B's step model on an H100 at ``tp``, its experts' FLOPs alone: no weights
    to read, no all-reduces, so the expert GEMMs' compute sets a step's time."""
    config = TwinConfig("Qwen/Qwen3-30B-A3B", "h100-sxm", max_model_len=8192,
                        tensor_parallel_size=tp)  # fmt: skip
    perf = build_twin(config).perf
    alone = {"flops_per_token": perf.expert_flops_per_token, "dense_bytes": 0.0,
             "expert_bytes": 0.0, "tp": 1}  # fmt: skip
    return step_model.PerfModel(**{**perf.__dict__, **alone})


def test_sim_moe_expert_gemms_fill_by_the_rows_each_expert_gets() -> None:
    # A step's routed tokens spread over the experts: 64 tokens × top-8 over 128 experts
    # give each touched expert (126 of them) a GEMM of about 4 rows, which fills the GPU
    # far less than the step's 64 rows would.
    perf = build_twin(TwinConfig("Qwen/Qwen3-30B-A3B", "h100-sxm", max_model_len=8192)).perf
    assert perf.expert_rows(1) == pytest.approx(1.0)
    assert perf.expert_rows(64) == pytest.approx(64 * 8 / 125.9, rel=0.01)
    assert perf.expert_rows(8192) == pytest.approx(8192 * 8 / 128, rel=0.01)
    # A step of experts alone with no weights to read, so FLOPs set its time: 128 tokens'
    # expert FLOPs spread over 8 experts (each GEMM gets all 128 rows) run faster than over
    # 128 experts (8 rows each, far from filling the GPU).
    cost = StepCost(1, 128, 128 * 128, 128)
    many = experts_alone()
    few = step_model.PerfModel(**{**many.__dict__, "num_experts": 8})
    assert few.expert_rows(128) == pytest.approx(128)
    assert many.step_seconds(cost) > 1.3 * few.step_seconds(cost)


def test_sim_tensor_parallelism_slices_the_experts_thin_and_their_gemms_slow() -> None:
    # Qwen3-30B-A3B's experts are 768 columns wide: at TP 4 each GPU holds a 192-column
    # slice of every one. Its share of a step's expert FLOPs is a quarter, but its thin
    # GEMMs do less work per byte moved, so the step takes well over a quarter of the time.
    one, four = experts_alone(1), experts_alone(4)
    assert (one.expert_width, four.expert_width) == (768, 192)
    cost = StepCost(1, 8192, 8192, 8192)  # a chunk of short prompts: the GEMMs' step
    assert four.step_seconds(cost) > 1.3 * one.step_seconds(cost) / 4


def test_sim_an_architectures_gemm_share_scales_its_compute_and_its_roofline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same prefill-heavy step on an A100 runs at MFU × Ampere's share of its peak, on an
    # H100 at MFU alone (Hopper: the reference); the prefill roofline follows the same rate.
    ccs = ((7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 1))
    assert [architecture(cc) for cc in ccs] == [
        "volta", "turing", "ampere", "ampere", "ada", "hopper", "blackwell", "blackwell"]  # fmt: skip
    a100 = build_twin(TwinConfig(LLAMA, "a100-80gb", max_model_len=8192)).perf
    h100 = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192)).perf
    assert h100.mfu == step_model.MFU
    assert a100.mfu == pytest.approx(step_model.MFU * step_model.GEMM_SHARE["ampere"])
    cost = StepCost(1, 8192, 8192, 8192)  # one chunk of a long prompt: compute-bound
    monkeypatch.setattr(step_model, "GEMM_SHARE", {"ampere": 1.0})
    at_one = a100.gpu_seconds(cost)
    assert roofline(a100, 1, 0).prefill_tps == pytest.approx(
        a100.peak_flops * step_model.MFU / a100.flops_per_token
    )
    monkeypatch.setattr(step_model, "GEMM_SHARE", {"ampere": 1.25})
    assert a100.gpu_seconds(cost) < at_one / 1.2
    assert roofline(a100, 1, 0).prefill_tps == pytest.approx(
        a100.peak_flops * step_model.MFU * 1.25 / a100.flops_per_token
    )


def test_sim_fp4_experts_run_at_bf16_rate_on_a_compute_capability_12_gpu() -> None:
    # vLLM's builds run NVFP4/MXFP4 MoE experts weight-only on sm_120/sm_121 (Marlin:
    # dequantized to BF16); a B200's experts run at its native FP4 rate.
    nemotron = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-NVFP4"
    spark = build_twin(TwinConfig(nemotron, "gb10", max_num_seqs=4)).perf
    assert spark.peak_flops == 500e12 and spark.expert_peak_flops == 125e12
    b200 = build_twin(TwinConfig(nemotron, "b200", max_num_seqs=4)).perf
    assert b200.expert_peak_flops == b200.peak_flops == 9000e12


def test_sim_the_prefill_roofline_counts_fp4_experts_at_their_rate() -> None:
    nemotron = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-NVFP4"
    spark = build_twin(TwinConfig(nemotron, "gb10", max_num_seqs=4)).perf
    at_fp4 = spark.peak_flops * step_model.MFU / spark.flops_per_token
    # a third of its FLOPs at a quarter of the FP4 rate: well under the all-FP4 figure
    assert roofline(spark, 1, 0).prefill_tps < 0.6 * at_fp4
    llama = build_twin(TwinConfig(LLAMA, "h100-sxm", max_model_len=8192)).perf
    assert roofline(llama, 1, 0).prefill_tps == pytest.approx(
        llama.peak_flops * step_model.MFU / llama.flops_per_token
    )


def test_sim_a_hybrid_models_requests_take_pool_blocks_group_by_group() -> None:
    """The twin schedules gpt-oss over the pool vLLM allocates (every group's blocks), not
    over the report's tokens charged as if every layer kept every token: 64 requests of
    1,024 + 1,024 tokens run together in ~11,000 blocks (4.2 GiB), the sliding layers giving
    their blocks back as the requests grow."""
    twin = build_twin(
        TwinConfig(
            "openai/gpt-oss-20b", "h100-sxm", max_model_len=4096, gpu_memory_utilization=0.27
        )
    )
    sched = twin.scheduler()
    assert sched.num_blocks == twin.fit.num_gpu_blocks
    per_request = 2048 // 16 + 8 + 1  # full group, sliding window (+ the block being written)
    assert 64 * per_request <= sched.num_blocks < 2 * 64 * 2048 // 16
    items = synthetic(64, 1024, 1024, seed=0)
    summary, _ = simulate(twin, items, arrival_times(64, math.inf, seed=0))
    assert summary["num_preemptions"] == 0
    assert 0.6 < summary["peak_kv_cache_usage"] < 0.9  # 64 × 137 blocks of ~11,350
