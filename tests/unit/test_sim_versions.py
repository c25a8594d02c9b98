"""``--vllm-version``: the twin takes the version's scheduling defaults and overheads."""

from __future__ import annotations

from dataclasses import replace
import json

from click.testing import CliRunner
import pytest

from labctl.cli.main import cli
from labctl.errors import UsageError
from labctl.fit.vllm import LATEST
from labctl.sim.engine import TwinConfig, build_twin
from labctl.sim.offline import simulate
from labctl.sim.perf import StepCost
from labctl.sim.scheduler import Scheduler, SimRequest
from labctl.sim.versions import (
    ASYNC_DEFAULT_SINCE,
    V0_OVERHEAD_FACTOR,
    check_version,
    known_series,
)
from labctl.sim.workload import Item, synthetic

MODEL = "Qwen/Qwen3-4B"


def test_known_series_run_from_the_oldest_to_the_planners_latest() -> None:
    series = known_series()
    assert series[0] == "0.5" and LATEST.startswith(series[-1] + ".")
    assert check_version("v0.11.0").key == (0, 11, 0)
    assert check_version("0.10.1.1 (V1)").key == (0, 10, 1)


@pytest.mark.parametrize("text", ["0.99.0", "1.0.0", "0.4.3", "banana"])
def test_unknown_versions_are_refused_with_the_known_range(text: str) -> None:
    with pytest.raises(UsageError, match=r"use a release from 0\.5\.x to 0\.\d+\.x"):
        check_version(text)


def test_the_default_version_keeps_v1_timing() -> None:
    twin = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192))
    assert twin.config.vllm_version == LATEST
    assert not twin.timing.v0 and twin.timing.chunked_prefill
    assert twin.perf.overhead_factor == 1.0 and not twin.perf.eager_prefill
    assert twin.scheduler().chunked_prefill


def test_v0_runs_whole_prompts_with_its_defaults_and_overheads() -> None:
    v1 = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192))
    v0 = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192, vllm_version="0.7.3"))
    assert v0.timing.v0 and not v0.timing.chunked_prefill
    # V0 sizes a step to the whole context and caps sequences at 256; V1 on an H100 8,192/1,024.
    assert (v0.fit.max_num_batched_tokens, v0.fit.max_num_seqs) == (8192, 256)
    assert (v1.fit.max_num_batched_tokens, v1.fit.max_num_seqs) == (8192, 1024)
    assert v0.perf.overhead_factor == V0_OVERHEAD_FACTOR and v0.perf.eager_prefill
    # A step with prefill tokens launches its kernels eagerly on V0; decode steps replay graphs.
    decode, prefill = StepCost(8, 8, 800, 800), StepCost(1, 512, 131328, 512)
    assert v0.perf.step_seconds(decode) > v1.perf.step_seconds(decode)
    assert v0.perf.step_seconds(prefill) - v1.perf.step_seconds(prefill) > 0.005


def test_v0_chunks_long_contexts_as_the_planner_says() -> None:
    v0_long = build_twin(TwinConfig(MODEL, "h100-sxm", vllm_version="0.7.3"))
    assert v0_long.fit.max_model_len > 32768 and v0_long.timing.chunked_prefill


def test_without_chunking_a_prompt_runs_whole_in_a_prefill_only_step() -> None:
    s = Scheduler(num_blocks=100, block_size=16, max_num_seqs=4, max_num_batched_tokens=200,
                  chunked_prefill=False)  # fmt: skip
    first = SimRequest(0, prompt_len=150, max_tokens=3, arrival=0.0)
    s.add(first)
    batch = s.schedule(0.0)
    assert [(r.id, n) for r, n in batch.items] == [(0, 150)]
    s.complete(batch, 1.0)
    second = SimRequest(1, prompt_len=100, max_tokens=3, arrival=1.0)
    s.add(second)
    batch = s.schedule(1.0)  # V0: the waiting prefill goes first, alone
    assert [(r.id, n) for r, n in batch.items] == [(1, 100)]
    s.complete(batch, 2.0)
    batch = s.schedule(2.0)
    assert sorted((r.id, n) for r, n in batch.items) == [(0, 1), (1, 1)]


def test_v0_serves_a_long_prompt_load_more_slowly() -> None:
    rows = {}
    for version in (LATEST, "0.7.3"):
        twin = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192, vllm_version=version))
        summary, _ = simulate(twin, synthetic(64, 3000, 64), [0.0] * 64, max_concurrency=32)
        rows[version] = summary
    assert rows["0.7.3"]["completed"] == rows[LATEST]["completed"] == 64
    # V0's prefill-only steps stall the running decodes, and its steps cost more.
    assert rows["0.7.3"]["p99_itl_ms"] > 2 * rows[LATEST]["p99_itl_ms"]
    assert rows["0.7.3"]["output_throughput"] < rows[LATEST]["output_throughput"]


def test_sim_run_refuses_an_unknown_version_in_one_line() -> None:
    result = CliRunner().invoke(
        cli, ["sim", "run", "--model", MODEL, "--gpu", "h100-sxm", "--vllm-version", "0.99.1"]
    )
    assert result.exit_code != 0
    assert "--vllm-version '0.99.1' is not a vLLM release labctl models" in result.output


def test_async_scheduling_hides_the_steps_cpu_work_behind_the_gpus() -> None:
    # vLLM's async scheduling prepares step N+1 (and processes step N's output) while the GPU
    # runs step N: a step takes the longer of the two, not their sum
    config = TwinConfig(MODEL, "h100-sxm", tensor_parallel_size=4, max_model_len=8192,
                        vllm_version="0.11.0")  # fmt: skip
    sync = build_twin(config)
    on = build_twin(replace(config, async_scheduling=True))
    assert not sync.timing.async_scheduling and on.timing.async_scheduling
    decode = StepCost(64, 64, 64 * 1000, 64 * 1000)
    gpu = replace(sync.perf, async_scheduling=False).gpu_seconds(decode)
    cpu = sync.perf.cpu_seconds(decode)
    assert gpu > 0 and cpu > 0
    assert sync.perf.step_seconds(decode) == pytest.approx(gpu + cpu)
    assert on.perf.step_seconds(decode) == pytest.approx(max(gpu, cpu))


def test_async_scheduling_is_on_by_default_from_the_release_that_made_it_so() -> None:
    major, minor, _ = (int(x) for x in ASYNC_DEFAULT_SINCE.split("."))
    before = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192,
                                   vllm_version=f"{major}.{minor - 1}.0"))  # fmt: skip
    since = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192,
                                  vllm_version=ASYNC_DEFAULT_SINCE))  # fmt: skip
    assert not before.timing.async_scheduling and since.timing.async_scheduling
    off = build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192, async_scheduling=False))
    assert not off.timing.async_scheduling
    # pipeline parallelism ran without it (vLLM turned it off there)
    pp = build_twin(TwinConfig(MODEL, "h100-sxm", pipeline_parallel_size=2, max_model_len=8192,
                               vllm_version=ASYNC_DEFAULT_SINCE, async_scheduling=True))  # fmt: skip
    assert not pp.timing.async_scheduling


def test_sim_run_takes_async_scheduling_flags() -> None:
    args = ["sim", "run", "--model", MODEL, "--max-model-len", "8192", "--num-prompts", "20",
            "--vllm-version", "0.11.0", "--json"]  # fmt: skip
    runs = {}
    for flag in ("--async-scheduling", "--no-async-scheduling"):
        result = CliRunner().invoke(cli, [*args, flag])
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads(result.output)
    assert runs["--async-scheduling"]["async_scheduling"] is True
    assert runs["--no-async-scheduling"]["async_scheduling"] is False
    assert (runs["--async-scheduling"]["median_tpot_ms"]
            < runs["--no-async-scheduling"]["median_tpot_ms"])  # fmt: skip


def test_async_scheduling_before_the_release_that_has_it_is_refused() -> None:
    config = TwinConfig(MODEL, "h100-sxm", max_model_len=8192, vllm_version="0.9.2",
                        async_scheduling=True)  # fmt: skip
    with pytest.raises(
        UsageError, match=r"--async-scheduling: vLLM 0\.9\.2 has no async .*0\.10\.0"
    ):
        build_twin(config)
    assert not build_twin(replace(config, async_scheduling=None)).timing.async_scheduling


def test_sim_run_says_which_release_it_behaves_as_and_how_it_schedules() -> None:
    args = ["sim", "run", "--model", MODEL, "--max-model-len", "8192", "--num-prompts", "5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"engine              vLLM {LATEST} (V1 engine), async scheduling" in result.output
    result = CliRunner().invoke(cli, [*args, "--vllm-version", "0.7.3"])
    assert "engine              vLLM 0.7.3 (V0 engine), scheduling between steps" in result.output


def test_prefix_caching_is_on_by_default_from_the_v1_engine() -> None:
    """vLLM V1 caches prompt prefixes unless told not to; V0 did not by default, nor does
    the twin for a model with recurrent state (Mamba layers). A shared 512-token system
    prompt is then computed once: every later request's prefill starts after it."""
    assert build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192)).prefix_caching
    assert not build_twin(
        TwinConfig(MODEL, "h100-sxm", max_model_len=8192, vllm_version="0.7.3")
    ).prefix_caching
    off = TwinConfig(MODEL, "h100-sxm", max_model_len=8192, enable_prefix_caching=False)
    assert not build_twin(off).prefix_caching
    mamba = TwinConfig("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "h100-sxm",
                       max_model_len=8192)  # fmt: skip
    assert not build_twin(mamba).prefix_caching
    system = " ".join(f"s{i}" for i in range(512))
    items = [Item(512 + 65, 8, f"{system} q{i} " + " ".join(f"w{i}x{j}" for j in range(64)))
             for i in range(8)]  # fmt: skip
    cached, _ = simulate(build_twin(TwinConfig(MODEL, "h100-sxm", max_model_len=8192)), items,
                         [0.1 * i for i in range(8)])  # fmt: skip
    plain, _ = simulate(build_twin(off), items, [0.1 * i for i in range(8)])
    assert cached["mean_ttft_ms"] < plain["mean_ttft_ms"]
