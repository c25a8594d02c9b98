"""The API server's shared intake: processor sharing among the requests in hand."""

from __future__ import annotations

import pytest

from labctl.sim import perf
from labctl.sim.intake import SharedIntake


def test_a_request_alone_takes_its_own_cost() -> None:
    intake: SharedIntake[str] = SharedIntake()
    assert intake.add(1.0, "a", 0.5) == []
    assert intake.next_through() == pytest.approx(1.5)
    assert intake.advance(1.4) == [] and len(intake) == 1
    assert intake.advance(2.0) == [(pytest.approx(1.5), "a")] and len(intake) == 0
    assert intake.next_through() is None


def test_a_burst_is_through_together_after_n_times_the_cost() -> None:
    intake: SharedIntake[int] = SharedIntake()
    for i in range(4):
        intake.add(0.0, i, 1.0)
    assert intake.advance(3.99) == []
    assert intake.advance(10.0) == [(pytest.approx(4.0), i) for i in range(4)]


def test_requests_that_overlap_share_the_process_while_they_overlap() -> None:
    intake: SharedIntake[str] = SharedIntake()
    intake.add(0.0, "a", 1.0)
    # b arrives with a half done: both go at half speed until a is through at 1.5,
    # then b (half done) alone until 2.0
    assert intake.add(0.5, "b", 1.0) == []
    assert intake.next_through() == pytest.approx(1.5)
    assert intake.advance(10.0) == [(pytest.approx(1.5), "a"), (pytest.approx(2.0), "b")]
    # a request after the process went idle starts afresh; a time in the past counts as now
    assert intake.add(12.0, "c", 0.25) == []
    assert intake.advance(11.0) == [] and intake.advance(13.0) == [(pytest.approx(12.25), "c")]


def test_a_costless_request_is_through_at_once() -> None:
    intake: SharedIntake[str] = SharedIntake()
    intake.add(2.0, "z", 0.0)
    assert intake.advance(2.0) == [(2.0, "z")]


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
