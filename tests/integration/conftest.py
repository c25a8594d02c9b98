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
