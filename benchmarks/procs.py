"""What the benchmarks share: free ports, waiting for a URL, and timing child processes' CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, limit: float = 120) -> None:
    """Until ``url`` answers 200; exits the benchmark after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {limit:g} s")


def wait_port(port: int, limit: float = 30) -> None:
    """Until something listens on loopback ``port``; exits the benchmark after ``limit`` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {limit:g} s")


def start_lab(
    config: Path, env: dict[str, str], limit: float = 120
) -> tuple[subprocess.Popen[bytes], str]:
    """`labctl up --config CONFIG` on a free loopback port, once /readyz answers; returns the
    daemon and its URL. Exits the benchmark if it is not ready within ``limit`` seconds."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "up", "--config", str(config), "--listen",
         f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", limit)
    except SystemExit:
        proc.kill()
        raise
    return proc, url


def admin(url: str, path: str, env: dict[str, str], body: object = None) -> object:
    """One admin API call with the token the lab generated in the benchmark's LABCTL_HOME."""
    token = (Path(env["LABCTL_HOME"]) / "admin-token").read_text().strip()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run a command; returns (exit code, CPU seconds of it and every process it reaped).

    Its stderr's tail is shown when it fails.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    proc.stderr.close()
    return proc.returncode, usage.ru_utime + usage.ru_stime
