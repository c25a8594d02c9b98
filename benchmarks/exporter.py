"""What a scrape of `labctl exporter` costs, and what the sampler costs the host.

Eight simulated H100s with 20 live processes on each (160 GPU-process
entries), served three ways in one run:

- from the sampler's snapshot (what `labctl exporter` does),
- reading the simulated GPUs inline on every scrape,
- reading NVML inline on every scrape, through the fake NVML module that
  replays the real H100 readings: once with no driver cost (a lower bound) and
  once with the 20 ms that NVML's PCIe-throughput counter window costs per read.

Then the sampler's CPU share at a 1 s interval, with the simulated GPUs and with
the fake NVML. Targets: scrape p99 ≤ 5 ms from the snapshot; sampler ≤ 1% of one core.

    python benchmarks/exporter.py [--scrapes N] [--cpu-seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
import urllib.request
from wsgiref.simple_server import make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakenvml import FakeNvml

from labctl.gpu.host import HostSampler
from labctl.gpu.nvml import NvmlBackend
from labctl.gpu.sample import GpuBackend
from labctl.gpu.sim import SimBackend, SimMachine, parse_sim_gpus
from labctl.telemetry.collector import TelemetryCollector
from labctl.telemetry.exporter import _QuietHandler, metrics_app
from labctl.telemetry.sampler import Sampler
from labctl.units import GiB

GPUS, PROCS = 8, 20
SHARED = Path(__file__).resolve().parents[2] / "shared"
P99_TARGET_MS, CPU_TARGET = 5.0, 0.01


class Inline(TelemetryCollector):
    """Reads the GPUs on every scrape: what an exporter without a sampler does."""

    def render(self, gzipped: bool = False) -> bytes:
        self.sampler.sample_once()
        return super().render(gzipped)


def serve(collector: TelemetryCollector) -> tuple[str, Any]:
    server = make_server("127.0.0.1", 0, metrics_app(collector), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/metrics", server


def scrape_ms(url: str, n: int, gzipped: bool = False) -> list[float]:
    times = []
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzipped else {})
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def fake_nvml(pids: list[int], pcie_window: bool) -> FakeNvml:
    h100 = json.loads((SHARED / "data/gpu/h100-nvml-and-kernels.json").read_text())["nvml_snapshot"]
    devices = []
    for i in range(GPUS):
        d = dict(h100, uuid=f"GPU-5eab0000-0000-4000-8000-00000000000{i}")
        d["procs"] = [[pid, 3 * GiB] for pid in pids]
        devices.append(d)
    delays = {"pcie_tx_kbs": 0.020, "pcie_rx_kbs": 0.020} if pcie_window else {}
    return FakeNvml(devices, key_delay_s=delays)


def cpu_share(backend: GpuBackend, seconds: float) -> float:
    sampler = Sampler(backend, HostSampler(), interval=1.0)
    sampler.start()
    time.sleep(0.2)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    sampler.stop()
    return cpu / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=500, help="scrapes per fast variant")
    ap.add_argument("--cpu-seconds", type=float, default=10.0, help="how long to watch the sampler")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()

    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(PROCS)]
    pids = [p.pid for p in sleepers]
    results: dict[str, Any] = {"gpus": GPUS, "processes_per_gpu": PROCS}
    try:
        with tempfile.TemporaryDirectory() as home:
            machine = SimMachine(Path(home))
            machine.configure(parse_sim_gpus(f"{GPUS}xh100-sxm"))
            for pid in pids:
                for gpu in range(GPUS):
                    machine.allocate(gpu, 3 * GiB, pid=pid)
            owners = {pids[0]: "chat", pids[1]: "asr"}

            snap_sampler = Sampler(SimBackend(machine), HostSampler(), lambda: owners)
            snap_sampler.sample_once()
            variants = [
                ("snapshot", TelemetryCollector(snap_sampler), args.scrapes),
                ("snapshot, gzip (as Prometheus asks)", TelemetryCollector(snap_sampler),
                 args.scrapes),
                ("sim inline", Inline(Sampler(SimBackend(machine), HostSampler(), lambda: owners)),
                 args.scrapes // 5),
                ("nvml inline", Inline(Sampler(NvmlBackend(fake_nvml(pids, False)), HostSampler(),
                                               lambda: owners)), args.scrapes // 5),
                ("nvml inline + 20 ms PCIe window",
                 Inline(Sampler(NvmlBackend(fake_nvml(pids, True)), HostSampler(), lambda: owners)),
                 10),
            ]  # fmt: skip
            rows = {}
            for name, collector, n in variants:
                url, server = serve(collector)
                scrape_ms(url, 5)  # warm up
                times = scrape_ms(url, n, gzipped="gzip" in name)
                server.shutdown()
                server.server_close()
                rows[name] = {"n": n, "p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99),
                              "mean_ms": statistics.fmean(times)}  # fmt: skip
            results["scrape"] = rows
            results["cpu_share"] = {
                "sim": cpu_share(SimBackend(machine), args.cpu_seconds),
                "nvml (fake, no driver cost)": cpu_share(
                    NvmlBackend(fake_nvml(pids, False)), args.cpu_seconds
                ),
            }
    finally:
        for p in sleepers:
            p.kill()
            p.wait()

    snap = results["scrape"]["snapshot"]
    worst_p99 = max(r["p99_ms"] for k, r in results["scrape"].items() if k.startswith("snapshot"))
    results["targets"] = {
        "scrape_p99_ms": P99_TARGET_MS,
        "scrape_p99_met": worst_p99 <= P99_TARGET_MS,
        "cpu_share": CPU_TARGET,
        "cpu_share_met": all(v <= CPU_TARGET for v in results["cpu_share"].values()),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"labctl exporter: {GPUS} GPUs × {PROCS} processes ({GPUS * PROCS} GPU-process entries)")
    print(
        f"\n{'scrape (HTTP GET /metrics)':<38}{'n':>5}{'p50 ms':>10}{'p99 ms':>10}{'p50 vs snapshot':>18}"
    )
    for name, r in results["scrape"].items():
        ratio = r["p50_ms"] / snap["p50_ms"]
        print(f"  {name:<36}{r['n']:>5}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{ratio:>17.1f}×")
    ok = "met" if results["targets"]["scrape_p99_met"] else "MISSED"
    print(f"  target: p99 ≤ {P99_TARGET_MS:g} ms from the snapshot: {ok}")
    print("\nsampler CPU at a 1 s interval (share of one core)")
    for name, share in results["cpu_share"].items():
        print(f"  {name:<34}{share * 100:>8.2f}%")
    ok = "met" if results["targets"]["cpu_share_met"] else "MISSED"
    print(f"  target: ≤ {CPU_TARGET * 100:g}% of one core: {ok}")
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
