"""Cheap reads of process identity: name, state, parent and start time.

The sampler asks about every GPU process and its ancestors once per tick, so
this reads ``/proc/<pid>/stat`` directly (one small read per process) rather
than going through psutil's per-attribute reads; elsewhere it falls back to
psutil. ``start`` identifies a process incarnation: the same pid with another
start is another process (the pid was reused).
"""

from __future__ import annotations

from dataclasses import dataclass
import os

import psutil

_PROC = "/proc"
_HAVE_PROC = os.path.isfile(f"{_PROC}/self/stat")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    name: str
    #: One letter as in ``/proc``: R running, S sleeping, Z zombie, …
    state: str
    ppid: int
    #: When the process started, in the platform's own units (clock ticks since boot on Linux).
    start: float

    @property
    def alive(self) -> bool:
        """A zombie has exited: the driver has already freed its memory."""
        return self.state not in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    """The process ``pid``, or ``None`` if it does not exist (or is not visible here)."""
    if pid <= 0:
        return None
    if _HAVE_PROC:
        try:
            with open(f"{_PROC}/{pid}/stat", "rb") as fh:
                raw = fh.read().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        head, _, tail = raw.rpartition(")")
        fields = tail.split()
        # After "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        # cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
        return ProcStat(pid, head.partition("(")[2], fields[0], int(fields[1]), float(fields[19]))
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            status = p.status()
            return ProcStat(
                pid,
                p.name(),
                "Z" if status == psutil.STATUS_ZOMBIE else "R",
                p.ppid(),
                p.create_time(),
            )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def ancestors(pid: int, stats: dict[int, ProcStat | None]) -> tuple[int, ...]:
    """Parent, grandparent, … of ``pid``; ``stats`` memoises reads within one tick."""
    chain: list[int] = []
    seen = {pid}
    current = pid
    while True:
        if current not in stats:
            stats[current] = read_stat(current)
        st = stats[current]
        if st is None or st.ppid <= 0 or st.ppid in seen:
            return tuple(chain)
        chain.append(st.ppid)
        seen.add(st.ppid)
        current = st.ppid
