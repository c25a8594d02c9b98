"""The API server: processor sharing among the requests in hand and the output task."""

from __future__ import annotations

import pytest

from labctl.sim import perf
from labctl.sim.api_server import ApiServer


def test_a_request_alone_takes_its_own_cost() -> None:
    intake: ApiServer[str] = ApiServer()
    assert intake.add(1.0, "a", 0.5) == []
    assert intake.next_done() == pytest.approx(1.5)
    assert intake.advance(1.4) == [] and len(intake) == 1
    assert intake.advance(2.0) == [(pytest.approx(1.5), "a")] and len(intake) == 0
    assert intake.next_done() is None


def test_a_burst_is_through_together_after_n_times_the_cost() -> None:
    intake: ApiServer[int] = ApiServer()
    for i in range(4):
        intake.add(0.0, i, 1.0)
    assert intake.advance(3.99) == []
    assert intake.advance(10.0) == [(pytest.approx(4.0), i) for i in range(4)]


def test_requests_that_overlap_share_the_process_while_they_overlap() -> None:
    intake: ApiServer[str] = ApiServer()
    intake.add(0.0, "a", 1.0)
    # b arrives with a half done: both go at half speed until a is through at 1.5,
    # then b (half done) alone until 2.0
    assert intake.add(0.5, "b", 1.0) == []
    assert intake.next_done() == pytest.approx(1.5)
    assert intake.advance(10.0) == [(pytest.approx(1.5), "a"), (pytest.approx(2.0), "b")]
    # a request after the process went idle starts afresh; a time in the past counts as now
    assert intake.add(12.0, "c", 0.25) == []
    assert intake.advance(11.0) == [] and intake.advance(13.0) == [(pytest.approx(12.25), "c")]


def test_a_costless_request_is_through_at_once() -> None:
    intake: ApiServer[str] = ApiServer()
    intake.add(2.0, "z", 0.0)
    assert intake.advance(2.0) == [(2.0, "z")]


def test_steps_stream_in_order_one_after_another() -> None:
    api: ApiServer[str] = ApiServer()
    assert api.stream(0.0, "s1", 0.1) == []
    assert api.stream(0.05, "s2", 0.1) == []  # behind s1: the output task works in order
    assert api.streaming == 2 and len(api) == 0
    assert api.next_done() == pytest.approx(0.1)
    assert api.advance(1.0) == [(pytest.approx(0.1), "s1"), (pytest.approx(0.2), "s2")]
    assert api.streaming == 0 and api.next_done() is None
    assert api.busy == pytest.approx(0.2)  # busy while it had work, idle after
    api.add(2.0, "r", 0.5)
    assert api.advance(2.25) == [] and api.busy == pytest.approx(0.45)


def test_busy_periods_and_busy_time_over_a_window() -> None:
    api: ApiServer[str] = ApiServer(periods=True)
    api.add(1.0, "a", 0.5)
    api.stream(1.2, "s", 0.3)  # shares with a: a through at 1.7, s at 1.8
    assert api.busy_at(1.5) == pytest.approx(0.5)  # in hand at 1.5 is busy to 1.5, not yet run
    assert api.busy_at(9.0) == pytest.approx(0.8)  # all the work in hand, then idle
    api.advance(3.0)
    api.add(4.0, "b", 1.0)
    api.advance(10.0)
    assert api.periods == [(1.0, pytest.approx(1.8)), (4.0, 5.0)]
    assert api.busy == pytest.approx(1.8)
    assert api.busy_between(0.0, 10.0) == pytest.approx(1.8)
    assert api.busy_between(1.5, 4.5) == pytest.approx(0.3 + 0.5)
    assert api.busy_between(2.0, 3.9) == 0.0
    assert api.busy_at(8.0) == api.busy  # a time before now: what it has had
    # without periods (the live twin's, which runs for days) it keeps only its total
    live: ApiServer[str] = ApiServer()
    live.add(0.0, "a", 0.5)
    live.advance(1.0)
    assert live.busy == pytest.approx(0.5) and live.periods == []


def test_the_output_task_takes_one_share_among_the_requests_in_hand() -> None:
    api: ApiServer[str] = ApiServer()
    for key in "abc":
        api.add(0.0, key, 1.0)
    # four share the process: the step's half second of streaming takes 2 s, then the three
    # requests (half through) share it alone until 3.5
    api.stream(0.0, "step", 0.5)
    assert api.advance(10.0) == [(pytest.approx(2.0), "step")] + [
        (pytest.approx(3.5), key) for key in "abc"
    ]


def test_a_chat_costs_its_template_except_gpt_oss_harmony() -> None:
    assert perf.intake_s("llama", chat=False) == perf.INTAKE_S
    assert perf.intake_s("llama", chat=True) == perf.INTAKE_S + perf.CHAT_TEMPLATE_S
    assert perf.intake_s("gpt_oss", chat=True) == perf.INTAKE_S


def test_a_burst_of_chats_waits_for_their_templates_offline() -> None:
    from labctl.sim.engine import TwinConfig, build_twin
    from labctl.sim.offline import simulate
    from labctl.sim.workload import synthetic

    twin = build_twin(
        TwinConfig("meta-llama/Llama-3.1-8B-Instruct", "h100-sxm", max_model_len=8192)
    )
    items, send = synthetic(100, 64, 4), [0.0] * 100
    completions, _ = simulate(twin, items, send)
    chats, _ = simulate(twin, items, send, chat=True)
    floor_ms = 100 * perf.CHAT_TEMPLATE_S * 1000  # the burst's templates, one process
    assert chats["median_ttft_ms"] - completions["median_ttft_ms"] == pytest.approx(
        floor_ms, rel=0.05
    )


def test_sim_run_says_when_the_api_server_sets_the_pace_and_a_second_one_helps() -> None:
    import json

    from click.testing import CliRunner

    from labctl.cli.main import cli
    from labctl.sim.bottleneck import API_SERVER_BUSY

    def run(*flags: str) -> str:
        args = ["sim", "run", "--model", "Qwen/Qwen3-0.6B", "--gpu", "h100-sxm",
                "--max-model-len", "2048", "--num-prompts", "2048", "--max-concurrency", "512",
                "--input-len", "32", "--output-len", "32", *flags]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return result.output

    # a 0.6B model's steps make tokens faster than one process takes requests in and streams
    # them out
    one = run()
    assert "API server          1 process, busy 9" in one
    assert "it sets the pace, not the GPU (try --api-server-count 2)" in one
    two = json.loads(run("--api-server-count", "2", "--json"))
    assert two["api_server_count"] == 2 and two["api_server_busy"] < API_SERVER_BUSY
    assert two["output_throughput"] > 1.2 * json.loads(run("--json"))["output_throughput"]
