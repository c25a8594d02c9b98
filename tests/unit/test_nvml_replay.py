"""NVML readings replayed through a fake module: the real H100, a GeForce and a GB10 profile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
import pytest
from tests.fakenvml import FakeNvml, gb10_profile, geforce_profile, load_h100

from labctl.errors import GpuError, GpuUnavailable
from labctl.gpu.nvml import NvmlBackend
from labctl.telemetry.exporter import registry_for
from labctl.telemetry.sampler import Sampler

HOST_TOTAL = 128501256192  # a GB10's RAM as gpud logged it
HOST_AVAILABLE = 100 * 2**30


@pytest.fixture
def h100(shared_dir: Path) -> dict[str, Any]:
    return load_h100(shared_dir)


def backend(*devices: dict[str, Any]) -> tuple[NvmlBackend, FakeNvml]:
    fake = FakeNvml(list(devices))
    return NvmlBackend(fake, host_memory_reader=lambda: (HOST_TOTAL, HOST_AVAILABLE)), fake


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scrape(b: NvmlBackend, label_style: str = "dcgm") -> dict[str, list[Any]]:
    """Sample once and scrape: metric name → samples."""
    sampler = Sampler(b, None, interval=1.0)
    sampler.sample_once()
    text = generate_latest(registry_for(sampler, label_style)).decode()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def assert_all_numbers(samples: dict[str, list[Any]]) -> None:
    for name, series in samples.items():
        for s in series:
            assert isinstance(s.value, float) and math.isfinite(s.value), (name, s)


def test_nvml_h100_replay_reads_every_recorded_field(h100: dict[str, Any]) -> None:
    b, _ = backend(h100)
    d = b.read().devices[0]
    assert d.name == "NVIDIA H100 80GB HBM3" and d.catalog_id == "h100-sxm"
    assert d.pci_bus_id == "00000000:00:06.0"
    assert (d.memory_total_bytes, d.memory_used_bytes, d.memory_reserved_bytes) == (
        85520809984,
        0,
        503316480,
    )
    assert d.cuda_total_bytes == 85520809984 - 503316480
    assert d.power_watts == pytest.approx(76.087) and d.power_limit_watts == 700
    assert d.energy_millijoules == 2405268 and d.temperature_c == 35
    assert (d.sm_clock_mhz, d.memory_clock_mhz, d.pstate) == (345, 2619, 0)
    assert d.clock_event_reasons == 1
    assert d.ecc_uncorrected_volatile == 0
    assert (d.remapped_rows_correctable, d.remapped_rows_failure) == (0, 0)
    assert (d.pcie_link_gen, d.pcie_link_width, d.pcie_tx_kbps) == (5, 16, 757)
    assert d.fan_percent is None  # NVMLError_NotSupported on this card
    assert d.ecc_corrected_volatile is None  # not in the recording
    assert d.processes == ()


def test_nvml_h100_scrape_omits_unsupported_fields(h100: dict[str, Any]) -> None:
    samples = scrape(backend(h100)[0])
    assert_all_numbers(samples)
    assert "DCGM_FI_DEV_FAN_SPEED" not in samples
    assert "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL" not in samples
    (used,) = samples["DCGM_FI_DEV_FB_USED"]
    assert used.value == 0 and samples["DCGM_FI_DEV_FB_RESERVED"][0].value == 480.0
    assert samples["DCGM_FI_DEV_POWER_USAGE"][0].value == pytest.approx(76.087)
    assert used.labels == {
        "gpu": "0",
        "UUID": "GPU-5eab0000-0000-4000-8000-000000000001",
        "pci_bus_id": "00000000:00:06.0",
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
    }
    reasons = {s.labels["reason"]: s.value for s in samples["labctl_gpu_clock_event_active"]}
    assert reasons["gpu_idle"] == 1 and reasons["hw_thermal_slowdown"] == 0
    assert samples["labctl_gpu_up"][0].value == 1
    assert samples["labctl_gpu_unaccounted_memory_bytes"][0].value == 0


def test_nvml_prometheus_label_style_is_snake_case(h100: dict[str, Any]) -> None:
    samples = scrape(backend(h100)[0], label_style="prometheus")
    labels = samples["DCGM_FI_DEV_GPU_TEMP"][0].labels
    assert "model_name" in labels and "modelName" not in labels


def test_nvml_geforce_profile_has_no_ecc_and_reports_the_fan(h100: dict[str, Any]) -> None:
    b, _ = backend(geforce_profile(h100))
    d = b.read().devices[0]
    assert d.catalog_id == "rtx-3090" and d.fan_percent == 41 and d.pstate == 8
    samples = scrape(b)
    assert_all_numbers(samples)
    for absent in (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    ):
        assert absent not in samples
    assert samples["DCGM_FI_DEV_FAN_SPEED"][0].value == 41
    # The desktop compositor's memory shows, and belongs to no deployment.
    (proc,) = samples["labctl_gpu_process_memory_bytes"]
    assert proc.labels["pid"] == "1312" and proc.labels["deployment"] == "unaccounted"


def test_nvml_gb10_profile_falls_back_to_host_memory(h100: dict[str, Any]) -> None:
    b, _ = backend(gb10_profile(h100))
    d = b.read().devices[0]
    assert d.memory_source == "host"
    assert d.memory_total_bytes == HOST_TOTAL and d.memory_free_bytes == HOST_AVAILABLE
    assert d.memory_reserved_bytes is None and d.power_limit_watts is None
    assert d.processes[0].used_bytes == 60 * 2**30
    assert d.xid_counts == {}  # this device registers no XID events
    samples = scrape(b)
    assert_all_numbers(samples)
    for absent in (
        "DCGM_FI_DEV_FB_RESERVED",
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "DCGM_FI_DEV_PCIE_LINK_GEN",
        "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "labctl_gpu_xid_errors_total",
    ):
        assert absent not in samples
    assert samples["DCGM_FI_DEV_FB_TOTAL"][0].value == HOST_TOTAL / 2**20
    info = samples["labctl_gpu_info"][0].labels
    assert info["memory"] == "host" and info["backend"] == "nvml"
    # On unified memory the host's other users are not GPU memory: only processes count.
    assert samples["labctl_gpu_unaccounted_memory_bytes"][0].value == 60 * 2**30


def test_nvml_xid_events_are_counted_and_the_last_reported(h100: dict[str, Any]) -> None:
    b, fake = backend(h100, geforce_profile(h100))
    fake.xid_queue += [(1, 79), (1, 13), (1, 79)]
    d = b.read().devices[1]
    assert d.xid_last == 79 and d.xid_counts == {79: 2, 13: 1}
    samples = scrape(b)
    counts = {
        (s.labels["gpu"], s.labels["xid"]): s.value for s in samples["labctl_gpu_xid_errors_total"]
    }
    assert counts == {("1", "79"): 2, ("1", "13"): 1}
    (last,) = samples["DCGM_FI_DEV_XID_ERRORS"]
    assert last.labels["gpu"] == "1" and last.value == 79


def test_nvml_lost_gpu_fails_the_read_and_marks_the_exporter_down(h100: dict[str, Any]) -> None:
    b, fake = backend(h100)
    clock = Clock()
    sampler = Sampler(b, None, interval=1.0, clock=clock)
    sampler.sample_once()
    fake.lost.add(0)
    with pytest.raises(GpuError, match="GpuIsLost"):
        b.read()
    clock.t += 2
    snap = sampler.sample_once()
    assert not snap.gpu_ok and sampler.errors_total["gpu"] == 1
    registry = registry_for(sampler)
    text = generate_latest(registry).decode()
    assert "labctl_gpu_up 0.0" in text
    assert "labctl_gpu_sample_age_seconds 2.0" in text
    assert "DCGM_FI_DEV_FB_USED{" in text  # a reading 2 s old is still served
    clock.t += 10
    sampler.sample_once()
    text = generate_latest(registry).decode()
    assert "DCGM_FI_DEV_FB_USED{" not in text  # a stale one is not


def test_nvml_without_a_driver_is_unavailable_at_open(h100: dict[str, Any]) -> None:
    fake = FakeNvml([h100])
    fake.init_error = "NVMLError_DriverNotLoaded"
    with pytest.raises(GpuUnavailable, match="driver"):
        NvmlBackend(fake)
