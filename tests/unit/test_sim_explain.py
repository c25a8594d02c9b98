"""``labctl sim run --explain``: a simulated run's intervals classified and merged into spans."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from click.testing import CliRunner
import pytest

from labctl.cli.main import cli
from labctl.sim import perf
from labctl.sim.engine import Twin, TwinConfig, build_twin
from labctl.sim.explain import Span, explain, merge, time_per_class
from labctl.sim.offline import simulate
from labctl.sim.workload import synthetic

MODEL = "Qwen/Qwen3-0.6B"


@pytest.fixture(scope="module")
def twin() -> Twin:
    return build_twin(TwinConfig(MODEL, "rtx-3090", max_model_len=8192))


def got(cls: str, fraction: float | None = None, evidence: str = "") -> dict[str, Any]:
    return {"class": cls, "evidence": evidence or f"{cls} {fraction}",
            "roofline_fraction": fraction}  # fmt: skip


def test_consecutive_intervals_of_one_class_merge_into_a_span() -> None:
    spans = merge([
        (0.0, 1.0, got("prefill_compute", 0.6)),
        (1.0, 2.0, got("prefill_compute", 0.7)),
        (2.0, 3.0, got("prefill_compute", 0.9)),
        (3.0, 4.0, got("decode_bandwidth", 0.5)),
        (4.0, 5.0, got("idle", evidence="no requests")),
        (5.0, 5.5, got("decode_bandwidth", 0.4)),
    ])  # fmt: skip
    assert [(s.start, s.end, s.cls) for s in spans] == [
        (0.0, 3.0, "prefill_compute"), (3.0, 4.0, "decode_bandwidth"), (4.0, 5.0, "idle"),
        (5.0, 5.5, "decode_bandwidth"),
    ]  # fmt: skip
    # The mean fraction; the evidence of the interval nearest it.
    assert spans[0].roofline_fraction == pytest.approx(0.733)
    assert spans[0].evidence == "prefill_compute 0.7"
    assert spans[2].roofline_fraction is None and spans[2].evidence == "no requests"
    assert time_per_class(spans) == pytest.approx(
        {"prefill_compute": 3.0, "decode_bandwidth": 1.5, "idle": 1.0}
    )
    assert list(time_per_class(spans)) == ["prefill_compute", "decode_bandwidth", "idle"]
    assert merge([]) == []


def test_span_json_names_its_fields() -> None:
    span = Span(0.0, 2.5, "kv_capacity", "KV cache 95% full", None)
    assert span.to_json() == {"from": 0.0, "to": 2.5, "class": "kv_capacity",
                              "evidence": "KV cache 95% full", "roofline_fraction": None}  # fmt: skip


def dominant(twin: Twin, prompt: int, output: int, n: int, interval: float) -> str:
    _, timeline = simulate(twin, synthetic(n, prompt, output), [0.0] * n, interval=interval)
    return next(iter(time_per_class(explain(timeline, twin.perf, twin.fit.kv_cache_tokens))))


def test_a_prefill_heavy_run_is_prefill_compute(twin: Twin) -> None:
    assert dominant(twin, 4000, 2, 16, 0.1) == "prefill_compute"


def test_a_decode_heavy_run_is_decode_bandwidth(twin: Twin) -> None:
    assert dominant(twin, 64, 512, 16, 0.1) == "decode_bandwidth"


def test_the_timeline_counts_every_token_once_across_intervals(twin: Twin) -> None:
    # Intervals far shorter than some steps: a step's tokens are spread over the ones it spans.
    summary, timeline = simulate(twin, synthetic(8, 3000, 40), [0.0] * 8, interval=0.002)
    rounding = 0.0005 * len(timeline.time)  # each interval's count is kept to 3 decimals
    assert sum(timeline.prompt_tokens) == pytest.approx(8 * 3000, abs=rounding)
    assert sum(timeline.generation_tokens) == pytest.approx(8 * 40, abs=rounding)
    assert summary["num_preemptions"] == 0
    assert max(timeline.mean_batch) <= twin.fit.max_num_seqs
    assert len(timeline.mean_batch) == len(timeline.time) == len(timeline.to_json()["mean_batch"])
    spans = explain(timeline, twin.perf, twin.fit.kv_cache_tokens)
    assert spans[0].start == 0.0 and spans[-1].end == timeline.end
    assert all(a.end == b.start and a.cls != b.cls for a, b in itertools.pairwise(spans))


def test_an_interval_longer_than_the_run_gives_one_span(twin: Twin) -> None:
    _, timeline = simulate(twin, synthetic(2, 512, 64), [0.0, 0.0], interval=600.0)
    (span,) = explain(timeline, twin.perf, twin.fit.kv_cache_tokens)
    assert span.start == 0.0 and span.end == timeline.end < 600.0
    assert span.cls in ("prefill_compute", "decode_bandwidth")
    assert span.roofline_fraction is not None and 0 < span.roofline_fraction < 1


def run(*flags: str) -> Any:
    args = ["sim", "run", "--model", MODEL, "--max-model-len", "8192", "--num-prompts", "20",
            "--input-len", "2000", "--output-len", "200", "--timeline-interval", "0.2s", *flags]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_sim_run_explain_prints_spans_and_time_per_class() -> None:
    out = run("--explain")
    assert "bottleneck over the run:" in out
    assert "prefill_compute  prefill at " in out and "of the compute roofline" in out
    assert "time per class: " in out
    assert "bottleneck over the run" not in run()


def test_sim_run_explain_json_has_the_spans() -> None:
    doc = json.loads(run("--explain", "--json"))
    spans = doc["explain"]
    assert spans and {"from", "to", "class", "evidence", "roofline_fraction"} == set(spans[0])
    assert spans[0]["from"] == 0.0 and spans[-1]["to"] == doc["timeline"]["end_s"]
    assert "explain" not in json.loads(run("--json"))


def test_a_burst_the_api_server_is_still_taking_in_is_api_server_not_idle() -> None:
    # As many requests at once as the one API server process takes 1.5 s of its time to take
    # in (shared among them): for the first second the engine has nothing yet; that second is
    # the API server's, not idle
    twin = build_twin(TwinConfig("Qwen/Qwen3-0.6B", "h100-sxm", max_model_len=2048))
    burst = math.ceil(1.5 / perf.intake_s(twin.arch.model_type, chat=False))
    items = synthetic(2 * burst, 32, 64)
    _, timeline = simulate(twin, items, [0.0] * len(items), burst)
    assert timeline.mean_intake[0] > 100 and timeline.mean_batch[0] == 0
    spans = explain(timeline, twin.perf, twin.fit.kv_cache_tokens)
    assert spans[0].cls == "api_server" and spans[0].start == 0.0
    assert "being taken in, none running yet" in spans[0].evidence
    assert "idle" not in {s.cls for s in spans}
