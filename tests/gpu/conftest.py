"""The GPU tier: real NVIDIA GPUs through NVML. Skipped, with the reason, where NVML cannot open."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import signal
import subprocess
import sys
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
    it (Ctrl-C) after."""
    url, env = f"http://127.0.0.1:{port}", dict(os.environ, LABCTL_HOME=str(home))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "labctl", "up", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the lab's CUDA engine did not become ready")
        yield url, env
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(60)
