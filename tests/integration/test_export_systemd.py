"""`labctl export systemd` checked by systemd's own parser, and the daemon's notify messages
as systemd receives them: READY=1 once the embedded default's twin is ready, STOPPING=1 on
SIGTERM before the daemon exits."""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Lab, lab_toml


def verify(unit: Path, unit_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit`` with its drop-ins read from ``unit_path``."""
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: `make system-deps` installs Debian's systemd"
    return subprocess.run(
        [binary, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_path}:"),  # ':' keeps the defaults
    )  # fmt: skip


@pytest.mark.parametrize("with_config", [False, True])
def test_systemd_analyze_verify_prints_nothing(
    labctl: Callable[..., Run], tmp_path: Path, with_config: bool
) -> None:
    out = tmp_path / "units"
    args = ["--config", str(lab_toml(tmp_path))]
    r = labctl("export", "systemd", "--out", str(out), *(args if with_config else []), check=True)
    assert "systemctl enable --now labctl" in r.out
    unit, dropin = out / "labctl.service", out / "labctl.service.d" / "paths.conf"
    assert "ExecStart=/" in unit.read_text() and dropin.is_file()
    checked = verify(unit, out)
    # systemd-analyze exits 0 on an unknown key or a bad value: any line on stderr fails
    assert (checked.returncode, checked.stderr) == (0, "")
    # and the drop-in is read: a bad key there would be named
    dropin.write_text(dropin.read_text() + "Bogus=1\n")
    assert "paths.conf:" in verify(unit, out).stderr


def test_export_refuses_bad_input_with_one_line(labctl: Callable[..., Run], tmp_path: Path) -> None:
    r = labctl("export", "systemd", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path))
    assert r.code != 0 and r.err.count("\n") == 1 and "no such file" in r.err
    (tmp_path / "file").write_text("")
    r = labctl("export", "systemd", "--out", str(tmp_path / "file"))
    assert r.code != 0 and r.err.count("\n") == 1 and "--out" in r.err


def test_daemon_notifies_ready_after_its_deployments_then_stopping(
    lab: Lab, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(120)
        daemon = lab.up(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})  # embedded default
        ready = sock.recv(4096).decode()
        assert ready.splitlines() == ["READY=1", "STATUS=ready: chat"]
        deployments = daemon.api("GET", "/api/status")["deployments"]
        assert [(d["name"], d["state"]) for d in deployments] == [("chat", "ready")]
        assert deployments[0]["revision"] is not None  # serving, not only smoke-tested

        daemon.proc.send_signal(signal.SIGTERM)
        stopping = sock.recv(4096).decode()
        assert daemon.proc.poll() is None  # told before the drain and the engine's stop
        assert stopping.splitlines()[0] == "STOPPING=1"
        assert daemon.proc.wait(60) == 0
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing else: one READY=1, one STOPPING=1
            sock.recv(4096)
