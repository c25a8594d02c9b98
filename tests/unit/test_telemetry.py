"""Simulated GPUs, attribution, the collector and the exporter's flags."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import generate_latest
import pytest

from labctl.errors import ConfigError, GpuError, UsageError
from labctl.gpu import open_backend
from labctl.gpu.sample import DeviceSample, GpuProcess, GpuReading
from labctl.gpu.sim import SimBackend, SimMachine, parse_sim_gpus
from labctl.telemetry.attribution import (
    ProcessInfo,
    attribute,
    parse_owner_flags,
    read_owners,
)
from labctl.telemetry.exporter import parse_listen, registry_for
from labctl.telemetry.sampler import Sampler
from labctl.units import GiB


def test_sim_gpus_parse_lists_and_counts() -> None:
    assert [s.id for s in parse_sim_gpus("rtx-3090, h100-sxm")] == ["rtx-3090", "h100-sxm"]
    assert [s.id for s in parse_sim_gpus("8xh100-sxm")] == ["h100-sxm"] * 8
    with pytest.raises(UsageError, match="empty"):
        parse_sim_gpus(" , ")
    with pytest.raises(LookupError, match="h100-sxm"):
        parse_sim_gpus("h100-sx")
    with pytest.raises(UsageError, match="1 to 64"):
        parse_sim_gpus("100xl4")


def test_sim_machine_defaults_to_one_rtx_3090(tmp_path: Path) -> None:
    (dev,) = SimMachine(tmp_path).devices()
    assert dev.spec.id == "rtx-3090" and dev.uuid.startswith("GPU-")
    assert dev.allocatable_bytes == dev.spec.cuda_total_bytes


def test_sim_allocation_is_read_back_and_released(tmp_path: Path) -> None:
    m = SimMachine(tmp_path)
    m.configure(parse_sim_gpus("2xl4"))
    m.allocate(1, 3 * GiB)
    m.allocate(1, 1 * GiB)
    reading = SimBackend(m).read()
    assert reading.devices[0].memory_used_bytes == 0
    d1 = reading.devices[1]
    assert d1.processes == (GpuProcess(os.getpid(), 4 * GiB),)
    assert d1.memory_used_bytes == 4 * GiB
    assert d1.memory_free_bytes == d1.cuda_total_bytes - 4 * GiB  # type: ignore[operator]
    m.release()
    assert SimBackend(m).read().devices[1].memory_used_bytes == 0


def test_sim_allocation_beyond_free_is_cuda_out_of_memory(tmp_path: Path) -> None:
    m = SimMachine(tmp_path)
    with pytest.raises(GpuError, match="CUDA out of memory on simulated GPU 0 .rtx-3090."):
        m.allocate(0, 30 * GiB)
    with pytest.raises(GpuError, match="no simulated GPU 3"):
        m.allocate(3, GiB)
    assert m.holdings() == []


def test_sim_entry_of_a_dead_process_is_dropped(tmp_path: Path) -> None:
    m = SimMachine(tmp_path)
    m.allocate(0, GiB)
    entry = (m.ledger / f"{os.getpid()}.json").read_text()
    # The same entry under a pid that no process has: released at the next read.
    (m.ledger / "999999999.json").write_text(entry.replace(str(os.getpid()), "999999999"))
    assert [h.pid for h in m.holdings()] == [os.getpid()]
    assert not (m.ledger / "999999999.json").exists()
    m.release()


def test_sim_activity_drives_utilization_and_power(tmp_path: Path) -> None:
    m = SimMachine(tmp_path)
    m.configure(parse_sim_gpus("h100-sxm"))
    m.allocate(0, GiB)
    idle = SimBackend(m).read().devices[0]
    m.set_activity(0, 0.5)
    busy = SimBackend(m).read().devices[0]
    assert idle.gpu_util_percent == 0 and busy.gpu_util_percent == 50
    assert busy.power_watts > idle.power_watts  # type: ignore[operator]
    assert idle.clock_event_reasons == 1 and busy.clock_event_reasons == 0
    m.release()


def test_sim_geforce_reports_no_ecc_but_a_datacenter_card_does(tmp_path: Path) -> None:
    m = SimMachine(tmp_path)
    m.configure(parse_sim_gpus("rtx-3090,h100-sxm,gb10"))
    geforce, h100, gb10 = SimBackend(m).read().devices
    assert geforce.ecc_uncorrected_volatile is None and geforce.fan_percent is not None
    assert h100.ecc_uncorrected_volatile == 0 and h100.remapped_rows_failure == 0
    assert gb10.memory_source == "host" and gb10.memory_reserved_bytes is None


def test_open_backend_rejects_bad_combinations(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown"):
        open_backend("rocm", tmp_path)
    with pytest.raises(UsageError, match="--sim-gpus applies"):
        open_backend("nvml", tmp_path, parse_sim_gpus("l4"))
    assert open_backend("sim", tmp_path, parse_sim_gpus("l4")).name == "sim"


def _reading(*procs: GpuProcess, used: int | None = None, source: str = "device") -> GpuReading:
    total = sum(p.used_bytes or 0 for p in procs)
    dev = DeviceSample(
        0, "NVIDIA L4", "GPU-x", "00000000:01:00.0", memory_source=source,
        memory_used_bytes=total if used is None else used, processes=procs,
    )  # fmt: skip
    return GpuReading("sim", (dev,))


def test_attribution_follows_the_process_tree() -> None:
    tree = {
        100: ProcessInfo("vllm", (1,)),
        101: ProcessInfo("python3", (100, 1)),  # a worker of engine 100
        200: ProcessInfo("python3", (1,)),  # an orphan: re-parented to init
    }
    reading = _reading(GpuProcess(101, 6 * GiB), GpuProcess(200, 2 * GiB), used=9 * GiB)
    (owned,) = attribute(reading, {100: "chat"}, tree.get).values()
    assert [(p.pid, p.deployment, p.process) for p in owned.processes] == [
        (101, "chat", "python3"),
        (200, None, "python3"),
    ]
    assert owned.by_deployment == {"chat": 6 * GiB}
    # The orphan's 2 GiB plus 1 GiB no process reports: every byte is someone's.
    assert owned.unaccounted_bytes == 3 * GiB


def test_attribution_of_an_invisible_pid_is_unaccounted() -> None:
    (owned,) = attribute(_reading(GpuProcess(7, GiB)), {}, lambda pid: None).values()
    assert owned.processes[0].process == "" and owned.unaccounted_bytes == GiB


def test_attribution_on_unified_memory_counts_only_processes() -> None:
    reading = _reading(GpuProcess(7, GiB), used=90 * GiB, source="host")
    (owned,) = attribute(reading, {}, lambda pid: None).values()
    assert owned.unaccounted_bytes == GiB


def test_owners_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "owners.json"
    assert read_owners(path) == {}
    path.write_text('{"pids": {"4242": "chat"}}')
    assert read_owners(path) == {4242: "chat"}
    path.write_text('{"pids": {"abc": "chat"}}')
    with pytest.raises(ConfigError, match="pids.abc"):
        read_owners(path)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not JSON"):
        read_owners(path)
    assert parse_owner_flags(["12=chat", "13 = asr"]) == {12: "chat", 13: "asr"}
    with pytest.raises(UsageError, match="PID=DEPLOYMENT"):
        parse_owner_flags(["chat"])
    with pytest.raises(UsageError, match="reserved"):
        parse_owner_flags(["12=unaccounted"])


def test_exporter_listen_forms() -> None:
    assert parse_listen("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert parse_listen(":9500") == ("127.0.0.1", 9500)
    assert parse_listen("0.0.0.0") == ("0.0.0.0", 9400)
    assert parse_listen("[::1]:9401") == ("::1", 9401)
    with pytest.raises(UsageError, match="0 to 65535"):
        parse_listen("localhost:http")


def test_collector_reads_the_snapshot_not_the_backend(tmp_path: Path) -> None:
    class Counting(SimBackend):
        reads = 0

        def read(self) -> GpuReading:
            Counting.reads += 1
            return super().read()

    sampler = Sampler(Counting(SimMachine(tmp_path)), None, interval=1.0)
    sampler.sample_once()
    registry = registry_for(sampler)
    for _ in range(5):
        text = generate_latest(registry).decode()
    assert Counting.reads == 1
    assert "DCGM_FI_DEV_FB_USED{" in text and "nan" not in text.lower()


def test_sampler_rejects_a_non_positive_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Sampler(SimBackend(SimMachine(tmp_path)), None, interval=0)


def test_collector_cache_holds_the_snapshot_it_rendered(tmp_path: Path) -> None:
    # Snapshots are replaced every tick, and a new one may be allocated where a freed
    # one lived. A cache keyed by address alone could then serve the old rendering;
    # holding the rendered snapshot keeps its address from being reused.
    import dataclasses
    import gc
    import weakref

    from labctl.telemetry.collector import TelemetryCollector

    sampler = Sampler(SimBackend(SimMachine(tmp_path)), None, interval=1.0)
    collector = TelemetryCollector(sampler)
    template = sampler.sample_once()
    sampler.latest = dataclasses.replace(template, samples_total=7)
    rendered = weakref.ref(sampler.latest)
    assert "labctl_telemetry_samples_total 7.0" in collector.render().decode()
    assert "labctl_telemetry_samples_total 7.0" in generate_latest(registry_for(sampler)).decode()
    sampler.latest = dataclasses.replace(template, samples_total=8)
    gc.collect()
    assert rendered() is not None
    assert "labctl_telemetry_samples_total 8.0" in collector.render().decode()
