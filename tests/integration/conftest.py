"""Integration tests run the real ``labctl`` command in a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from tests.integration.lab import Lab

pytestmark = pytest.mark.integration


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def labctl(tmp_path: Path) -> Callable[..., Run]:
    env = dict(os.environ, LABCTL_HOME=str(tmp_path / "home"), COLUMNS="200")

    def run(*args: str, check: bool = False, home: Path | None = None) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "labctl", *args],
            capture_output=True,
            text=True,
            env=env if home is None else dict(env, LABCTL_HOME=str(home)),
            timeout=120,
        )
        r = Run(proc)
        if check and r.code != 0:
            raise AssertionError(f"labctl {' '.join(args)} failed ({r.code}): {r.err}")
        return r

    return run


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Processes started against a fresh LABCTL_HOME, all stopped when the test ends."""
    started = Lab(tmp_path / "home")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def whisper_server() -> Path:
    """whisper.cpp's whisper-server, built once per machine (``make whisper-server``); the
    sdist's ``for-tests-ggml-tiny.bin`` lies beside it."""
    path = os.environ.get("LABCTL_WHISPER_SERVER")
    cached = Path.home() / ".cache" / "labctl" / "whisper-server-1.5.1-portable" / "whisper-server"
    binary = Path(path) if path else cached
    if not binary.is_file():
        pytest.fail(f"whisper-server is not at {binary}: run `make whisper-server` (make test "
                    "does), or set LABCTL_WHISPER_SERVER")  # fmt: skip
    return binary
