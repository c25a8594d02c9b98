"""Engine processes: started in a session of their own, logged with rotation, stopped whole.

An engine is rarely one process. vLLM forks an engine core and, with tensor
parallelism, one worker per GPU; a worker whose parent is killed is reparented
and keeps its GPU memory. So every process of the engine's tree is remembered
(pid and start time, so that a reused pid is never mistaken for it) from the
moment it is seen, and a stop ends with every one of them gone:

1. SIGTERM to the engine's process group, then wait up to the grace period;
2. SIGKILL to the group;
3. SIGKILL to any remembered process still alive outside the group (orphans);
4. reap the engine and wait until none of them exists.

The engine's stdout and stderr go to a size-rotated log file in the state dir,
which labctl tails, so the caller can also watch them (startup phases, the
stall detector's last-output time) and the engine never depends on the daemon
staying alive to read a pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
import contextlib
from dataclasses import dataclass
import math
import os
from pathlib import Path
import shutil
import signal
import time
from typing import BinaryIO

from labctl.errors import EngineError
from labctl.gpu.procs import ProcStat, read_stat, tree
from labctl.home import private_dir
from labctl.secrets import redact_argv

#: Every engine the lab starts carries ``ENGINE_MARK=<its LABCTL_HOME>`` in its environment
#: (and so do the workers it forks), so that the lab finds its processes even when no journal
#: row names them (spawned the instant before a daemon was killed, or orphaned).
ENGINE_MARK = "LABCTL_ENGINE_OF"
LOG_MAX_BYTES = 16 * 2**20
LOG_KEEP = 3


class RotatingLog:
    """An engine's log file: the engine writes to it directly, labctl tails and rotates it.

    The engine's stdout and stderr are this file (opened for appending), not a pipe
    to the daemon, so an engine outlives a daemon that dies and can be adopted by
    the next one. Past ``max_bytes`` the file is copied to ``.1`` (older copies
    shift up to ``.{keep}``) and truncated in place, which the engine's appending
    descriptor follows.
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        private_dir(path.parent)
        self.fh = _open_private(path)
        self._offset = self.fh.tell()

    def _shift(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))

    def rotate(self) -> None:
        """Start a new file (at each engine start): the current one becomes ``.1``."""
        self.fh.close()
        self._shift()
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.fh = _open_private(self.path)
        self._offset = 0

    def _copy_truncate(self) -> None:
        self._shift()
        older = self.path.with_name(f"{self.path.name}.1")
        shutil.copyfile(self.path, older)
        older.chmod(0o600)
        os.truncate(self.path, 0)
        self._offset = 0

    def write(self, data: bytes) -> None:
        """A line of labctl's own (start, stop, adoption), kept in order with the engine's."""
        if self.fh.closed:
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        if size and size + len(data) > self.max_bytes:
            self._copy_truncate()
        self.fh.write(data)
        self.fh.flush()

    def skip(self) -> None:
        """Tail from the end as it is now (past labctl's own note)."""
        self._offset = self.path.stat().st_size

    def poll(self) -> bytes:
        """What the engine wrote since the last call (rotating the file when it grew too big)."""
        try:
            with open(self.path, "rb") as rd:
                rd.seek(self._offset)
                data = rd.read()
        except FileNotFoundError:
            return b""
        self._offset += len(data)
        if self._offset > self.max_bytes:
            self._copy_truncate()
        return data

    def close(self) -> None:
        self.fh.close()  # idempotent


def _open_private(path: Path) -> BinaryIO:
    """Open a log for appending, readable by its owner only (engines log prompts and paths)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


@dataclass(frozen=True)
class StopReport:
    """How a stop went."""

    #: The engine exited on SIGTERM within the grace period.
    graceful: bool
    exit_code: int | None
    seconds: float
    #: Processes of the engine's tree that outlived it and had to be killed on their own.
    orphans_killed: tuple[int, ...]


#: Seconds every startup phase may take besides reading weights (profiling, CUDA graphs,
#: the API server), and the disk read rate assumed before any start has measured one.
PHASE_ALLOWANCE_S, DEFAULT_READ_RATE = 60.0, 250e6


def startup_budget(weight_bytes: int, phases: int = 4, read_rate: float | None = None) -> float:
    """Seconds an engine may take to become ready: a fixed allowance per startup phase, plus
    twice the time its weights take to read at ``read_rate`` bytes/s (a cold network disk
    can be several times slower than a warm page cache)."""
    rate = read_rate if read_rate and read_rate > 0 else DEFAULT_READ_RATE
    return PHASE_ALLOWANCE_S * max(phases, 1) + 2 * weight_bytes / rate


class EngineProcess:
    """One engine process tree; all methods run on the event loop that started it."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not argv:
            raise EngineError("an engine needs a command to run")
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self.clock = clock
        self.log = RotatingLog(log_path)
        self.proc: asyncio.subprocess.Process | None = None
        #: An engine found running (started by an earlier daemon): pid and start time.
        self._adopted: tuple[int, float] | None = None
        self._stopped: StopReport | None = None
        self.started_at = 0.0
        self.last_output = 0.0
        #: Every process seen in the tree: pid → start time.
        self.members: dict[int, float] = {}
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    def adopt(
        cls, pid: int, start: float, log_path: Path, clock: Callable[[], float] = time.monotonic
    ) -> EngineProcess:
        """Take over an engine that an earlier daemon started (its output is not ours to read).

        Raises:
            EngineError: no such process, or the pid now belongs to another process.
        """
        st = read_stat(pid)
        if st is None or not st.alive or st.start != start:
            raise EngineError(f"engine process {pid} is gone (or its pid was reused)")
        engine = cls(["<adopted>"], log_path, clock=clock)
        engine._adopted = (pid, start)
        engine.members[pid] = start
        engine.started_at = engine.last_output = clock()
        engine.log.write(f"--- labctl: adopted running engine pid {pid}\n".encode())
        return engine

    @property
    def pid(self) -> int | None:
        if self._adopted is not None:
            return self._adopted[0]
        return self.proc.pid if self.proc is not None else None

    @property
    def start_time(self) -> float | None:
        """The engine process's start time as ``/proc`` gives it (with the pid, its identity)."""
        pid = self.pid
        return None if pid is None else self.members.get(pid)

    @property
    def returncode(self) -> int | None:
        """The exit code; for an adopted engine (not our child) -1 once it has gone."""
        if self._adopted is not None:
            pid, start = self._adopted
            st = read_stat(pid)
            return None if st is not None and st.alive and st.start == start else -1
        return self.proc.returncode if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.pid is not None and self.returncode is None

    def silent_for(self) -> float:
        """Seconds since the engine last wrote a line (the stall detector's reading)."""
        return self.clock() - self.last_output

    async def start(self) -> int:
        """Start the engine in a new session; returns its pid.

        Raises:
            EngineError: the command cannot be run (missing, not executable).
        """
        if self.pid is not None:
            raise EngineError("this engine process was already started")
        self.log.rotate()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.log.write(f"--- labctl: starting {redact_argv(self.argv)} at {stamp}\n".encode())
        self.log.skip()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self.log.fh,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.log.write(f"--- labctl: cannot start: {exc}\n".encode())
            self.close()
            raise EngineError(
                f"cannot start {self.argv[0]!r}: {exc.strerror or exc}; check the engine's "
                "command (is it installed and on PATH?)"
            ) from exc
        self.started_at = self.last_output = self.clock()
        self.members[self.proc.pid] = _start_of(self.proc.pid)
        self._pump = asyncio.create_task(self._read_output())
        return self.proc.pid

    async def _read_output(self) -> None:
        """Tail the log: each line to ``on_line``, and when the engine last wrote."""
        partial = b""
        while True:
            data = self.log.poll()
            if data:
                self.last_output = self.clock()
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                if self.on_line is not None:
                    for line in lines:
                        self.on_line(line.decode(errors="replace"))
            await asyncio.sleep(0.05)

    def track(self) -> list[ProcStat]:
        """Remember the tree's current processes; returns them (the engine itself excluded)."""
        pid = self.pid
        if pid is None:
            return []
        now = tree(pid)
        for st in now:
            self.members.setdefault(st.pid, st.start)
        return now

    def identity(self) -> dict[int, float]:
        """Every remembered process still alive → its start time: what a journal step records
        before it acts, so that a daemon killed mid-act leaves enough to finish the job."""
        self.track()
        return {pid: self.members[pid] for pid in self.alive_members()}

    def alive_members(self) -> list[int]:
        """Remembered processes that still exist as the same incarnation."""
        out = []
        for pid, start in self.members.items():
            st = read_stat(pid)
            if st is not None and st.alive and st.start == start:
                out.append(pid)
        return out

    async def wait(self, limit: float | None = None, poll: float = 0.01) -> int | None:
        """The engine process's exit code once it exits; ``None`` if ``limit`` s pass first.

        Polls the return code: asyncio's ``Process.wait()`` also waits for the output
        pipe to close, which a surviving worker can hold open indefinitely.
        """
        assert self.pid is not None
        deadline = None if limit is None else self.clock() + limit
        while (code := self.returncode) is None:
            if deadline is not None and self.clock() >= deadline:
                return None
            await asyncio.sleep(poll)
        return code

    async def _stop_tailing(self) -> None:
        """Take the last lines the engine wrote, then stop following its log."""
        if self._pump is None:
            return
        await asyncio.sleep(0.06)  # one more poll
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    def kill(self) -> None:
        """SIGKILL the whole tree now, without waiting (a forced shutdown)."""
        for pid in self.alive_members():
            self._signal(pid, signal.SIGKILL)
        if self.pid is not None:
            _signal_group(self.pid, signal.SIGKILL)

    async def stop(self, grace: float = 10.0, settle: float = 5.0) -> StopReport:
        """Stop the whole tree (see the module doc); safe to call when it already exited.

        Raises:
            EngineError: a process of the tree still exists ``settle`` s after SIGKILL
                (stuck in the kernel, e.g. on a hung GPU driver).
        """
        begun = self.clock()
        pid = self.pid
        if pid is None:
            return StopReport(True, None, 0.0, ())
        if self._stopped is not None:
            return self._stopped  # stopped already: nothing of it is left
        self.track()
        graceful = True
        if self.returncode is None:
            self._signal(pid, signal.SIGTERM)
            graceful = await self.wait(grace) is not None
        self.track()  # workers may have been started while it was shutting down
        if self.returncode is None:
            self._signal(pid, signal.SIGKILL)
        _signal_group(pid, signal.SIGKILL)  # what is left of the group, if anything
        code = await self.wait(settle)
        orphans = tuple(p for p in self.alive_members() if p != pid)
        for p in orphans:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        deadline = self.clock() + settle
        while True:
            left = [p for p in self.alive_members() if p != pid or code is None]
            if not left or self.clock() >= deadline:
                break
            await asyncio.sleep(0.02)
        await self._stop_tailing()
        self.log.write(
            f"--- labctl: stopped (exit {code}, {'SIGTERM' if graceful else 'SIGKILL'}"
            f"{f', killed orphans {list(orphans)}' if orphans else ''})\n".encode()
        )
        self.close()
        if left:
            raise EngineError(
                f"processes {left} of the engine did not exit {settle:g} s after SIGKILL; "
                "they may be stuck in the GPU driver (check `nvidia-smi` and dmesg)"
            )
        self._stopped = StopReport(
            graceful and code is not None, code, self.clock() - begun, orphans
        )
        return self._stopped

    def close(self) -> None:
        self.log.close()

    def _signal(self, pid: int, sig: int) -> None:
        """``sig`` to the engine's group and to the engine itself (an adopted process may be a
        worker whose group leader is gone), the latter only while it is the same process."""
        _signal_group(pid, sig)
        st = read_stat(pid)
        if st is not None and st.alive and st.start == self.members.get(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _start_of(pid: int) -> float:
    st = read_stat(pid)
    return float(st.start) if st is not None else 0.0


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Backoff:
    """Restart delays for an engine that dies outside a deploy: 1, 2, 4, … up to ``cap`` s.

    A run that stayed up for ``stable`` s resets the sequence.
    """

    first: float = 1.0
    cap: float = 60.0
    stable: float = 300.0
    failures: int = 0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.stable:
            self.failures = 0
        delay = min(self.cap, math.ldexp(self.first, self.failures))
        self.failures += 1
        return delay
