"""Telemetry with real processes: the simulated-GPU ledger, `labctl exporter`, Prometheus, promtool."""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
from typing import Any

import pytest

from labctl.gpu.sim import SimBackend, SimMachine
from labctl.units import GiB, MiB
from tests.integration.lab import Lab, free_port, get, wait_for

pytestmark = pytest.mark.integration


def scrape_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def start_exporter(lab: Lab, *flags: str) -> str:
    port = free_port()
    proc = lab.start(
        "exporter", "--listen", f"127.0.0.1:{port}", "--interval", "200ms",
        "--gpu-backend", "sim", *flags,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"labctl exporter exited: {proc.stderr.read() if proc.stderr else ''}")
        return "labctl_gpu_up 1.0" in get(url)

    wait_for(up, what="the exporter")
    return url


def test_ledger_releases_memory_when_the_holder_dies(lab: Lab) -> None:
    machine = SimMachine(lab.home)
    backend = SimBackend(machine)
    proc, holder = lab.hold(0, "4GiB")
    assert holder == proc.pid
    (dev,) = backend.read().devices
    assert [(p.pid, p.used_bytes) for p in dev.processes] == [(proc.pid, 4 * GiB)]
    proc.kill()  # no chance to clean up: only the ledger's liveness check can release it
    proc.wait()
    (dev,) = backend.read().devices
    assert dev.processes == () and dev.memory_used_bytes == 0
    # A holder that exits on its own releases too.
    timed, _ = lab.hold(0, "1GiB", "--for", "300ms")
    timed.wait(10)
    assert backend.read().devices[0].memory_used_bytes == 0


def test_orphaned_worker_keeps_memory_as_unaccounted(lab: Lab) -> None:
    url = start_exporter(lab, "--sim-gpus", "rtx-3090")
    parent, worker = lab.hold(0, "6GiB", "--orphan-worker")
    assert worker != parent.pid
    (lab.home / "owners.json").write_text(json.dumps({"pids": {str(parent.pid): "chat"}}))

    def metric(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return scrape_values(get(url), name)

    def held_by() -> dict[tuple[str, str], float]:
        return {
            (dict(k)["pid"], dict(k)["deployment"]): v
            for k, v in metric("labctl_gpu_process_memory_bytes").items()
        }

    def attributed() -> bool:
        return held_by() == {(str(worker), "chat"): 6 * GiB}

    wait_for(attributed, what="the worker's memory attributed to its deployment")
    assert metric("labctl_gpu_unaccounted_memory_bytes") == {(("gpu", "0"),): 0.0}

    parent.kill()  # the engine dies; its worker does not
    parent.wait()
    wait_for(
        lambda: metric("labctl_gpu_unaccounted_memory_bytes") == {(("gpu", "0"),): 6 * GiB},
        what="the orphan's memory shown as unaccounted",
    )
    assert held_by() == {(str(worker), "unaccounted"): 6 * GiB}
    assert list(metric("DCGM_FI_DEV_FB_USED").values()) == [6144.0]

    os.kill(worker, signal.SIGKILL)  # the orphan goes: the memory comes back
    wait_for(
        lambda: (
            metric("labctl_gpu_unaccounted_memory_bytes") == {(("gpu", "0"),): 0.0}
            and not metric("labctl_gpu_process_memory_bytes")
        ),
        what="the orphan's memory released",
    )


def promtool_findings(text: str) -> list[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    findings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert (proc.returncode == 0) == (not findings), (proc.returncode, findings)
    return findings


def test_prometheus_scrapes_eight_simulated_gpus(lab: Lab, tmp_path: Path) -> None:
    url = start_exporter(lab, "--sim-gpus", "8xh100-sxm")
    held = {(0, "20GiB"), (0, "10GiB"), (3, "40GiB"), (5, "1536MiB"), (7, "79GiB")}
    holders = {lab.hold(gpu, size)[1]: gpu for gpu, size in sorted(held)}
    results = lab.prometheus(url, tmp_path)

    def query(expr: str) -> dict[str, float]:
        return {
            r["metric"].get("gpu", "") + "/" + r["metric"].get("pid", ""): float(r["value"][1])
            for r in results(expr)
        }

    def ready() -> dict[str, float] | None:
        found = query("labctl_gpu_process_memory_bytes")
        return found if len(found) == len(holders) else None

    wait_for(ready, timeout=30, what="Prometheus to scrape every holder")

    machine = SimMachine(lab.home)
    devices = machine.devices()
    ledger = machine.holdings()
    used = {d.index: sum(h.memory.get(d.index, 0) for h in ledger) for d in devices}
    assert used[0] == 30 * GiB and used[7] == 79 * GiB
    assert query("DCGM_FI_DEV_FB_USED") == {f"{i}/": used[i] / MiB for i in range(8)}
    assert query("DCGM_FI_DEV_FB_FREE") == {
        f"{d.index}/": (d.allocatable_bytes - used[d.index]) / MiB for d in devices
    }
    assert query("labctl_gpu_process_memory_bytes") == {
        f"{gpu}/{h.pid}": float(h.memory[gpu]) for h in ledger for gpu in h.memory
    }
    assert {int(k.split("/")[1]) for k in query("labctl_gpu_process_memory_bytes")} == set(holders)
    assert query('count(DCGM_FI_DEV_GPU_TEMP{modelName="NVIDIA H100 80GB HBM3"})') == {"/": 8.0}

    # The scrape itself passes promtool's checks; DCGM's own camelCase `modelName`
    # label is the one finding, and the snake_case label style has none.
    dcgm = promtool_findings(get(url))
    assert dcgm and all("label names should be written in 'snake_case'" in f for f in dcgm)
    strict_url = start_exporter(lab, "--label-style", "prometheus")
    strict = get(strict_url)
    assert 'model_name="NVIDIA H100 80GB HBM3"' in strict
    assert promtool_findings(strict) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exporter", "--sim-gpus", "h100-sx"], "Did you mean 'h100-sxm'"),
        (["exporter", "--sim-gpus", ","], "--sim-gpus is empty"),
        (["exporter", "--interval", "fast"], "--interval: 'fast' is not a duration"),
        (["exporter", "--interval", "1ms"], "use 50ms to 1h"),
        (["exporter", "--listen", "127.0.0.1:http"], "port must be a number"),
        (["exporter", "--owner", "chat"], "PID=DEPLOYMENT"),
        (["exporter", "--gpu-backend", "nvml", "--sim-gpus", "l4"], "--sim-gpus applies"),
        (["sim", "hold", "--memory", "lots"], "--memory: 'lots' is not a size"),
        (["sim", "hold", "--memory", "30GiB"], "CUDA out of memory on simulated GPU 0"),
        (["sim", "hold", "--gpu", "2", "--memory", "1GiB"], "no simulated GPU 2"),
    ],
)
def test_telemetry_commands_reject_bad_input_in_one_line(
    labctl: Any, args: list[str], message: str
) -> None:
    r = labctl(*args)
    assert r.code != 0 and r.out == ""
    assert r.err.count("\n") == 1 and message in r.err, r.err


def test_exporter_reports_a_taken_port(lab: Lab) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = lab.start("exporter", "--gpu-backend", "sim", "--listen", f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err


def test_gpus_shows_who_holds_memory(lab: Lab, labctl: Any) -> None:
    parent, worker = lab.hold(0, "3GiB", "--worker")
    (lab.home / "owners.json").write_text(json.dumps({"pids": {str(parent.pid): "chat"}}))
    doc = labctl("gpus", "--json", "--gpu-backend", "sim", home=lab.home, check=True).json()
    (dev,) = doc["devices"]
    assert [(p["pid"], p["deployment"], p["used_bytes"]) for p in dev["processes"]] == [
        (worker, "chat", 3 * GiB)
    ]
    assert dev["by_deployment"] == {"chat": 3 * GiB} and dev["unaccounted_bytes"] == 0
    human = labctl("gpus", "--gpu-backend", "sim", home=lab.home, check=True).out
    assert f"{worker}" in human and "[chat] 3.00 GiB" in human
