"""Shared fixtures.

The project data (``shared/``: real vLLM startup logs and model facts) sits beside
the repository. A clone made elsewhere from a local checkout (``git clone .
/tmp/x``) finds it beside the checkout it was cloned from; ``LABCTL_SHARED``
names it explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess

import pytest

REPO = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    found = [Path(os.environ["LABCTL_SHARED"])] if os.environ.get("LABCTL_SHARED") else []
    found.append(REPO.parent / "shared")
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        found.append(Path(origin).resolve().parent / "shared")
    return found


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    candidates = _candidates()
    for path in candidates:
        if (path / "data").is_dir():
            return path
    pytest.fail(
        "the project data is missing (looked in "
        + ", ".join(map(str, candidates))
        + "): put shared/ beside the repository or set LABCTL_SHARED"
    )
