"""The bottleneck classifier: each class, the rules' order, the roofline and the tracker."""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path
import threading
import time
from typing import Any

import pytest

from labctl.dashboard.bottleneck import (
    Built,
    PerfKey,
    Perfs,
    Roofline,
    Signals,
    Tracker,
    build_perf,
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
        (
            Signals("ready", running=64, completion_tps=600, roofline=ROOF, api_busy=0.97),
            "api_server",
        ),
        (Signals("ready", running=64, completion_tps=600, api_busy=0.89), "decode_bandwidth"),
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


def test_a_busy_api_server_names_the_gpu_side_it_holds_back() -> None:
    got = classify(Signals("ready", running=64, completion_tps=600, roofline=ROOF, api_busy=0.97))
    assert got["roofline_fraction"] == pytest.approx(0.3)  # the GPU's side, far from its limit
    assert got["evidence"].startswith("API server busy 97% of the time: it sets the pace")
    assert "decode at 30% of the bandwidth roofline" in got["evidence"]
    assert "--api-server-count" in got["evidence"]
    # a full cache with requests waiting outranks it
    full = Signals("ready", running=64, waiting=9, kv=0.95, completion_tps=600, api_busy=0.97)
    assert classify(full)["class"] == "kv_capacity"
    # it outranks the gateway's queue: requests wait on it, not on the gateway's limit
    held = Signals("ready", queued=9, kv=0.0, completion_tps=600, api_busy=0.97)
    assert classify(held)["class"] == "api_server"
    held = Signals("ready", queued=9, kv=0.0, completion_tps=600, api_busy=0.5)
    assert classify(held)["class"] == "admission"
    # nothing running or queued: its clients, however busy it was
    assert classify(Signals("ready", completion_tps=600, api_busy=0.97))["class"] == "client"


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
    t.warm(dep, gpus)  # as a start does: the roofline built by the time it serves
    wait(list(t.perfs.building.values()), timeout=30)
    for running in (60.0, 60.0, 60.0, 1.0):
        serving = {"chat": {"requests_running": running, "tokens_completion": 3000.0,
                            "tokens_prompt": 100.0, "kv": 0.2}}  # fmt: skip
        t.update(dep, serving, gpus, [])
    now = t.now["chat"]
    assert now["class"] == "decode_bandwidth" and "mean batch 45.2" in now["evidence"]
    assert 0 < now["roofline_fraction"] < 1.0


def _busy(running: float = 4.0) -> dict[str, dict[str, float]]:
    return {"chat": {"requests_running": running, "tokens_completion": 3000.0,
                     "tokens_prompt": 100.0, "kv": 0.2}}  # fmt: skip


CHAT = [{"name": "chat", "state": "ready", "gpus": [0], "model": "Qwen/Qwen3-0.6B",
         "engine": "vllm"}]  # fmt: skip
RTX = {0: {"name": "NVIDIA GeForce RTX 3090", "throttle_reasons": []}}


def _until(t: Tracker, done: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Tick ``t`` every 50 ms until ``done(now)``; the last class."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t.update(CHAT, _busy(), RTX, [])
        if done(t.now["chat"]):
            return t.now["chat"]
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {t.now['chat']}")


def test_a_tick_never_waits_for_the_roofline() -> None:
    # the planner and the perf model take long: the tick classifies without them meanwhile
    builds: list[PerfKey] = []

    def slow(key: PerfKey) -> Built | None:
        builds.append(key)
        time.sleep(0.5)
        return build_perf(key)

    t = Tracker(perfs=Perfs(build=slow))
    for _ in range(3):  # ticks while it builds: each prompt, one build only
        took = time.monotonic()
        t.update(CHAT, _busy(), RTX, [])
        assert time.monotonic() - took < 0.1
        now = t.now["chat"]
        assert now["class"] == "decode_bandwidth" and now["roofline_fraction"] is None
        assert "no roofline" in now["evidence"]
    now = _until(t, lambda b: b["roofline_fraction"] is not None)
    assert now["class"] == "decode_bandwidth" and "of the bandwidth roofline" in now["evidence"]
    assert builds == [("Qwen/Qwen3-0.6B", "NVIDIA GeForce RTX 3090", 1, None, False)]


def test_warm_builds_at_the_start_once_and_only_what_may_serve() -> None:
    release = threading.Event()
    builds: list[PerfKey] = []

    def build(key: PerfKey) -> Built | None:
        builds.append(key)
        release.wait(5)
        return None

    t = Tracker(perfs=Perfs(build=build))
    t.warm([{**CHAT[0], "state": "stopped"}, {**CHAT[0], "state": "ready", "model": None}], RTX)
    t.warm([{**CHAT[0], "state": "starting"}], {})  # no GPU read yet: nothing to build for
    t.update([{**CHAT[0], "state": "stopped"}], {}, RTX, [])  # a stopped one builds nothing
    assert not t.perfs.building and not t.perfs.built
    t.warm([{**CHAT[0], "state": "starting"}], RTX)
    t.warm([{**CHAT[0], "state": "starting"}, *CHAT], RTX)  # the same key: the same build
    t.update(CHAT, _busy(), RTX, [])
    assert len(t.perfs.building) == 1
    release.set()
    wait(list(t.perfs.building.values()), timeout=5)
    _until(t, lambda b: not t.perfs.building)
    assert len(builds) == 1 and list(t.perfs.built.values()) == [None]


def test_a_failing_build_is_logged_once_and_the_ticks_go_on() -> None:
    lines: list[str] = []

    def broken(key: PerfKey) -> Built | None:
        raise RuntimeError("planner bug")

    t = Tracker(perfs=Perfs(build=broken, log=lines.append))
    t.update(CHAT, _busy(), RTX, [])
    wait(list(t.perfs.building.values()), timeout=5)
    for _ in range(3):
        assert t.update(CHAT, _busy(), RTX, []) == {"chat": "decode_bandwidth"}
    assert len(lines) == 1
    assert "Qwen/Qwen3-0.6B" in lines[0] and "RuntimeError: planner bug" in lines[0]
    assert t.now["chat"]["roofline_fraction"] is None


def test_a_model_too_small_to_cost_a_flop_has_no_roofline_rather_than_a_failed_tick(
    tmp_path: Path,
) -> None:
    """A tiny GGUF model (the tests' llama.cpp engine) rounds to 0 FLOPs per token: the tick
    classifies it without a roofline instead of failing for every deployment."""
    from tests.tinygguf import write_tiny_llama

    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    d = {"model": str(model), "engine": "llamacpp", "gpus": [0], "roofline_args": {}}
    got = deployment_roofline(d, {0: "NVIDIA GeForce RTX 3090"}, 1, 0.0)
    assert got is None or (got.prefill_tps >= 0 and got.decode_tps >= 0)
