"""Which deployment holds each byte of GPU memory.

A GPU process belongs to a deployment when the deployment's engine process is
the process itself or one of its ancestors. The table of engine pids comes from
the runtime (for now from ``$LABCTL_HOME/owners.json``). A process outside
every deployment's tree, such as a worker orphaned by a killed engine (it is
re-parented to init), a desktop compositor or someone's notebook, is
*unaccounted*, and so is device memory no process accounts for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import json
from pathlib import Path

from labctl.errors import ConfigError, UsageError
from labctl.gpu.procs import ProcStat, ancestors, read_stat
from labctl.gpu.sample import GpuReading

#: The deployment label of memory that no deployment accounts for.
UNACCOUNTED = "unaccounted"


@dataclass(frozen=True)
class OwnedProcess:
    gpu: int
    pid: int
    used_bytes: int | None
    #: The deployment whose process tree holds it, or ``None``.
    deployment: str | None
    #: The process's short name (``python3``, ``llama-server``), empty if not visible here.
    process: str


@dataclass(frozen=True)
class GpuOwners:
    gpu: int
    processes: tuple[OwnedProcess, ...]
    #: Bytes per deployment on this GPU.
    by_deployment: dict[str, int]
    #: Memory held by no known deployment: processes outside every tree, plus used
    #: device memory that no process accounts for. ``None`` when used is unknown.
    unaccounted_bytes: int | None


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    #: Parent, grandparent, … up to init.
    ancestors: tuple[int, ...]


class ProcessInspector:
    """Name and ancestry of processes this host can see, each read once per tick."""

    def __init__(self) -> None:
        self._stats: dict[int, ProcStat | None] = {}

    def __call__(self, pid: int) -> ProcessInfo | None:
        if pid not in self._stats:
            self._stats[pid] = read_stat(pid)
        st = self._stats[pid]
        if st is None:
            return None
        return ProcessInfo(st.name, ancestors(pid, self._stats))


def attribute(
    reading: GpuReading,
    owners: Mapping[int, str],
    inspect: Callable[[int], ProcessInfo | None] | None = None,
) -> dict[int, GpuOwners]:
    """Map every GPU process to its deployment and total what is unaccounted.

    Args:
        inspect: name and ancestry of a pid (default: read from this host, once per call).
    """
    if inspect is None:
        inspect = ProcessInspector()
    seen: dict[int, ProcessInfo | None] = {}
    out: dict[int, GpuOwners] = {}
    for dev in reading.devices:
        procs = []
        by_dep: dict[str, int] = {}
        loose = 0
        for gp in dev.processes:
            if gp.pid not in seen:
                seen[gp.pid] = inspect(gp.pid)
            info = seen[gp.pid]
            dep = owners.get(gp.pid)
            if dep is None and info is not None:
                dep = next((owners[a] for a in info.ancestors if a in owners), None)
            procs.append(
                OwnedProcess(dev.index, gp.pid, gp.used_bytes, dep, info.name if info else "")
            )
            if dep is not None:
                by_dep[dep] = by_dep.get(dep, 0) + (gp.used_bytes or 0)
            else:
                loose += gp.used_bytes or 0
        unaccounted: int | None = loose
        if dev.memory_source == "device":
            if dev.memory_used_bytes is None:
                unaccounted = None
            else:
                listed = sum(p.used_bytes or 0 for p in dev.processes)
                unaccounted = loose + max(0, dev.memory_used_bytes - listed)
        out[dev.index] = GpuOwners(dev.index, tuple(procs), by_dep, unaccounted)
    return out


def read_owners(path: Path) -> dict[int, str]:
    """The pid → deployment table the runtime writes: ``{"pids": {"4242": "chat"}}``.

    A missing file is an empty table.

    Raises:
        ConfigError: the file is not such a table.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON ({exc}); fix or delete it") from exc
    pids = doc.get("pids") if isinstance(doc, dict) else None
    if not isinstance(pids, dict):
        raise ConfigError(f'{path} must hold {{"pids": {{"<pid>": "<deployment>"}}}}')
    table = {}
    for key, name in pids.items():
        if not str(key).isdigit() or not isinstance(name, str) or not name:
            raise ConfigError(
                f"{path}: pids.{key} = {name!r}; keys are process ids, values deployment names"
            )
        table[int(key)] = name
    return table


def parse_owner_flags(values: tuple[str, ...] | list[str]) -> dict[int, str]:
    """``--owner 4242=chat`` flags as a pid → deployment table."""
    table = {}
    for v in values:
        pid, sep, name = v.partition("=")
        if not sep or not pid.strip().isdigit() or not name.strip():
            raise UsageError(f"--owner {v!r}: write PID=DEPLOYMENT, e.g. --owner 4242=chat")
        if name.strip() == UNACCOUNTED:
            raise UsageError(f"--owner {v!r}: {UNACCOUNTED!r} is reserved; pick another name")
        table[int(pid)] = name.strip()
    return table
