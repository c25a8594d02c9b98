"""The pure parts of benchmarks/twin_fidelity.py: folds by source, the objective, the fit on
surrogates, and the context manager that patches the step model's constants."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
import sys
from types import ModuleType

import pytest

from labctl.errors import LabError
from labctl.sim import perf
from labctl.sim.engine import TwinConfig, build_twin


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "twin_fidelity.py"
    spec = importlib.util.spec_from_file_location("twin_fidelity", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


OFFLINE_BEFORE = os.environ.get("HF_HUB_OFFLINE")
tf = _load()


def test_source_group_is_the_document() -> None:
    a = tf.source_group("gpustack/gpustack docs/performance-lab/qwen3-14b/h100.md (vLLM block)")
    b = tf.source_group("gpustack/gpustack docs/performance-lab/qwen3-14b/h100.md (Conclusion)")
    assert a == b == "gpustack/gpustack docs/performance-lab/qwen3-14b/h100.md"
    assert tf.source_group("https://example.org/post/ (Part 1 results table)") == (
        "https://example.org/post/"
    )


def test_folds_hold_whole_sources_and_balance() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2 + ["e"]
    folds = tf.assign_folds(groups, 3)
    assert set(folds) == {"a", "b", "c", "d", "e"}
    sizes = [sum(1 for g in groups if folds[g] == f) for f in range(3)]
    assert sorted(sizes) == [4, 4, 5]
    assert tf.assign_folds(groups, 3) == folds  # reproducible


def test_fewer_sources_than_folds_is_leave_one_source_out() -> None:
    folds = tf.assign_folds(["x", "y", "x"], 5)
    assert sorted(folds.values()) == [0, 1]


def test_objective_is_mean_absolute_log_error() -> None:
    assert tf.objective([math.log(2), -math.log(2)]) == pytest.approx(math.log(2))
    assert tf.objective([]) == 0.0


def test_fit_loss_caps_each_figure_at_the_outlier_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tf.fit_loss([0.1, -3.0]) == pytest.approx((0.1 + 0.69) / 2)  # 2x by default
    monkeypatch.setattr(tf, "OUTLIER_LOG", math.inf)
    assert tf.fit_loss([0.1, -3.0]) == pytest.approx(1.55)
    monkeypatch.setattr(tf, "OUTLIER_LOG", 0.35)
    assert tf.fit_loss([0.1, -0.2]) == pytest.approx(0.15)
    assert tf.fit_loss([0.1, -3.0]) == pytest.approx((0.1 + 0.35) / 2)
    assert tf.fit_loss([]) == 0.0


def test_one_figure_the_model_cannot_explain_does_not_drag_the_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Four figures are right where they are; a fifth is 3.5x low and would come right only
    # if the per-step overhead grew 3.5-fold (its slope is 1, theirs 0.2 each: 0.8 in all).
    params = (tf.Param("STEP_OVERHEAD_S", 0.1e-3, 10e-3, "overhead"),)
    right = [tf.Figure(i, "tpot", "median", 1.0, 0.0, [0.2]) for i in range(4)]
    outlier = tf.Figure(4, "tpot", "mean", 1.0, -math.log(3.5), [1.0])
    base = {"STEP_OVERHEAD_S": 0.2e-3}
    monkeypatch.setattr(tf, "OUTLIER_LOG", 0.35)
    # capped, the four keep the overhead where they put it
    assert tf.fit_constants([*right, outlier], base, params)["STEP_OVERHEAD_S"] == (
        pytest.approx(0.2e-3)
    )
    # the same figure within the bound still counts
    near = tf.Figure(4, "tpot", "mean", 1.0, -0.3, [1.0])
    assert tf.fit_constants([*right, near], base, params)["STEP_OVERHEAD_S"] > 0.25e-3
    # uncapped, the outlier's pull wins and the overhead runs to the edge of the trust region
    monkeypatch.setattr(tf, "OUTLIER_LOG", math.inf)
    dragged = tf.fit_constants([*right, outlier], base, params)["STEP_OVERHEAD_S"]
    assert dragged > 0.2e-3 * 2


def test_bar_shortfall_is_the_worst_ratio_to_the_bars() -> None:
    # median 0.2 against 0.10 is 2x; p90 of TTFT is near 0.5, 1.4x its 0.35
    errors = {"TTFT": [0.1, -0.2, 0.2, 0.5, -0.5], "throughput": [0.01, 0.02]}
    assert tf.bar_shortfall(errors) == pytest.approx(2.0)
    assert tf.bar_shortfall({"throughput": [0.01, -0.02]}) < 1.0  # met
    assert tf.bar_shortfall({"TTFT": [], "throughput": [0.05]}) == pytest.approx(0.5)
    assert tf.bar_shortfall({}) == 0.0


def test_fit_minimises_the_loss_it_is_given() -> None:
    # Two figures pull one constant opposite ways: the mean |log| settles anywhere between
    # them, a loss on the first figure alone takes that figure to zero.
    params = (tf.Param("MFU", 0.1, 0.9, "compute"),)
    figures = [
        tf.Figure(0, "ttft", "median", 1.0, math.log(1.5), [-1.0]),
        tf.Figure(1, "ttft", "median", 1.0, -math.log(1.2), [-1.0]),
    ]

    def first_only(logs: list[float]) -> float:
        return abs(logs[0])

    fitted = tf.fit_constants(figures, {"MFU": 0.4}, params, loss=first_only)
    assert fitted["MFU"] == pytest.approx(0.6, rel=0.01)


def test_bound_reports_each_targets_in_sample_fit_simulated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three points whose TTFT runs 1.5x high and falls one-for-one with MFU, and whose
    # throughput is right but rises with MFU: fitted to TTFT alone, MFU goes up and TTFT
    # comes right; fitted to throughput alone, nothing moves. The "simulation" is the model.
    published = {"ttft": (100.0, "median"), "output_throughput": (10.0, "median")}
    points = [tf.Point("m", "h100-sxm", dict(published), ref=f"p:{i}") for i in range(3)]
    mfu0 = tf.shipped_constants()["MFU"]

    def model(consts: dict[str, float]) -> dict[str, float]:
        scale = consts["MFU"] / mfu0
        return {"ttft": 150.0 / scale, "output_throughput": 10.0 * scale**0.2}

    def fake_linearise(pts, base, processes, only=None):  # type: ignore[no-untyped-def]
        slopes = {"ttft": -1.0, "output_throughput": 0.2}
        names = [p.name for p in tf.PARAMS]
        figs = []
        for i, p in enumerate(pts):
            at = model(base)
            for metric, (value, stat) in p.published.items():
                row = [slopes[metric] if n == "MFU" else 0.0 for n in names]
                figs.append(tf.Figure(i, metric, stat, value, math.log(at[metric] / value), row))
        return figs, {}

    def fake_run_jobs(jobs, processes):  # type: ignore[no-untyped-def]
        return [model(dict(c)) for _, c in jobs]

    monkeypatch.setattr(tf, "linearise", fake_linearise)
    monkeypatch.setattr(tf, "run_jobs", fake_run_jobs)
    doc = tf.bound(points, 1)
    rows = {r["fitted_to"]: r for r in doc["fits"]}
    assert list(rows) == ["shipped", "TTFT", "TPOT/ITL", "throughput",
                          "TTFT + TPOT/ITL + throughput"]  # fmt: skip
    assert rows["shipped"]["errors"]["TTFT"]["median"] == pytest.approx(0.5)
    assert rows["shipped"]["shortfall"] == pytest.approx(0.5 / 0.10)
    assert rows["TTFT"]["errors"]["TTFT"]["median"] < 0.01
    assert rows["TTFT"]["constants"]["MFU"] == pytest.approx(1.5 * mfu0, rel=0.02)
    assert rows["TTFT"]["shortfall"] < 0.1
    assert rows["TTFT"]["step"] == 1.0
    assert rows["throughput"]["constants"]["MFU"] == pytest.approx(mfu0)
    assert rows["throughput"]["step"] == 0.0  # nothing beat the shipped constants
    assert rows["TPOT/ITL"]["errors"]["TPOT/ITL"]["n"] == 0
    assert doc["compared_points"] == 3 and doc["failed_points"] == {}
    json.dumps(doc)  # --json prints it


def test_patched_sets_and_restores_constants() -> None:
    mfu, bw = perf.MFU, perf.BW_EFFICIENCY
    with tf.patched({"MFU": 0.3, "BW_EFFICIENCY[HBM]": 0.5}):
        assert perf.MFU == 0.3
        assert perf.BW_EFFICIENCY["HBM"] == 0.5
        assert perf.BW_EFFICIENCY["GDDR"] == bw["GDDR"]
    assert mfu == perf.MFU
    assert perf.BW_EFFICIENCY is bw
    assert bw["HBM"] != 0.5  # the shipped dict was never mutated


def test_patched_restores_after_an_error() -> None:
    step = perf.STEP_OVERHEAD_S
    with pytest.raises(RuntimeError), tf.patched({"STEP_OVERHEAD_S": 1.0}):
        raise RuntimeError("boom")
    assert step == perf.STEP_OVERHEAD_S
    with pytest.raises(KeyError), tf.patched({"NO_SUCH_CONSTANT": 1.0}):
        pass


def test_fit_recovers_a_scale_on_the_surrogate() -> None:
    # Figures whose log error falls one-for-one with log MFU: the fit scales MFU by 1.5.
    params = (tf.Param("MFU", 0.1, 0.9, "compute"),)
    figures = [tf.Figure(i, "ttft", "median", 1.0, math.log(1.5), [-1.0]) for i in range(3)]
    fitted = tf.fit_constants(figures, {"MFU": 0.4}, params)
    assert fitted["MFU"] == pytest.approx(0.6, rel=0.01)
    # and stays within the bounds
    capped = tf.fit_constants(figures, {"MFU": 0.8}, params)
    assert capped["MFU"] == pytest.approx(0.9)


def test_map_gpu_reads_published_names() -> None:
    assert tf.map_gpu("8x NVIDIA H100 SXM") == "h100-sxm"
    assert tf.map_gpu("NVIDIA A100 SXM (doc: 'A single NVIDIA A100 SXM GPU')") == "a100-80gb"
    assert tf.map_gpu("NVIDIA GeForce RTX 4090 (24GB)") == "rtx-4090"
    assert tf.map_gpu("Some Unknown Accelerator") is None


def test_importing_the_benchmark_leaves_the_environment_alone() -> None:
    # the benchmark runs offline; a test importing it must not turn the rest of the suite
    # offline (the model-cache tests download from a local hub in the same process's children)
    assert os.environ.get("HF_HUB_OFFLINE") == OFFLINE_BEFORE


def test_a_rows_flags_carry_over_to_its_replay() -> None:
    row = {"model": "Qwen/Qwen3-0.6B", "gpu": "NVIDIA H100 80GB HBM3", "source": "a post",
           "input_len": 512, "output_len": 128,
           "num_prompts": 500, "output_tok_s": 1000.0,
           "flags": "--api-server-count 4 --max-model-len 2048 --gpu-memory-utilization 0.5"}  # fmt: skip
    point = tf.point_from_row(row, "row 1")
    assert point.flags == {"api_server_count": 4, "max_model_len": 2048,
                           "gpu_memory_utilization": 0.5}  # fmt: skip


def test_a_bursts_median_and_p99_say_when_it_reached_the_engine_and_its_drain() -> None:
    # first tokens evenly from 4 s to 12 s: median 8 s, p99 11.92 s
    release, drain = tf.burst_shape(8000.0, 4000.0 + 8000.0 * 0.99)
    assert release == pytest.approx(4.0) and drain == pytest.approx(8.0)
    # a p99 far above the median (waves behind the KV limit) reads as no even drain
    assert tf.burst_shape(37597.63, 77082.58) is None
    row = {"model": "Qwen/Qwen3-0.6B", "gpu": "NVIDIA H100 80GB HBM3", "source": "a post",
           "input_len": 512, "output_len": 128, "num_prompts": 1000,
           "ttft_ms_median": 8707.89, "ttft_ms_p99": 12940.37}  # fmt: skip
    point = tf.point_from_row(row, "row 1")
    assert point.ttft_spread == (8707.89, 12940.37)
    assert tf.point_from_row({**row, "ttft_ms_p99": None}, "row 1").ttft_spread is None
    fig = tf.Figure(0, "ttft", "median", 8707.89, 0.7, [0.0] * len(tf.PARAMS))
    shapes = (tf.burst_shape(8707.89, 12940.37), tf.burst_shape(17055.6, 26527.4))
    text = tf.cause(fig, 1.96, (), burst=1000, shapes=shapes)
    assert "published reached the engine by 4.4 s and drained in 8.6 s" in text
    assert "the twin by 7.4 s and in 19.3 s" in text
    assert "even drain" not in tf.cause(fig, 1.96, (), burst=1000)


def test_a_request_the_sources_engine_held_is_replayed_with_the_room_it_had() -> None:
    # the twin's plan for vLLM 0.11 holds 18,032 tokens of Qwen3-32B on one H100 at 0.9; a
    # source whose engine ran 32,100-token requests had more room than that, and so did its
    # other runs of the same serving command (here a ShareGPT burst)
    long = {"model": "Qwen/Qwen3-32B", "gpu": "NVIDIA H100 SXM", "source": "a lab (table)",
            "vllm_version": "v0.11.0", "input_len": 32000, "output_len": 100,
            "total_tok_s": 2771.81, "flags": None}  # fmt: skip
    burst = {**long, "source": "a lab (block)", "input_len": None, "output_len": None,
             "dataset": "ShareGPT", "num_prompts": 1000}  # fmt: skip
    for point in (tf.point_from_row(long, "row 1"), tf.point_from_row(burst, "row 2", 32100)):
        assert point.skip is None
        util, context = point.flags["gpu_memory_utilization"], point.flags["max_model_len"]
        assert 0.9 < util < 0.99 and context >= 32100
        build_twin(TwinConfig("Qwen/Qwen3-32B", "h100-sxm", **point.flags))
        less = {**point.flags, "gpu_memory_utilization": util - 0.01, "max_model_len": 32100}
        with pytest.raises(LabError, match="estimated maximum model length"):
            build_twin(TwinConfig("Qwen/Qwen3-32B", "h100-sxm", **less))
        assert any("held a 32100-token request" in note for note in point.notes)
    # without the other run, the burst replays at the context the plan fits at 0.9
    alone = tf.point_from_row(burst, "row 2")
    assert alone.flags == {"vllm_version": "0.11.0", "max_model_len": 18032}


def test_runs_of_one_serving_command_share_the_room_one_of_them_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf, "HAND_POINTS", [])
    (tmp_path / tf.FILE_1).write_text("")
    row = {"model": "Qwen/Qwen3-32B", "gpu": "NVIDIA H100 SXM", "vllm_version": "v0.11.0",
           "flags": None, "total_tok_s": 2000.0, "num_prompts": 100}  # fmt: skip
    rows = [
        {**row, "source": "lab/doc.md (block)", "input_len": 4000, "output_len": 200},
        {**row, "source": "lab/doc.md (table)", "input_len": 32000, "output_len": 100},
        {**row, "source": "lab/other.md (table)", "input_len": 4000, "output_len": 200},
        {**row, "source": "lab/doc.md (tuned)", "input_len": 4000, "output_len": 200,
         "flags": "--max-num-seqs 64"},
    ]  # fmt: skip
    (tmp_path / tf.FILE_2).write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, long, other, tuned = tf.load_points(tmp_path)
    assert first.flags == long.flags and first.flags["gpu_memory_utilization"] > 0.9
    assert other.flags == {"vllm_version": "0.11.0", "max_model_len": 18032}
    assert "gpu_memory_utilization" not in tuned.flags


def test_room_for_the_full_context_replays_at_the_full_context() -> None:
    # a 40,900-token request needs 0.98, where the plan holds all 40,960 of Qwen3-32B's
    burst = {"model": "Qwen/Qwen3-32B", "gpu": "NVIDIA H100 SXM", "source": "a lab (block)",
             "vllm_version": "v0.11.0", "input_len": None, "output_len": None,
             "dataset": "ShareGPT", "num_prompts": 1000, "total_tok_s": 2000.0,
             "flags": None}  # fmt: skip
    point = tf.point_from_row(burst, "row 2", 40900)
    assert point.flags.get("max_model_len", 40960) >= 40900, point.flags


def test_a_sharegpt_run_is_replayed_at_the_lengths_it_counted() -> None:
    # the source's totals (23,260 prompt / 22,061 output tokens over 100 prompts) set the
    # replay's mean lengths; the twin's own ShareGPT-like sample of 100 averages 226 / 178
    row = {"model": "Qwen/Qwen3-8B", "gpu": "NVIDIA H100 SXM", "source": "a lab",
           "input_len": None, "output_len": None, "num_prompts": 100, "concurrency": 1,
           "dataset": "ShareGPT_V3 (100 prompts; total input 23260 / output 22061 tokens)",
           "output_tok_s": 132.86, "total_tok_s": 272.95, "request_s": 0.6}  # fmt: skip
    point = tf.point_from_row(row, "row 1")
    assert point.sharegpt_means == (232.6, 220.61)
    items = tf.workload(point)
    assert sum(it.prompt_len for it in items) == pytest.approx(23260, rel=0.01)
    assert sum(it.output_len for it in items) == pytest.approx(22061, rel=0.01)
    # without totals, the run's rates say the same: output ÷ requests, (total − output) ÷ requests
    rates = tf.point_from_row({**row, "dataset": "ShareGPT_V3", "request_s": 15.74,
                               "output_tok_s": 3173.92, "total_tok_s": 6595.66}, "row 2")  # fmt: skip
    assert rates.sharegpt_means == pytest.approx((217.39, 201.65), abs=0.01)
    # a source that published neither keeps the twin's own lengths
    bare = tf.point_from_row({**row, "dataset": "ShareGPT", "request_s": None}, "row 3")
    assert bare.sharegpt_means is None
