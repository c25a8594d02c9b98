"""Where labctl keeps its state.

``$LABCTL_HOME`` (default ``~/.local/state/labctl``) holds the deployment
journal, engine logs, the simulated-GPU ledger and the table of which process
belongs to which deployment.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$LABCTL_HOME``, or ``$XDG_STATE_HOME/labctl``, or ``~/.local/state/labctl``."""
    if os.environ.get("LABCTL_HOME"):
        return Path(os.environ["LABCTL_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "labctl"
