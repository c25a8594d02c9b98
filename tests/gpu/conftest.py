"""The GPU tier: real NVIDIA GPUs through NVML. Skipped, with the reason, where NVML cannot open."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from labctl.errors import GpuUnavailable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        from labctl.gpu.nvml import read_devices

        devices = read_devices()
        reason = "" if devices else "NVML opened but reports no GPU"
    except GpuUnavailable as exc:
        reason = str(exc)
    for item in items:
        if "gpu" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=f"no GPU: {reason}"))


@contextlib.contextmanager
def running_lab(config: Path, home: Path, port: int) -> Iterator[tuple[str, dict[str, str]]]:
    """``labctl up --config CONFIG`` on ``port`` with ``home`` as ``$LABCTL_HOME``, once its
    deployments are ready: yields its URL and the environment to run ``labctl`` with; stops
    it (Ctrl-C) after. A lab that does not get ready fails the test with what it said, its
    deployments' states and errors, and the doctor's failures (a GPU machine is borrowed for
    minutes: one run must say why)."""
    url, env = f"http://127.0.0.1:{port}", dict(os.environ, LABCTL_HOME=str(home))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "labctl", "up", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(daemon.stdout or ()), daemon=True)
    reader.start()  # drained as it comes: a full pipe would stall the lab
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and daemon.poll() is None:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the lab's CUDA engine did not become ready\n{why_not_ready(url, env, config)}"
                        f"\nthe lab said:\n{''.join(said[-40:])}")  # fmt: skip
        yield url, env
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(60)


def why_not_ready(url: str, env: dict[str, str], config: Path) -> str:
    """The deployments' states and errors (``labctl status --json``) and the doctor's failures
    (``labctl doctor --json``), as lines."""
    lines = []
    try:
        status = subprocess.run([sys.executable, "-m", "labctl", "status", "--url", url, "--json"],
                                env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
        for d in json.loads(status.stdout).get("deployments", []):
            lines.append(f"deployment {d.get('name')}: {d.get('state')} {d.get('error') or ''}")
    except subprocess.TimeoutExpired:
        lines.append("labctl status did not answer within 30 s")
    except ValueError:
        lines.append(f"labctl status: {status.stdout[-500:]}{status.stderr[-500:]}")
    try:
        lines.extend(doctor_failures(env, config))
    except subprocess.TimeoutExpired:
        lines.append("labctl doctor did not finish within 120 s")
    return "\n".join(lines)


def doctor_failures(env: dict[str, str], config: Path | None = None) -> list[str]:
    """``labctl doctor --json``'s failures as ``CODE (PLACE): MESSAGE | evidence: …`` lines."""
    argv = [sys.executable, "-m", "labctl", "doctor", "--json"] + (
        ["--config", str(config)] if config else []
    )
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        return [f"labctl doctor: {out.stdout[-500:]}{out.stderr[-500:]}"]
    return [f"{f['code']} ({f['place']}): {f['message']} | evidence: {f['evidence']}"
            for f in report.get("findings", []) if f.get("severity") == "fail"]  # fmt: skip
