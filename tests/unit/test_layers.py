"""The layer order of DESIGN.md and the I/O libraries' places, as `make lint` enforces them.

Each test copies src/labctl and pyproject.toml into a temporary directory, changes the copy
(an upward import, a banned library where it does not belong) and runs import-linter or ruff
on it, as `make lint` does on the real tree.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAYERS = "DESIGN.md layers: imports point down only"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and its lint configuration; returns the copy's root."""
    shutil.copytree(
        ROOT / "src" / "labctl",
        tmp_path / "src" / "labctl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_line(root: Path, module: str, line: str) -> None:
    """Append ``line`` to ``src/labctl/<module>`` in the copy (created when missing)."""
    path = root / "src" / "labctl" / module
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    path.write_text(f"{text}\n{line}\n")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the copy: its config, its package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(BIN / "lint-imports"), str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ruff_bans(root: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """Ruff's banned-import rule (TID251) on files of the copy, with the copy's config."""
    return subprocess.run(
        [
            str(BIN / "ruff"),
            "check",
            "--no-cache",
            "--select",
            "TID251",
            *(f"src/labctl/{f}" for f in files),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_unmodified_tree_keeps_every_contract(copy: Path) -> None:
    result = lint_imports(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout
    assert " 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a pure layer reaching the CLI
        ("fit/plan.py", "import labctl.cli.main", "labctl.fit.plan -> labctl.cli.main"),
        # a foundation reaching a layer above it
        ("units.py", "import labctl.catalog.gpus", "labctl.units -> labctl.catalog.gpus"),
        # the GPU layer reaching the engines above it
        ("gpu/host.py", "import labctl.engines", "labctl.gpu.host -> labctl.engines"),
        # one service reaching another (siblings are independent)
        ("bench/run.py", "import labctl.gateway.proxy", "labctl.bench.run -> labctl.gateway"),
        # the bottom foundations are independent of each other
        ("errors.py", "import labctl.units", "labctl.errors -> labctl.units"),
    ],
)
def test_an_upward_import_breaks_the_layers(
    copy: Path, module: str, line: str, broken: str
) -> None:
    add_line(copy, module, line)
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert f"{LAYERS} BROKEN" in result.stdout
    assert broken in result.stdout


def test_a_module_outside_every_layer_breaks_the_layers(copy: Path) -> None:
    add_line(copy, "newthing.py", "import labctl.errors")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert f"{LAYERS} BROKEN" in result.stdout
    assert "labctl.newthing" in result.stdout


def test_a_new_foundation_and_service_fit_the_layers(copy: Path) -> None:
    """sse.py (a foundation) used by two services, and a doctor service: all allowed."""
    add_line(copy, "sse.py", "import labctl.errors")
    add_line(copy, "gateway/proxy.py", "import labctl.sse")
    add_line(copy, "bench/stream.py", "import labctl.sse")
    add_line(copy, "doctor/__init__.py", "import labctl.gpu.host\nimport labctl.sse")
    result = lint_imports(copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("contract", "module", "line"),
    [
        ("pynvml only in labctl.gpu.nvml", "gpu/host.py", "import pynvml"),
        ("subprocess only in labctl.runtime", "engines/base.py", "import subprocess"),
        ("sqlite3 only in labctl.deploy.journal", "deploy/controller.py", "import sqlite3"),
        ("click and rich only in labctl.cli", "dashboard/page.py", "from rich.text import Text"),
        ("click and rich only in labctl.cli", "daemon/app.py", "import click"),
        # a banned library where ruff lifts its ban for another one
        ("sqlite3 only in labctl.deploy.journal", "cli/main.py", "import sqlite3"),
    ],
)
def test_a_library_outside_its_layer_breaks_its_contract(
    copy: Path, contract: str, module: str, line: str
) -> None:
    add_line(copy, module, line)
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout


def test_ruff_lifts_each_ban_only_where_it_is_needed(copy: Path) -> None:
    assert ruff_bans(copy, "gpu", "cli", "deploy", "runtime").returncode == 0
    add_line(copy, "gpu/host.py", "import sqlite3")  # gpu/ was lifted as a whole before
    add_line(copy, "gpu/sim.py", "import pynvml")  # only gpu/nvml.py may
    add_line(copy, "deploy/controller.py", "import asyncio\nasyncio.create_subprocess_exec")
    result = ruff_bans(copy, "gpu", "deploy")
    assert result.returncode != 0
    assert "src/labctl/gpu/host.py" in result.stdout
    assert "`sqlite3` is banned" in result.stdout
    assert "src/labctl/gpu/sim.py" in result.stdout
    assert "`pynvml` is banned" in result.stdout
    assert "`asyncio.create_subprocess_exec` is banned" in result.stdout
