"""Fault injection for the crash-consistency tests (off unless its variable is set)."""

from __future__ import annotations

from collections.abc import Callable
import os
import signal
import threading


def crash_point(armed: threading.Event) -> Callable[[str], None]:
    """A journal step hook: ``LABCTL_FAULT_KILL_AT=STEP[@SECONDS]`` kills this daemon with
    SIGKILL when a deploy step named STEP has begun (SECONDS later), once ``armed`` (after
    the configured deployments started)."""
    spec = os.environ.get("LABCTL_FAULT_KILL_AT", "")
    step, _, delay = spec.partition("@")

    def hook(name: str) -> None:
        if name == step and armed.is_set():
            seconds = float(delay or 0)
            if seconds <= 0:
                os.kill(os.getpid(), signal.SIGKILL)
            timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()

    return hook if step else (lambda name: None)
