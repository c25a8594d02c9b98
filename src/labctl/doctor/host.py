"""The machine as the doctor's checks see it: files under a root, commands on a PATH, NVML.

Tests point ``root`` at a fixture tree, ``path`` at a folder of fake executables and
``nvml`` at the NVML replay; the real doctor reads ``/``, the environment's PATH and pynvml.
Every read is bounded (bytes, time); nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import os
from pathlib import Path
import resource
import shutil
import time
from typing import Any, TypeVar, cast

from labctl.runtime.command import CommandResult, run_command

T = TypeVar("T")

#: Bytes of one file a check may read (kernel logs are read from their end).
MAX_READ = 1 << 20


def _nvml() -> Any | None:
    from labctl.errors import GpuUnavailable
    from labctl.gpu.nvml import load_module

    try:
        return load_module()
    except GpuUnavailable:
        return None


@dataclass
class HostView:
    """Where the checks read from (defaults: this machine)."""

    root: Path = Path("/")
    #: PATH for external commands (None: the environment's).
    path: str | None = None
    #: A ``pynvml``-like module, or None where NVML cannot be loaded; ``...``: load it.
    nvml: Any = ...
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: (soft, hard) for a ``resource.RLIMIT_*`` of the process that runs the engines.
    rlimit: Callable[[int], tuple[int, int]] = resource.getrlimit
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs
    clock: Callable[[], float] = time.time
    #: Seconds one external command may take.
    timeout: float = 3.0
    _commands: dict[tuple[str, ...], CommandResult | None] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nvml is ...:
            self.nvml = _nvml()

    def file(self, path: str) -> Path:
        """``path`` (absolute, as on the real machine) under the view's root."""
        return self.root / path.lstrip("/")

    def read(self, path: str, limit: int = MAX_READ, tail: bool = False) -> str | None:
        """The text of ``path`` (its first, or with ``tail`` its last, ``limit`` bytes);
        None when it does not exist or cannot be read."""
        try:
            with self.file(path).open("rb") as fh:
                if tail:
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, size - limit))
                return fh.read(limit).decode(errors="replace")
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        try:
            return self.file(path).exists()
        except OSError:
            return False

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.file(path)))
        except OSError:
            return []

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(self.file(path))
        except OSError:
            return None

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.path if self.path is not None else self.env.get("PATH"))

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, computed once per view: a reading several checks share (one NVML
        pass for every GPU check)."""
        if key not in self._memo:
            self._memo[key] = make()
        return cast(T, self._memo[key])

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult | None:
        """Run a command found on the view's PATH (once per view; later calls get the same
        result); None when it is not there or cannot start."""
        key = tuple(argv)
        if key in self._commands:
            return self._commands[key]
        exe = self.which(argv[0])
        result = None
        if exe is not None:
            env = dict(self.env)
            if self.path is not None:
                env["PATH"] = self.path
            try:
                result = run_command([exe, *argv[1:]], timeout or self.timeout, env)
            except OSError:
                result = None
        self._commands[key] = result
        return result
