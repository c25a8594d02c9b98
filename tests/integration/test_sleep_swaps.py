"""Warm swaps on the embedded default's kind of machine (a simulated RTX 3090): revisions put
to sleep instead of stopped, woken instead of started, under load; a wake that fails, a start
that needs a sleeping revision's room, and a daemon killed while a revision sleeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import json
from pathlib import Path
import signal
import threading
from typing import Any

import pytest

from labctl.catalog.gpus import gpu
from labctl.fit.sleep import asleep_bytes
from labctl.gpu.sim import SimBackend, SimMachine
from labctl.sim.engine import TwinConfig, build_twin
from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, alive, engine_pids, get, lab_toml, wait_for

GiB = 2**30
SMALL, LARGE = "Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B"
#: Each takes 0.9 of the card awake; the twin starts in well under a second.
EAGER = "{ max_model_len = 4096, time_scale = 0.01, load_gbps = 0, enforce_eager = true }"


def deploy(labctl: Callable[..., Run], d: Daemon, home: Path, *args: str) -> dict[str, Any]:
    run = labctl("deploy", "chat", *args, "--url", d.url, "--json", home=home, check=True)
    record = run.json()
    assert isinstance(record, dict) and record["outcome"] == "committed", record
    return record


def steps(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in record["steps"]}


def counted(d: Daemon, swap: str) -> float:
    line = f'labctl_deploy_duration_seconds_count{{outcome="committed",swap="{swap}"}} '
    found = [x for x in get(d.url + "/metrics").splitlines() if x.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


@contextlib.contextmanager
def ledger_peak(home: Path) -> Iterator[list[int]]:
    """The most memory the simulated GPU's ledger held at once, read every 20 ms meanwhile."""
    backend, peak, done = SimBackend(SimMachine(home)), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], backend.read().devices[0].memory_used_bytes or 0)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join(5)


def test_ten_swaps_through_sleep_and_wake_under_bench_load_lose_no_request(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    fits = [build_twin(TwinConfig(m, "rtx-3090", max_model_len=4096, enforce_eager=True)).fit
            for m in (SMALL, LARGE)]  # fmt: skip
    card = gpu("rtx-3090").cuda_total_bytes
    assert fits[0].budget_bytes + fits[1].budget_bytes > card  # the two cannot both be awake
    awake, asleep = max(f.budget_bytes for f in fits), max(asleep_bytes(f) for f in fits)
    assert awake + asleep <= card  # one awake and one asleep can
    d = lab.up("--config", str(lab_toml(tmp_path, EAGER, extra='sleep = "auto"\n')))
    d.wait_state("chat", "ready")
    out = tmp_path / "bench.json"
    records = []
    with ledger_peak(lab.home) as peak:
        bench = lab.start("bench", "--base-url", d.url, "--model", "chat", "--request-rate",
                          "20", "--num-prompts", "4000", "--input-len", "16", "--output-len",
                          "16", "--json-out", str(out))  # fmt: skip
        wait_for(lambda: 'labctl_gateway_requests_total{code="200",model="chat"}' in get(
            d.url + "/metrics"), 20, "the load to reach the lab")  # fmt: skip
        for i in range(10):
            records.append(deploy(labctl, d, lab.home, "--model", (LARGE, SMALL)[i % 2]))
            assert bench.poll() is None, "every swap runs under load"
        bench.send_signal(signal.SIGINT)  # it stops sending and writes what it measured
        assert bench.wait(60) == 130  # Ctrl-C's status
    doc = json.loads(out.read_text())
    assert doc["interrupted"] and doc["completed"] >= 50
    assert doc["failed"] == 0, doc["errors_by_reason"]
    assert all(steps(r)["sleep"]["outcome"] == "ok" for r in records)  # none was stopped
    assert [r["to_revision"] for r in records] == [2, 1] * 5  # one revision per model
    assert "start" in steps(records[0]) and "wake" not in steps(records[0])  # B's first: cold
    warm = [r for r in records[1:] if "wake" in steps(r) and "start" not in steps(r)]
    assert len(warm) == 9 and all(steps(r)["wake"]["outcome"] == "ok" for r in warm)
    assert (counted(d, "warm"), counted(d, "cold")) == (9.0, 2.0)  # the lab's start and B's
    assert awake + asleep // 2 < peak[0] <= card  # both were resident, never beyond the card
    asleep_now = d.deployment("chat")["asleep"]
    assert [(p["revision"], p["model"]) for p in asleep_now] == [(2, LARGE)]
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(60) == 0
    assert engine_pids(lab.home) == []  # the sleeping engine was stopped with the rest
    assert SimBackend(SimMachine(lab.home)).read().devices[0].memory_used_bytes == 0


def test_a_wake_that_fails_stops_that_engine_and_starts_the_revision_cold(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    args = EAGER.replace(" }", ", fail_wake = true }")
    d = lab.up("--config", str(lab_toml(tmp_path, args, extra="sleep = 1\n")))
    first = d.wait_state("chat", "ready")
    deploy(labctl, d, lab.home, "--model", LARGE)
    assert [p["pid"] for p in d.deployment("chat")["asleep"]] == [first["pid"]]
    record = deploy(labctl, d, lab.home, "--model", SMALL)
    s = steps(record)
    assert [x["name"] for x in record["steps"]] == [
        "preflight", "drain", "sleep", "wake", "stop", "verify_release", "start", "smoke_test",
        "switch"]  # fmt: skip
    assert s["wake"]["outcome"] == "failed" and "wake failed, cold start" in s["wake"]["error"]
    assert "--fail-wake" in s["wake"]["error"]
    now = d.wait_state("chat", "ready")
    assert now["revision"] == 1 and now["pid"] != first["pid"] and not alive(first["pid"])
    assert (counted(d, "warm"), counted(d, "cold")) == (0.0, 3.0)
    text = labctl("history", "chat", "--url", d.url, home=lab.home, check=True).out
    assert "wake failed, cold start" in text and "level 1" in text


def test_a_start_short_of_room_stops_the_oldest_sleeping_revision_and_rollback_wakes(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    graphs = EAGER.replace("enforce_eager = true", "enforce_eager = false")  # keeps its graphs
    d = lab.up("--config", str(lab_toml(tmp_path, graphs, extra="sleep = 2\n")))
    first = d.wait_state("chat", "ready")
    deploy(labctl, d, lab.home, "--model", LARGE, "--set", "enforce_eager=true")
    large = d.deployment("chat")["pid"]
    # 0.96 of the card: beside the 8B asleep it fits only once the first revision is stopped
    record = deploy(labctl, d, lab.home, "--model", SMALL, "--set", "gpu_memory_utilization=0.96",
                    "--set", "enforce_eager=true")  # fmt: skip
    s = steps(record)
    assert [x["name"] for x in record["steps"]] == [
        "preflight", "drain", "sleep", "evict", "start", "smoke_test", "switch"]  # fmt: skip
    assert s["evict"]["detail"]["revision"] == 1 and "room for chat" in s["evict"]["detail"]["why"]
    assert s["evict"]["freed_bytes"] > GiB  # its CUDA graphs and more
    assert not alive(first["pid"])
    assert [p["pid"] for p in d.deployment("chat")["asleep"]] == [large]
    back = labctl("rollback", "chat", "--url", d.url, "--json", home=lab.home, check=True).json()
    assert isinstance(back, dict) and back["to_revision"] == 2
    assert "wake" in steps(back) and "start" not in steps(back)
    assert d.deployment("chat")["pid"] == large and steps(back)["wake"]["detail"]["level"] == 2


@pytest.mark.parametrize("kill_at", ["start", "wake", "after"])
def test_a_daemon_killed_while_a_revision_sleeps_leaves_it_to_the_next_one_to_stop(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, kill_at: str
) -> None:
    """Killed while the new revision starts beside the sleeping one, while the sleeping one
    wakes (it has slept since a deploy that ended: only its engine mark names it), or after
    a swap: the next daemon adopts what served, if anything, and stops the sleeping engine."""
    config = lab_toml(tmp_path, EAGER, extra="sleep = 1\n")
    fault = {} if kill_at == "after" else {"LABCTL_FAULT_KILL_AT": kill_at}
    d = lab.up("--config", str(config), env=fault)
    first = d.wait_state("chat", "ready")["pid"]
    if kill_at == "start":
        lab.start("deploy", "chat", "--model", LARGE, "--url", d.url)
    else:
        deploy(labctl, d, lab.home, "--model", LARGE)  # the first revision sleeps
        large = d.deployment("chat")["pid"]
    if kill_at == "wake":
        lab.start("deploy", "chat", "--model", SMALL, "--url", d.url)
    elif kill_at == "after":
        d.proc.kill()
    assert d.proc.wait(60) == -9
    again = lab.up("--config", str(config))
    ready = again.wait_state("chat", "ready", timeout=60)
    assert again.deployment("chat")["asleep"] == []  # a sleeping engine is never adopted
    assert not alive(first)
    owned = {p["pid"] for p in again.api("GET", "/api/ps")["processes"]}
    wait_for(lambda: set(engine_pids(lab.home)) - {again.proc.pid} <= owned, 15, "leftovers gone")
    if kill_at == "after":
        assert ready["pid"] == large and ready["model"] == LARGE  # adopted: it was serving
    else:
        assert ready["pid"] not in (first, large if kill_at == "wake" else None)
    held = SimBackend(SimMachine(lab.home)).read().devices[0].memory_used_bytes
    assert 20 * GiB < held < 22 * GiB  # one engine awake, nothing asleep
