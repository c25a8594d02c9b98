"""A Prometheus collector that serves the sampler's last snapshot.

Built fresh on every scrape from the snapshot (no global gauges to keep in
step), so a scrape costs formatting only and never touches NVML. Device
metrics use the NVIDIA DCGM exporter's names, units and labels, so existing
DCGM dashboards and alerts work unchanged; everything labctl adds is
``labctl_*`` in base units. A reading a card does not offer is omitted, never
NaN.

DCGM declares a few of its fields as counters without Prometheus's ``_total``
suffix (energy, remapped rows); they are served as gauges under DCGM's names,
which PromQL treats the same (``rate()`` and ``increase()`` work on them) and
which keeps ``promtool check metrics`` clean. DCGM's ``modelName`` label is
camelCase, which ``promtool`` flags; ``label_style="prometheus"`` renames it
``model_name`` for setups that lint strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import gzip

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from labctl.gpu.sample import CLOCK_EVENT_REASONS, DeviceSample
from labctl.telemetry.attribution import UNACCOUNTED
from labctl.telemetry.sampler import Sampler, Snapshot
from labctl.units import MiB

LABEL_STYLES = ("dcgm", "prometheus")

Family = GaugeMetricFamily | CounterMetricFamily

_MIB = float(MiB)

#: (DCGM field, help, how to read it from a device sample); units as dcgm-exporter's.
_DCGM_FIELDS: tuple[tuple[str, str, Callable[[DeviceSample], float | None]], ...] = (
    ("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).",
     lambda d: None if d.memory_total_bytes is None else d.memory_total_bytes / _MIB),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
     lambda d: None if d.memory_free_bytes is None else d.memory_free_bytes / _MIB),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).",
     lambda d: None if d.memory_used_bytes is None else d.memory_used_bytes / _MIB),
    ("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).",
     lambda d: None if d.memory_reserved_bytes is None else d.memory_reserved_bytes / _MIB),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda d: d.gpu_util_percent),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda d: d.memory_util_percent),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda d: d.power_watts),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power management limit (in W).",
     lambda d: d.power_limit_watts),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
     "Total energy consumption since boot (in mJ); monotonic, served as a gauge.",
     lambda d: d.energy_millijoules),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda d: d.temperature_c),
    ("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %).", lambda d: d.fan_percent),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", lambda d: d.sm_clock_mhz),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", lambda d: d.memory_clock_mhz),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
     "Current clock event (throttle) reasons, NVML bitmask.",
     lambda d: d.clock_event_reasons),
    ("DCGM_FI_DEV_PSTATE", "Performance state (0 fastest, 15 slowest).", lambda d: d.pstate),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Single-bit volatile ECC errors.",
     lambda d: d.ecc_corrected_volatile),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Double-bit volatile ECC errors.",
     lambda d: d.ecc_uncorrected_volatile),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Rows remapped for correctable errors.",
     lambda d: d.remapped_rows_correctable),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Rows remapped for uncorrectable errors.",
     lambda d: d.remapped_rows_uncorrectable),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "Whether a row remap is pending (reset the GPU).",
     lambda d: d.remapped_rows_pending),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed.",
     lambda d: d.remapped_rows_failure),
    ("DCGM_FI_DEV_PCIE_LINK_GEN", "Current PCIe link generation.", lambda d: d.pcie_link_gen),
    ("DCGM_FI_DEV_PCIE_LINK_WIDTH", "Current PCIe link width (lanes).",
     lambda d: d.pcie_link_width),
    ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "PCIe transmit throughput (in KB/s).",
     lambda d: d.pcie_tx_kbps),
    ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "PCIe receive throughput (in KB/s).",
     lambda d: d.pcie_rx_kbps),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.",
     lambda d: d.xid_last),
)  # fmt: skip


class TelemetryCollector(Collector):
    """Serves a :class:`Sampler`'s last snapshot as Prometheus metrics.

    Args:
        sampler: the sampler whose ``latest`` snapshot is served.
        label_style: ``dcgm`` (DCGM's own labels) or ``prometheus`` (``model_name``).
        stale_after: seconds after which a GPU reading is too old to serve.
    """

    def __init__(
        self,
        sampler: Sampler,
        label_style: str = "dcgm",
        stale_after: float | None = None,
    ) -> None:
        if label_style not in LABEL_STYLES:
            raise ValueError(f"label_style {label_style!r}: use one of {', '.join(LABEL_STYLES)}")
        self.sampler = sampler
        self.model_label = "modelName" if label_style == "dcgm" else "model_name"
        self.stale_after = (
            stale_after if stale_after is not None else max(5.0, 3 * sampler.interval)
        )
        # Caches keyed by the snapshot object itself (held, so that a later snapshot
        # can never be allocated at its address) and whether it was fresh.
        self._families_key: tuple[Snapshot | None, bool] | None = None
        self._cached: list[Family] = []
        self._render_key: tuple[Snapshot | None, bool] | None = None
        self._rendered = b""

    def describe(self) -> list[Family]:
        return []  # the set of metrics depends on the cards; never collect at registration

    def collect(self) -> Iterator[Family]:
        snap = self.sampler.latest
        age = self._age(snap)
        yield from self._families(snap, age is not None and age <= self.stale_after)
        if age is not None:
            yield _age_family(age)

    def render(self, gzipped: bool = False) -> bytes:
        """The exposition text; everything but the sample age is rendered once per snapshot."""
        snap = self.sampler.latest
        age = self._age(snap)
        fresh = age is not None and age <= self.stale_after
        key = (snap, fresh)
        if self._render_key is None or not _same(key, self._render_key):
            self._rendered = generate_latest(_Families(self._families(snap, fresh)))
            self._render_key = key
        body = self._rendered
        if age is not None:
            body += generate_latest(_Families([_age_family(age)]))
        return gzip.compress(body, compresslevel=1) if gzipped else body

    def _age(self, snap: Snapshot | None) -> float | None:
        if snap is None or snap.reading_monotonic is None:
            return None
        return max(0.0, self.sampler.clock() - snap.reading_monotonic)

    def _families(self, snap: Snapshot | None, fresh: bool) -> list[Family]:
        """Every family but the age, built once per snapshot."""
        key = (snap, fresh)
        if self._families_key is not None and _same(key, self._families_key):
            return self._cached
        out: list[Family] = []
        up = GaugeMetricFamily(
            "labctl_gpu_up", "1 when the last GPU read succeeded, 0 when it failed."
        )
        up.add_metric([], 1.0 if snap is not None and snap.gpu_ok else 0.0)
        out.append(up)
        if snap is not None:
            samples = CounterMetricFamily(
                "labctl_telemetry_samples", "Snapshots the telemetry sampler has taken."
            )
            samples.add_metric([], float(snap.samples_total))
            errors = CounterMetricFamily(
                "labctl_telemetry_sample_errors",
                "Failed reads by the telemetry sampler, by source.",
                labels=["source"],
            )
            for source, count in sorted(snap.errors_total.items()):
                errors.add_metric([source], float(count))
            duration = GaugeMetricFamily(
                "labctl_telemetry_sample_duration_seconds",
                "How long the last snapshot took to read.",
            )
            duration.add_metric([], snap.duration_s)
            out += [samples, errors, duration]
            if fresh:
                out += self._gpu(snap)
            if snap.host is not None:
                out += _host(snap)
        self._families_key, self._cached = key, out
        return out

    def _gpu(self, snap: Snapshot) -> Iterator[Family]:
        reading = snap.reading
        assert reading is not None
        names = ["gpu", "UUID", "pci_bus_id", "device", self.model_label]
        fams = {
            name: GaugeMetricFamily(name, help_, labels=names) for name, help_, _ in _DCGM_FIELDS
        }
        info = GaugeMetricFamily(
            "labctl_gpu_info",
            "The GPUs labctl reads, with their identity; always 1.",
            labels=["gpu", "uuid", "name", "pci_bus_id", "catalog_id", "backend", "memory",
                    "driver_version"],
        )  # fmt: skip
        reasons = GaugeMetricFamily(
            "labctl_gpu_clock_event_active",
            "1 while the clocks are held back for this reason (thermal, power, idle, …).",
            labels=["gpu", "reason"],
        )
        xids = CounterMetricFamily(
            "labctl_gpu_xid_errors",
            "XID errors seen since the exporter started, by XID.",
            labels=["gpu", "xid"],
        )
        procs = GaugeMetricFamily(
            "labctl_gpu_process_memory_bytes",
            f"GPU memory held by a process, with the deployment whose process tree it belongs "
            f"to ({UNACCOUNTED!r} when none).",
            labels=["gpu", "pid", "deployment", "process"],
        )
        deps = GaugeMetricFamily(
            "labctl_gpu_deployment_memory_bytes",
            "GPU memory held by each deployment's processes.",
            labels=["gpu", "deployment"],
        )
        unacc = GaugeMetricFamily(
            "labctl_gpu_unaccounted_memory_bytes",
            "Used GPU memory that no known deployment accounts for (orphaned workers, "
            "other programs, memory no process reports).",
            labels=["gpu"],
        )
        for d in reading.devices:
            gpu = str(d.index)
            labels = [gpu, d.uuid, d.pci_bus_id, f"nvidia{d.index}", d.name]
            for name, _, read in _DCGM_FIELDS:
                value = read(d)
                if value is not None:
                    fams[name].add_metric(labels, float(value))
            info.add_metric(
                [gpu, d.uuid, d.name, d.pci_bus_id, d.catalog_id or "", reading.backend,
                 d.memory_source, reading.driver_version or ""],
                1.0,
            )  # fmt: skip
            if d.clock_event_reasons is not None:
                for bit, reason in CLOCK_EVENT_REASONS:
                    reasons.add_metric([gpu, reason], 1.0 if d.clock_event_reasons & bit else 0.0)
            for xid, count in sorted(d.xid_counts.items()):
                xids.add_metric([gpu, str(xid)], float(count))
            owned = snap.owners.get(d.index)
            if owned is None:
                continue
            for p in owned.processes:
                if p.used_bytes is not None:
                    procs.add_metric(
                        [gpu, str(p.pid), p.deployment or UNACCOUNTED, p.process],
                        float(p.used_bytes),
                    )
            for dep, nbytes in sorted(owned.by_deployment.items()):
                deps.add_metric([gpu, dep], float(nbytes))
            if owned.unaccounted_bytes is not None:
                unacc.add_metric([gpu], float(owned.unaccounted_bytes))
        families: list[Family] = [*fams.values(), info, reasons, xids, procs, deps, unacc]
        yield from (fam for fam in families if fam.samples)


def _same(a: tuple[Snapshot | None, bool], b: tuple[Snapshot | None, bool]) -> bool:
    return a[0] is b[0] and a[1] == b[1]


def _age_family(age: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "labctl_gpu_sample_age_seconds", "Seconds since the last good GPU reading."
    )
    family.add_metric([], age)
    return family


class _Families:
    """What ``generate_latest`` renders: a fixed list of families."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> list[Family]:
        return self.families


def _host(snap: Snapshot) -> Iterator[Family]:
    h = snap.host
    assert h is not None

    def gauge(name: str, help_: str, value: float | None, **labels: str) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, help_, labels=list(labels))
        if value is not None:
            fam.add_metric(list(labels.values()), float(value))
        return fam

    fams = [
        gauge("labctl_host_cpus", "Logical CPUs.", h.cpu_count),
        gauge("labctl_host_cpu_utilization_ratio", "Share of all CPUs busy, 0–1.",
              h.cpu_utilization),
        gauge("labctl_host_memory_total_bytes", "Host RAM.", h.memory_total_bytes),
        gauge("labctl_host_memory_available_bytes", "Host RAM available without swapping.",
              h.memory_available_bytes),
        gauge("labctl_host_memory_used_bytes", "Host RAM in use (total less available).",
              h.memory_used_bytes),
        gauge("labctl_host_swap_total_bytes", "Swap space.", h.swap_total_bytes),
        gauge("labctl_host_swap_used_bytes", "Swap in use.", h.swap_used_bytes),
        gauge("labctl_host_model_cache_disk_total_bytes",
              "Size of the disk holding the model cache.", h.cache_disk_total_bytes,
              path=h.cache_path),
        gauge("labctl_host_model_cache_disk_free_bytes",
              "Free space on the disk holding the model cache.", h.cache_disk_free_bytes,
              path=h.cache_path),
    ]  # fmt: skip
    load = GaugeMetricFamily(
        "labctl_host_load_average", "Run-queue load average.", labels=["period"]
    )
    for period, value in (("1m", h.load_1m), ("5m", h.load_5m), ("15m", h.load_15m)):
        load.add_metric([period], value)
    fams.append(load)
    for fam in fams:
        if fam.samples:
            yield fam
    if h.cache_read_bytes is not None and h.cache_device is not None:
        read = CounterMetricFamily(
            "labctl_host_model_cache_read_bytes",
            "Bytes read from the block device holding the model cache.",
            labels=["path", "device"],
        )
        read.add_metric([h.cache_path, h.cache_device], float(h.cache_read_bytes))
        yield read
