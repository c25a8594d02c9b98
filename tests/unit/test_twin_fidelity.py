"""The pure parts of benchmarks/twin_fidelity.py: folds by source, the objective, the fit on
surrogates, and the context manager that patches the step model's constants."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
import sys
from types import ModuleType

import pytest

from labctl.sim import perf


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
