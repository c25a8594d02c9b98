"""A start's load path: the prediction per phase, the split of the first phase, the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labctl.cache import disk
from labctl.cli.loadpath import step_lines, summary
from labctl.config import DeploymentSpec
from labctl.deploy import loadpath
from labctl.deploy.journal import Journal

GB = 10**9
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


def twin(**args: Any) -> DeploymentSpec:
    return DeploymentSpec(name="chat", engine="sim", model=MODEL, args=args)


def vllm(**args: Any) -> DeploymentSpec:
    return DeploymentSpec(name="chat", engine="vllm", model=MODEL, args=args)


def started(weights_from: float, weights: float, **rest: float) -> tuple[dict[str, float], float]:
    """An engine's phases as the lab times them (load_weights from the spawn) and the second
    at which its log said weights begin."""
    return {"load_weights": weights_from + weights, **rest}, weights_from


def test_the_twin_reads_its_weights_at_its_load_gbps_in_its_own_time() -> None:
    p = loadpath.plan(twin(load_gbps=0.5, time_scale=0.25, enforce_eager=True), 4 * GB, [])
    assert p.phases["weights"] == pytest.approx(4 / 0.5 * 0.25)
    assert p.disk_gbps == 0.5 and p.loader_gbps is None and p.disk_basis == "the twin's load_gbps"
    assert list(p.phases) == ["process_start", "weights", "profile", "api_server"]
    assert p.phases["profile"] == pytest.approx(2.0 * 0.25)  # the twin's profile, scaled
    assert p.basis["weights"] == "4.00 GB at the twin's 0.5 GB/s, time scale 0.25"
    assert p.total == pytest.approx(sum(p.phases.values()))
    graphs = loadpath.plan(twin(load_gbps=2.0), 4 * GB, [])
    assert graphs.phases["cuda_graphs"] == pytest.approx(5.0) and graphs.time_scale == 1.0
    assert loadpath.plan(twin(), 4 * GB, []).disk_gbps == loadpath.TWIN_LOAD_GBPS
    assert loadpath.plan(twin(load_gbps=0), 4 * GB, []).phases["weights"] == 0.0


def test_the_first_phase_splits_where_the_log_says_weights_begin() -> None:
    phases = {"load_weights": 5.0, "profile": 1.0, "api_server": 0.5}
    assert loadpath.split(phases, 1.5) == {
        "process_start": 1.5, "weights": 3.5, "profile": 1.0, "api_server": 0.5,
    }  # fmt: skip
    assert loadpath.split(phases, None) == {"weights": 5.0, "profile": 1.0, "api_server": 0.5}
    assert loadpath.split(phases, 9.0)["weights"] == 5.0  # a mark past the phase is ignored
    assert loadpath.weights_seconds(phases, 1.5) == 3.5
    assert loadpath.weights_seconds({"api_server": 1.0}, None) is None
    assert loadpath.WEIGHTS_BEGIN.search("INFO [gpu_model_runner.py:2602] Starting to load model")
    assert loadpath.WEIGHTS_BEGIN.search("Loading checkpoint shards:   0%|          | 0/3")
    assert not loadpath.WEIGHTS_BEGIN.search("Loading checkpoint shards:  50%|█████     | 1/2")


def test_a_start_that_reads_at_the_disks_rate_and_is_mostly_weights_is_disk_bound() -> None:
    slow = loadpath.plan(twin(load_gbps=0.5, time_scale=0.5, enforce_eager=True), 4 * GB, [])
    phases, begin = started(0.6, 4 / 0.5 * 0.5 * 1.04, profile=1.0, api_server=0.01)
    v = loadpath.verdict(slow, phases, begin)
    assert (v["dominant"], v["bound"], v["disk_bound"]) == ("weights", "disk", True)
    assert v["achieved_gbps"] == pytest.approx(0.5 / 1.04, rel=1e-3)  # in the twin's own time
    assert v["verdict"].startswith("disk-bound: weights took 4.16 s of 5.77 s")
    assert v["error"]["weights"] == pytest.approx(0.04, abs=1e-3)

    fast = loadpath.plan(twin(load_gbps=4, time_scale=1, enforce_eager=True), 4 * GB, [])
    phases, begin = started(0.6, 1.0, profile=2.0, api_server=0.01)
    v = loadpath.verdict(fast, phases, begin)
    assert (v["dominant"], v["bound"], v["disk_bound"]) == ("profile", None, False)
    assert "disk-bound" not in v["verdict"] and v["verdict"].startswith("profile dominated")

    # weights dominate but read at a third of the disk's rate: something else held them up
    phases, begin = started(0.6, 3.0, profile=2.0)
    v = loadpath.verdict(fast, phases, begin)
    assert (v["dominant"], v["bound"]) == ("weights", None)
    assert "slower than the disk and loader figures" in v["verdict"]


def test_vllm_reads_at_the_slower_of_the_disk_and_its_loader(tmp_path: Path) -> None:
    slow_disk = loadpath.plan(vllm(), 16 * GB, [], configured_rate=0.5 * GB)
    assert slow_disk.loader_gbps == loadpath.LOADER_GBPS and slow_disk.disk_gbps == 0.5
    assert slow_disk.phases["weights"] == pytest.approx(32.0)
    assert slow_disk.disk_basis == "lab.disk_read_mbps"
    phases, begin = started(15.0, 33.0, profile=10.0, cuda_graphs=15.0, api_server=2.0)
    assert loadpath.verdict(slow_disk, phases, begin)["bound"] == "disk"

    nvme = loadpath.plan(vllm(), 16 * GB, [], configured_rate=7 * GB)
    assert nvme.phases["weights"] == pytest.approx(16 / 1.1)
    phases, begin = started(5.0, 16 / 1.1, profile=5.0, api_server=2.0)
    v = loadpath.verdict(nvme, phases, begin)
    assert (v["bound"], v["disk_bound"]) == ("loader", False) and "faster loader" in v["verdict"]

    streamer = loadpath.plan(vllm(load_format="fastsafetensors"), 16 * GB, [],
                             configured_rate=7 * GB)  # fmt: skip
    assert streamer.loader_gbps is None and streamer.phases["weights"] == pytest.approx(16 / 7)

    eager = loadpath.plan(vllm(enforce_eager=True), 16 * GB, [])
    assert "cuda_graphs" not in eager.phases  # no graphs to capture
    assert "measure it with `labctl models disk`" in eager.basis["weights"]  # 250 MB/s assumed
    assert eager.phases["weights"] == pytest.approx(16 / 0.25)
    last = loadpath.plan(vllm(), 16 * GB, [], last_rate=2 * GB)
    assert "the lab's last start" in last.basis["weights"]

    # `labctl models disk` keeps its figure by filesystem; a start on that filesystem uses it
    reading = disk.Reading(str(tmp_path / "f"), 800 * 10**6, 1.0, "o_direct", False)
    disk.save(tmp_path / "home", disk.mount_of(tmp_path), reading)
    local = DeploymentSpec(name="chat", engine="vllm", model=str(tmp_path))
    measured = loadpath.plan(local, 16 * GB, [], home=tmp_path / "home")
    assert (measured.disk_gbps, measured.disk_basis) == (0.8, "labctl models disk")
    assert measured.phases["weights"] == pytest.approx(16 / 0.8)


def test_phases_already_seen_for_the_model_predict_the_next_start(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    for scale, other in ((0.5, "Qwen/Qwen3-0.6B"), (0.5, MODEL), (0.25, MODEL)):
        spec = twin(load_gbps=2.0, time_scale=scale, enforce_eager=True)
        spec = DeploymentSpec(name="chat", engine="sim", model=other, args=spec.args)
        p = loadpath.plan(spec, 4 * GB, journal.history())
        deploy = journal.begin("chat", "deploy", None, 1)
        with journal.step(deploy, "start", revision=1) as step:
            phases, begin = started(0.8, 1.0 * scale, profile=3.0 * scale, api_server=0.2)
            step.detail |= {"predicted": p.doc(), "load_path": loadpath.verdict(p, phases, begin)}
        journal.finish(deploy, "committed")
    history = journal.history()
    assert [s["model"] for s in loadpath.seen(history, MODEL, "sim")] == [MODEL, MODEL]
    assert loadpath.seen(history, MODEL, "vllm") == []
    nxt = loadpath.plan(twin(load_gbps=2.0, time_scale=1.0, enforce_eager=True), 4 * GB, history)
    # the profile phase rescaled to this start's time scale (3 s in each), the process start not
    assert nxt.phases["profile"] == pytest.approx(3.0)
    assert nxt.phases["process_start"] == pytest.approx(0.8)
    assert nxt.basis["profile"] == "median of 2 start(s) of this model"
    assert nxt.phases["weights"] == pytest.approx(2.0)  # the twin's disk, not the history's
    journal.close()

    # a real engine reads at the rate its last starts of the model reached
    seen = [{"model": MODEL, "engine": "vllm", "time_scale": 1.0, "achieved_gbps": g,
             "phases": {"process_start": 20.0, "weights": 16 / g}} for g in (0.9, 1.0, 1.2)]  # fmt: skip
    record = {"steps": [{"name": "start", "outcome": "ok", "detail": {"load_path": s}}
                        for s in seen]}  # fmt: skip
    p = loadpath.plan(vllm(), 16 * GB, [record], configured_rate=7 * GB)
    assert p.phases["weights"] == pytest.approx(16 / 1.0) and p.phases["process_start"] == 20.0
    assert p.basis["weights"] == "read at 1.00 GB/s in the last 3 start(s) of this model"


def test_history_and_status_show_each_phase_beside_its_prediction() -> None:
    p = loadpath.plan(twin(load_gbps=0.5, time_scale=0.5, enforce_eager=True), 4 * GB, [])
    phases, begin = started(0.6, 4.2, profile=1.0, api_server=0.01)
    v = loadpath.verdict(p, phases, begin)
    lines = step_lines({"predicted": p.doc(), "load_path": v})
    assert lines[0] == ("took/predicted (s): process_start 0.60/1.00 · weights 4.20/4.00 · "
                        "profile 1.00/1.00 · api_server 0.01/0.05 · total 5.81/6.05")  # fmt: skip
    assert lines[1].startswith("disk-bound: ")
    assert step_lines({"phases": phases}) == []  # a start journaled before load paths
    assert summary(v) == f"last start: {v['verdict']}" and summary(None) is None
