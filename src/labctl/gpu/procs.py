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
    #: Session id: an engine started in a new session keeps its workers in it unless they
    #: leave on purpose (0 where unknown).
    session: int = 0

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
        return ProcStat(
            pid,
            head.partition("(")[2],
            fields[0],
            int(fields[1]),
            float(fields[19]),
            int(fields[3]),
        )
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
                os.getsid(pid),
            )
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
        return None


def cmdline(pid: int, limit: int = 120) -> str:
    """The process's command line, shortened to ``limit`` characters ("" if unreadable)."""
    try:
        if _HAVE_PROC:
            with open(f"{_PROC}/{pid}/cmdline", "rb") as fh:
                text = fh.read().replace(b"\0", b" ").decode(errors="replace")
        else:
            text = " ".join(psutil.Process(pid).cmdline())
    except (OSError, psutil.Error):
        return ""
    return text.strip()[:limit]


def all_pids() -> list[int]:
    """Every process id visible here."""
    if _HAVE_PROC:
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    return psutil.pids()


def marked(entry: str) -> list[ProcStat]:
    """Living processes whose environment holds ``entry`` (``NAME=value``), exactly.

    The runtime gives every engine it starts such a mark; children inherit it, so a
    worker whose parent died (or an engine spawned just before its daemon was killed,
    not yet journaled) is still found. Only this user's processes can be read.
    """
    if not _HAVE_PROC:
        return []
    want = entry.encode()
    out = []
    for pid in all_pids():
        try:
            with open(f"{_PROC}/{pid}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if want in env.split(b"\0") and (st := read_stat(pid)) is not None and st.alive:
            out.append(st)
    return out


def tree(root: int) -> list[ProcStat]:
    """``root``'s living descendants and the other members of its session (not ``root``).

    Workers that were reparented when their parent died still count while they
    stay in the session the engine was started in.
    """
    stats = {pid: st for pid in all_pids() if (st := read_stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    found |= {st.pid for st in stats.values() if st.session == root}
    found.discard(root)
    return [stats[pid] for pid in sorted(found) if stats[pid].alive]


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
