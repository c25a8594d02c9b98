"""The bottleneck classifier: each class, the rules' order, the roofline and the tracker."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.dashboard.bottleneck import (
    Roofline,
    Signals,
    Tracker,
    classify,
    deployment_roofline,
)

ROOF = Roofline(prefill_tps=100_000.0, decode_tps=2_000.0)


@pytest.mark.parametrize(
    ("signals", "cls"),
    [
        (Signals("starting"), "starting"),
        (Signals("stopped"), "idle"),
        (Signals("ready"), "idle"),
        (Signals("ready", completion_tps=5.0), "client"),
        (Signals("ready", running=2, reasons=("hw_thermal_slowdown",)), "throttled"),
        (Signals("ready", running=2, reasons=("gpu_idle",), completion_tps=10), "decode_bandwidth"),
        (Signals("ready", running=8, waiting=3, kv=0.93), "kv_capacity"),
        (Signals("ready", running=8, kv=0.99), "kv_capacity"),
        (Signals("ready", running=8, waiting=0, kv=0.92), "decode_bandwidth"),
        (Signals("ready", running=1, queued=5, kv=0.1), "admission"),
        (
            Signals("ready", running=4, prompt_tps=60_000, completion_tps=100, roofline=ROOF),
            "prefill_compute",
        ),
        (
            Signals("ready", running=4, prompt_tps=1_000, completion_tps=1_500, roofline=ROOF),
            "decode_bandwidth",
        ),
        (Signals("ready", running=1, prompt_tps=5_000, completion_tps=10), "prefill_compute"),
        (Signals("ready", running=1, prompt_tps=100, completion_tps=50), "decode_bandwidth"),
    ],
)
def test_each_class(signals: Signals, cls: str) -> None:
    got = classify(signals)
    assert got["class"] == cls, got
    assert got["evidence"]


def test_tie_breaks() -> None:
    # a throttle outranks a full KV cache and a gateway queue
    both = Signals("ready", running=8, waiting=2, queued=4, kv=0.99, reasons=("sw_power_cap",))
    assert classify(both)["class"] == "throttled"
    # a full cache with requests waiting outranks the gateway's queue
    assert classify(Signals("ready", running=8, waiting=2, queued=4, kv=0.95))["class"] == (
        "kv_capacity"
    )
    # queued with requests also waiting in the engine: the engine is the limit, not admission
    busy = Signals("ready", running=8, waiting=2, queued=4, kv=0.5, completion_tps=1000,
                   roofline=ROOF)  # fmt: skip
    assert classify(busy)["class"] == "decode_bandwidth"


def test_roofline_fraction_and_evidence() -> None:
    got = classify(Signals("ready", running=16, completion_tps=1_420, roofline=ROOF))
    assert got["roofline_fraction"] == pytest.approx(0.71)
    assert "decode at 71% of the bandwidth roofline" in got["evidence"]
    assert classify(Signals("ready"))["roofline_fraction"] is None


def test_starting_says_disk_bound() -> None:
    start = {"phase": "process_start", "elapsed": 3.2, "disk_bound": True, "why": "1.2 GB at 0.1"}
    got = classify(Signals("starting", start=start))
    assert "disk-bound" in got["evidence"] and "3.2 s" in got["evidence"]


def test_roofline_of_the_default_twin() -> None:
    d = {"model": "Qwen/Qwen3-0.6B", "engine": "sim", "gpus": [0],
         "roofline_args": {"max_model_len": 8192, "time_scale": 2.0}}  # fmt: skip
    one = deployment_roofline(d, {0: "NVIDIA GeForce RTX 3090"}, 1, 0.0)
    many = deployment_roofline(d, {0: "NVIDIA GeForce RTX 3090"}, 32, 0.0)
    full = deployment_roofline(d, {0: "NVIDIA GeForce RTX 3090"}, 32, 0.9)
    assert one is not None and many is not None and full is not None
    # 0.6B in bf16 on 936 GB/s: about 700 steps/s at batch 1, halved by the time scale
    assert 200 < one.decode_tps < 500
    assert many.decode_tps > 10 * one.decode_tps > full.decode_tps / 10
    assert full.decode_tps < many.decode_tps
    assert one.prefill_tps > 10 * one.decode_tps
    assert deployment_roofline({**d, "model": "no/such-model"}, {0: "RTX 3090"}, 1, 0) is None
    assert deployment_roofline(d, {0: "Unknown GPU"}, 1, 0) is None


def test_tracker_keeps_history_and_reads_the_prediction() -> None:
    t = Tracker(points=3)
    timeline: list[dict[str, Any]] = [{"deployment": "chat", "steps": [{"detail": {"predicted": {
        "phases": {"process_start": 1.0, "weights": 9.0}, "disk_gbps": 0.1,
        "loader_gbps": None, "basis": {"weights": "1 GB at 0.1 GB/s"}}}}]}]  # fmt: skip
    t.on_event({"type": "startup", "deployment": "chat", "phase": None, "elapsed": 1.5})
    deps = [{"name": "chat", "state": "starting", "gpus": [0]}]
    assert t.update(deps, {}, {0: {"name": "x"}}, timeline) == {"chat": "starting"}
    assert "disk-bound" in t.now["chat"]["evidence"]
    idle = [{"name": "chat", "state": "ready", "gpus": [0]}]
    for _ in range(3):
        t.update(idle, {}, {0: {"name": "x", "throttle_reasons": []}}, [])
    assert list(t.history["chat"]) == ["idle"] * 3
    t.update([], {}, {}, [])
    assert t.now == {} and t.history == {}


def test_the_roofline_is_for_the_mean_batch_of_the_tokens_window() -> None:
    # tokens/s are rates over a minute: a batch of 1 now after a minute at 60 is not 60× over
    t = Tracker(points=10, window=4)
    dep = [{"name": "chat", "state": "ready", "gpus": [0], "model": "Qwen/Qwen3-0.6B",
            "engine": "vllm"}]  # fmt: skip
    gpus = {0: {"name": "NVIDIA GeForce RTX 3090", "throttle_reasons": []}}
    for running in (60.0, 60.0, 60.0, 1.0):
        serving = {"chat": {"requests_running": running, "tokens_completion": 3000.0,
                            "tokens_prompt": 100.0, "kv": 0.2}}  # fmt: skip
        t.update(dep, serving, gpus, [])
    now = t.now["chat"]
    assert now["class"] == "decode_bandwidth" and "mean batch 45.2" in now["evidence"]
    assert 0 < now["roofline_fraction"] < 1.0
