"""Short external commands (``nvidia-smi``, ``docker info``, ``mokutil``…), bounded in time.

A wedged driver can make ``nvidia-smi`` hang for minutes: every command here runs with a
timeout, in its own session so that what it forked dies with it, and its output is capped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import contextlib
from dataclasses import dataclass
import os
import signal
import subprocess

#: Bytes of a command's stdout and of its stderr kept (the rest is cut).
MAX_OUTPUT = 1 << 20


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    #: The exit status; None when it ran out of time (and was killed).
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run ``argv`` to its end or until ``timeout`` seconds, whichever comes first.

    Raises:
        OSError: it could not be started (not found, not executable).
    """
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return CommandResult(
        tuple(argv), code, out[:MAX_OUTPUT].decode(errors="replace"),
        err[:MAX_OUTPUT].decode(errors="replace"),
    )  # fmt: skip
