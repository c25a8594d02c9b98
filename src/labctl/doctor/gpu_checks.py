"""Checks of each GPU: that it reads, persistence mode, Xid errors and page retirement, the PCIe
link and clock slowdowns, unified memory (GB10), memory other processes hold, and whether the
lab's vLLM deployments fit the GPU they name (the planner, as ``labctl fit``).

Each finding is placed at "gpu N" (the lab's deployments at "lab: deployment NAME"). NVML is
read once for all of them (:func:`~labctl.doctor.nvidia.nvidia`); without a driver each check
skips and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import re
from typing import Any

from labctl.cache.resolve import resolve_model
from labctl.catalog.gpus import GpuSpec, gpu, match_nvml_name
from labctl.config import DeploymentSpec, sim_gpu_ids
from labctl.doctor.finding import Context, Finding, Severity, Skip, check
from labctl.doctor.host import HostView
from labctl.doctor.nvidia import clip, gib, meminfo, nvidia
from labctl.engines.vllm import FIT_FLAGS, model_kind
from labctl.errors import LabError
from labctl.fit.plan import FitRequest, plan
from labctl.gpu.sim import DEFAULT_SIM_GPUS

_RANK: dict[Severity, int] = {"ok": 0, "info": 1, "warn": 2, "fail": 3}
#: Clock event reasons that mean the hardware slowed the GPU down (NVML's bits).
SLOWDOWN = {0x8: "hardware slowdown", 0x20: "software thermal slowdown",
            0x40: "hardware thermal slowdown", 0x80: "hardware power brake"}  # fmt: skip
#: Retired pages at which DCGM fails a GPU (it passes 59).
RETIRED_LIMIT = 60
XID = re.compile(r"NVRM: Xid \(PCI:([^)]*)\): (\d+)")
#: Xid → (severity, what it means, what to do); the rest are warn with the generic remedy.
XIDS: dict[int, tuple[Severity, str, str]] = {
    13: ("info", "graphics engine exception (an application's fault)", "restart the application"),
    31: ("info", "GPU memory page fault (an application's bad access)", "restart the application"),
    43: ("info", "GPU stopped processing (an application's fault)", "restart the application"),
    48: ("warn", "double-bit ECC error", "reset the GPU (`sudo nvidia-smi -r -i {i}`) or reboot; "
         "RMA it if it recurs"),
    63: ("warn", "page retirement or row remap recorded", "reset the GPU (`sudo nvidia-smi -r "
         "-i {i}`) or reload the driver to apply it"),
    64: ("warn", "page retirement or row remap failed", "reset the GPU (`sudo nvidia-smi -r -i {i}`) "
         "and run a field diagnostic; RMA it if it recurs"),
    74: ("warn", "NVLink error", "reset the GPUs or reboot; check the NVLink bridges"),
    79: ("fail", "GPU has fallen off the bus", "check the card's power cables and seating, then "
         "reboot; if it recurs, capture `nvidia-bug-report.sh` and RMA it"),
    92: ("warn", "high single-bit ECC error rate", "watch it; RMA the GPU if it keeps rising"),
    94: ("warn", "contained ECC error", "restart the application that hit it"),
    95: ("fail", "uncontained ECC error", "reset the GPU (`sudo nvidia-smi -r -i {i}`) or reboot; "
         "RMA it if it recurs"),
    119: ("warn", "GSP timeout", "reset the GPU or reboot"),
    120: ("warn", "GSP error", "reset the GPU or reboot"),
}  # fmt: skip
OTHER_XID: tuple[Severity, str, str] = (
    "warn",
    "see NVIDIA's Xid catalog",
    "reset the GPU or reboot; NVIDIA's Xid catalog says more",
)


@check("gpu-reads", "gpu", "Each GPU reads through NVML",
       """Reads every GPU through NVML (name, memory, compute capability) and says what it is;
       a GPU that cannot be read (NVMLError_GpuIsLost: fallen off the bus) fails. Fix: power
       and seating, then a reboot.""")  # fmt: skip
def gpu_reads(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    out = []
    for g in nv.require_gpus():
        if g.lost is not None:
            out.append(Finding("gpu-reads", "fail", g.place, f"GPU {g.index} cannot be read",
                               clip(f"nvmlDeviceGetName({g.index}): {g.lost}"),
                               "check the card's power and seating and reboot; the kernel log "
                               "(`dmesg | grep NVRM`) says why (Xid 79: fallen off the bus)"))  # fmt: skip
            continue
        mem = gib(g.memory_total) if g.memory_total is not None else "unified memory"
        cc = f"compute capability {g.cc[0]}.{g.cc[1]}" if g.cc else "compute capability ?"
        out.append(Finding("gpu-reads", "ok", g.place,
                           f"{g.name}, driver {nv.driver}, {mem}, {cc}",
                           clip(f"NVML: {g.name} at {g.bus_id or '?'}")))  # fmt: skip
    return out


@check("persistence-off", "gpu", "Persistence mode off",
       """Reads nvmlDeviceGetPersistenceMode. With it off the driver tears the GPU down when
       the last program exits: the first CUDA call of the next is slow and settings are
       lost. Fix: `sudo nvidia-smi -i N -pm 1`, or enable nvidia-persistenced.""",
       rows=(24,))  # fmt: skip
def persistence_off(ctx: Context) -> list[Finding]:
    out = []
    for g in nvidia(ctx.host).require_gpus():
        if g.persistence is None:
            continue
        evidence = f"nvmlDeviceGetPersistenceMode({g.index}): {g.persistence}"
        if g.persistence:
            out.append(
                Finding("persistence-off", "ok", g.place, "persistence mode is on", evidence)
            )
        else:
            out.append(Finding("persistence-off", "warn", g.place,
                               "persistence mode is off: the driver unloads the GPU between "
                               "programs, so each engine start pays the GPU's initialisation",
                               evidence, f"`sudo nvidia-smi -i {g.index} -pm 1`, or "
                               "`sudo systemctl enable --now nvidia-persistenced`"))  # fmt: skip
    if not out:
        raise Skip("NVML reports no persistence mode for any GPU")
    return out


def _bus(address: str) -> str:
    """The bus and device of a PCI address ("0000:01:00", "00000000:01:00.0" → "01:00")."""
    parts = address.split(".")[0].lower().split(":")
    return ":".join(parts[-2:])


def _kernel_log(host: HostView) -> tuple[str, str]:
    """(the kernel log of this boot, where it came from).

    Raises:
        Skip: none readable.
    """
    tried = []
    for argv in (["dmesg"], ["journalctl", "-k", "-b", "-n", "5000", "--no-pager"]):
        res = host.run(argv)
        lines = [ln for ln in (res.stdout if res else "").splitlines() if ln.strip()]
        if res is not None and res.returncode == 0 and lines and lines != ["-- No entries --"]:
            return res.stdout, " ".join(argv)
        why = "not on PATH" if res is None else res.stderr.strip() or f"exit {res.returncode}"
        tried.append(f"{argv[0]}: {clip(why, 60)}")
    text = host.read("/var/log/kern.log", tail=True)
    if text:
        boot = max(text.rfind("] Linux version "), text.rfind("kernel: Linux version "))
        return (text[boot:] if boot >= 0 else text), "/var/log/kern.log"
    tried.append("/var/log/kern.log: not readable")
    raise Skip(f"no kernel log readable ({'; '.join(tried)})")


def _xid(xid: int, times: int) -> str:
    meaning = XIDS.get(xid, OTHER_XID)[1]
    return f"Xid {xid} ({meaning})" + (f" x{times}" if times > 1 else "")


@check("xid-errors", "gpu", "Xid errors in the kernel log",
       """Scans this boot's kernel log (dmesg, else journalctl -k, else /var/log/kern.log)
       for "NVRM: Xid (PCI:…): N" and maps each to its GPU and meaning: 79 (fallen off the
       bus; a warning where the GPU reads through NVML now) and 95 (uncontained ECC) fail; an
       Xid of a GPU NVML does not list (a container reads its host's log) is info; 48
       (double-bit ECC), 63/64 (page retirement), 94
       and others warn; 13/31/43 are an application's own faults (info). Fix: per Xid, from
       restarting the application to resetting the GPU or an RMA.""",
       rows=(25,))  # fmt: skip
def xid_errors(ctx: Context) -> list[Finding]:
    gpus = nvidia(ctx.host).require_gpus()
    text, source = _kernel_log(ctx.host)
    by_bus = {_bus(g.bus_id): g for g in gpus if g.bus_id}
    lost = [g for g in gpus if g.lost]  # NVML gives no address for these
    seen: dict[str, dict[int, int]] = {}
    lines: dict[str, str] = {}
    for line in text.splitlines():
        m = XID.search(line)
        if m:
            bus = _bus(m.group(1))
            g = by_bus.get(bus) or (lost[0] if len(lost) == 1 else None)
            # a lost GPU's own, when several are lost; else a GPU not here, by its address
            key = g.place if g else "gpu" if lost else f"PCI {bus}"
            counts = seen.setdefault(key, {})
            counts[int(m.group(2))] = counts.get(int(m.group(2)), 0) + 1
            lines[key] = line
    out = []
    places = {g.place: g for g in gpus}
    for g in gpus:
        if g.place not in seen:
            out.append(Finding("xid-errors", "ok", g.place, "no Xid error in this boot's kernel "
                               "log", f"{source}: no 'NVRM: Xid' line for PCI {g.bus_id}"))  # fmt: skip
    for key, counts in seen.items():
        told = ", ".join(_xid(x, counts[x]) for x in sorted(counts))
        evidence = clip(f"{source}: {lines[key]}")
        g = places.get(key)
        if g is None and key != "gpu":  # a container can read its host's log: another's GPU
            out.append(Finding("xid-errors", "info", "host",
                               f"kernel log since boot: {told} on {key}, a GPU NVML does not "
                               "list here (another container's or VM's, or one since removed)",
                               evidence, "nothing to do for the GPUs here"))  # fmt: skip
            continue
        back = g is not None and not g.lost  # off the bus then, read now: it was brought back
        sev: dict[int, Severity] = {
            x: "warn" if x == 79 and back else XIDS.get(x, OTHER_XID)[0] for x in counts
        }
        worst = max(counts, key=lambda x: (_RANK[sev[x]], counts[x]))
        message = f"kernel log since boot: {told}"
        if worst == 79 and back and g is not None:
            message += f"; GPU {g.index} reads through NVML now"
        fix = XIDS.get(worst, OTHER_XID)[2]
        out.append(Finding("xid-errors", sev[worst], key, message, evidence,
                           fix.format(i=g.index if g else "N")))  # fmt: skip
    return out


@check("retired-pages", "gpu", "Pending page retirement, row remap failure, retired pages",
       """Reads nvmlDeviceGetRetiredPagesPendingStatus, nvmlDeviceGetRetiredPages and
       nvmlDeviceGetRemappedRows. A retirement or row remap pending until the GPU is reset,
       a row remap failure, or 60+ retired pages fail (as DCGM's software test). Fix: reset
       the GPU or reboot; an RMA when remapping failed or the pages ran out.""",
       rows=(25,))  # fmt: skip
def retired_pages(ctx: Context) -> list[Finding]:
    out = []
    for g in nvidia(ctx.host).require_gpus():
        rows, pending, retired = g.remapped_rows, g.retired_pending, g.retired_pages
        if rows is None and pending is None and retired is None:
            continue
        evidence = clip(f"nvmlDeviceGetRemappedRows({g.index}): {list(rows) if rows else 'n/a'}; "
                        f"RetiredPagesPendingStatus: {pending if pending is not None else 'n/a'}; "
                        f"retired pages: {retired if retired is not None else 'n/a'}")  # fmt: skip
        reset = (f"reset the GPU with nothing running on it (`sudo nvidia-smi -r -i {g.index}`) "
                 "or reboot, so the driver applies it")  # fmt: skip
        if rows and rows[3]:
            out.append(Finding("retired-pages", "fail", g.place, "a row remap failed: the memory "
                               "has errors the GPU cannot repair", evidence,
                               "run a field diagnostic and RMA the GPU (capture "
                               "`nvidia-bug-report.sh` for the case)"))  # fmt: skip
        elif (rows and rows[2]) or pending:
            out.append(Finding("retired-pages", "fail", g.place, "a page retirement or row remap "
                               "is pending until the GPU is reset", evidence, reset))  # fmt: skip
        elif retired is not None and retired >= RETIRED_LIMIT:
            out.append(Finding("retired-pages", "fail", g.place, f"{retired} pages retired: at "
                               f"the limit of {RETIRED_LIMIT}", evidence,
                               "RMA the GPU (capture `nvidia-bug-report.sh` for the case)"))  # fmt: skip
        else:
            out.append(Finding("retired-pages", "ok", g.place, "no retirement or row remap "
                               "pending, no remap failure", evidence))  # fmt: skip
    if not out:
        raise Skip("NVML reports neither retired pages nor remapped rows for any GPU "
                   "(GeForce cards report neither)")  # fmt: skip
    return out


@check("pcie-link", "gpu", "PCIe link below its maximum, or hardware slowdown",
       """Compares the PCIe link's current width and generation with the maximum (NVML) and
       reads the clock event reasons. A narrower link warns; a lower generation warns only
       when the GPU is busy (over 50 %), as idle links drop their generation by design;
       hardware slowdown, thermal slowdown and power brake warn. Fix: reseat the card, check
       the BIOS lane settings and risers, cooling and power.""",
       rows=(26,))  # fmt: skip
def pcie_link(ctx: Context) -> list[Finding]:
    out = []
    for g in nvidia(ctx.host).require_gpus():
        if g.pcie_gen is None and g.pcie_width is None and g.clock_reasons is None:
            continue
        problems: list[tuple[str, str]] = []
        notes = []
        if g.pcie_width and g.pcie_max_width and g.pcie_width < g.pcie_max_width:
            problems.append((f"the PCIe link runs x{g.pcie_width} of x{g.pcie_max_width}",
                             f"reseat GPU {g.index} in a x{g.pcie_max_width} slot and check the "
                             "BIOS lane settings (bifurcation) and riser cables"))  # fmt: skip
        if g.pcie_gen and g.pcie_max_gen and g.pcie_gen < g.pcie_max_gen:
            busy = (g.util_percent or 0) > 50
            if busy:
                problems.append((f"the PCIe link runs Gen{g.pcie_gen} of Gen{g.pcie_max_gen} "
                                 f"under load ({g.util_percent} % busy)",
                                 "check the BIOS PCIe generation setting, the slot and risers"))  # fmt: skip
            else:
                notes.append(f"Gen{g.pcie_gen} of Gen{g.pcie_max_gen} while idle (links save "
                             "power at idle; look again under load)")  # fmt: skip
        slow = [name for bit, name in SLOWDOWN.items() if (g.clock_reasons or 0) & bit]
        if slow:
            problems.append((f"clocks held down: {', '.join(slow)}",
                             "check cooling (fans, airflow, temperature) and power delivery "
                             "(PSU cables); `nvidia-smi -q -d PERFORMANCE` shows the reasons"))  # fmt: skip
        link = (f"Gen{g.pcie_gen}/{g.pcie_max_gen or '?'} x{g.pcie_width}/{g.pcie_max_width or '?'}"
                if g.pcie_gen else "no PCIe link reported")  # fmt: skip
        evidence = clip(f"NVML link {link}; clock event reasons "
                        f"{hex(g.clock_reasons) if g.clock_reasons is not None else 'n/a'}; "
                        f"utilization {g.util_percent if g.util_percent is not None else '?'} %")  # fmt: skip
        if problems:
            out.append(Finding("pcie-link", "warn", g.place,
                               "; ".join(p for p, _ in problems), evidence, problems[0][1]))  # fmt: skip
        else:
            out.append(Finding("pcie-link", "ok", g.place,
                               "; ".join([f"PCIe {link}, no hardware slowdown", *notes]), evidence))  # fmt: skip
    if not out:
        raise Skip("NVML reports no PCIe link or clock reasons for any GPU")
    return out


@check("unified-memory", "gpu", "Unified memory (GB10): the GPU's memory is the host's",
       """A GPU whose NVML memory reads Not Supported (NVIDIA GB10, DGX Spark) shares the
       host's RAM: its memory is /proc/meminfo's MemTotal and MemAvailable, and the page cache
       competes with CUDA (NV_ERR_NO_MEMORY at KV allocation). Not an error: an info finding
       with the advice (gpu_memory_utilization 0.85-0.90 at most, drop caches before a
       model swap).""",
       rows=(27,))  # fmt: skip
def unified_memory(ctx: Context) -> list[Finding]:
    unified = [g for g in nvidia(ctx.host).require_gpus() if g.memory_total is None and not g.lost]
    if not unified:
        raise Skip("every GPU reports its own memory (no unified memory here)")
    mi = meminfo(ctx.host)
    total, avail = mi.get("MemTotal"), mi.get("MemAvailable")
    host = (f"{gib(total)} total, {gib(avail)} available" if total and avail is not None
            else "unknown (/proc/meminfo not readable)")  # fmt: skip
    return [Finding(
        "unified-memory", "info", g.place,
        f"{g.name} has unified memory: NVML reports no device memory, so the GPU's memory is "
        f"the host's ({host})",
        clip(f"nvmlDeviceGetMemoryInfo({g.index}): Not Supported; /proc/meminfo: MemTotal "
             f"{total}, MemAvailable {avail}"),
        "keep gpu_memory_utilization at 0.85-0.90 or below and drop the page cache before a "
        "model swap (`sync; echo 3 | sudo tee /proc/sys/vm/drop_caches`)",
    ) for g in unified]  # fmt: skip


def _state_dir(env: Mapping[str, str]) -> str:
    """``$LABCTL_HOME`` as the lab resolves it, from the view's environment."""
    if env.get("LABCTL_HOME"):
        return env["LABCTL_HOME"]
    base = env.get("XDG_STATE_HOME") or f"{env.get('HOME', '~')}/.local/state"
    return f"{base}/labctl"


def _lab_pids(host: HostView) -> set[int]:
    """The pids the lab's runtime says are its engines' (``owners.json``)."""
    try:
        doc = json.loads(host.read(f"{_state_dir(host.env)}/owners.json") or "{}")
    except ValueError:
        return set()
    pids = doc.get("pids") if isinstance(doc, dict) else None
    return {int(k) for k in pids if str(k).isdigit()} if isinstance(pids, dict) else set()


def _owned(host: HostView, pid: int, lab: set[int]) -> bool:
    """Whether ``pid`` or one of its ancestors is one of the lab's engines."""
    for _ in range(64):
        if pid in lab:
            return True
        stat = host.read(f"/proc/{pid}/stat", 4096) or ""
        fields = stat.rpartition(")")[2].split()
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) <= 1:
            return False
        pid = int(fields[1])
    return False


def _vllm_on(ctx: Context, index: int) -> list[tuple[DeploymentSpec, float]]:
    """The lab's vLLM deployments on real GPU ``index`` and their gpu_memory_utilization."""
    lab = ctx.lab
    if lab is None or lab.sim_gpus or lab.gpu_backend == "sim":
        return []
    out = []
    for d in lab.deployments:
        if d.engine == "vllm" and index in d.gpus:
            args = {k.replace("-", "_"): v for k, v in d.args.items()}
            util = args.get("gpu_memory_utilization", 0.9)
            out.append((d, float(util) if isinstance(util, int | float) else 0.9))
    return out


@check("gpu-memory-held", "gpu", "Another process holds GPU memory",
       """Lists each GPU's processes (nvmlDeviceGet{Compute,Graphics}RunningProcesses) that are
       not the lab's engines ($LABCTL_HOME/owners.json and their children), and compares free
       memory with what each configured vLLM deployment asks at start (gpu_memory_utilization
       x total): short of it, vLLM refuses with "Free memory on device … is less than desired
       GPU memory utilization" (fail); other holders alone warn. Fix: stop the holder, or
       lower gpu_memory_utilization (`labctl fit` plans it).""",
       rows=(12,))  # fmt: skip
def gpu_memory_held(ctx: Context) -> list[Finding]:
    gpus = nvidia(ctx.host).require_gpus()
    lab = _lab_pids(ctx.host)
    mi: dict[str, int] | None = None
    out = []
    for g in gpus:
        if g.lost:
            continue
        total, free, source = g.memory_total, g.memory_free, "nvmlDeviceGetMemoryInfo"
        if total is None:
            mi = mi if mi is not None else meminfo(ctx.host)
            total, free, source = mi.get("MemTotal"), mi.get("MemAvailable"), "/proc/meminfo"
        procs = g.processes or ()
        theirs = [(pid, used) for pid, used in procs if not _owned(ctx.host, pid, lab)]
        ours = sum(used or 0 for pid, used in procs if (pid, used) not in theirs)
        names = [f"pid {pid} ({(ctx.host.read(f'/proc/{pid}/comm', 256) or '?').strip()}, "
                 f"{gib(used) if used is not None else '? GiB'})" for pid, used in theirs]  # fmt: skip
        mem = f"free {gib(free)} of {gib(total)}" if total and free is not None else "memory n/a"
        evidence = clip(f"nvmlDeviceGet*RunningProcesses({g.index}): "
                        f"{', '.join(names) if names else 'none but the lab' if procs else 'none'}"
                        f"; {source}: {mem}")  # fmt: skip
        short = []
        if total and free is not None:
            have = free + ours
            short = [(d, u, have, total) for d, u in _vllm_on(ctx, g.index) if have < u * total]
        if short:
            d, util, have, total = short[0]
            fits = max(0.0, int(have / total * 100) / 100 - 0.01)
            holders = ", ".join(names) or "memory no process accounts for (another container?)"
            stop = f"stop {holders} (`kill {theirs[0][0]}`)" if theirs else f"free {holders}"
            out.append(Finding(
                "gpu-memory-held", "fail", g.place,
                f"deployment {d.name} will not start: Free memory on device ({have / 2**30:.2f}/"
                f"{total / 2**30:.2f} GiB) on startup is less than desired GPU memory "
                f"utilization ({util}, {util * total / 2**30:.2f} GiB)",
                evidence,
                f"{stop}, or lower deployment {d.name}'s gpu_memory_utilization to {fits:.2f} "
                f"(`labctl fit {d.model} --gpu-memory-utilization {fits:.2f}` checks it fits)",
            ))  # fmt: skip
        elif theirs:
            out.append(Finding("gpu-memory-held", "warn", g.place,
                               f"{len(theirs)} process(es) outside the lab hold memory on GPU "
                               f"{g.index}: {', '.join(names)}", evidence,
                               f"stop them if they are not needed (`kill {theirs[0][0]}`); vLLM "
                               "needs gpu_memory_utilization x total free when it starts"))  # fmt: skip
        else:
            out.append(Finding("gpu-memory-held", "ok", g.place,
                               f"no process outside the lab holds GPU memory ({mem})", evidence))  # fmt: skip
    if not out:
        raise Skip("no GPU could be read")
    return out


GpuChoice = tuple[str, GpuSpec | None, dict[str, Any]]


def _lab_gpus(ctx: Context) -> dict[int, GpuChoice]:
    """Index → (label, catalog entry, FitRequest overrides) for the GPUs the lab runs on."""
    lab = ctx.lab
    assert lab is not None
    if lab.sim_gpus or lab.gpu_backend == "sim":
        ids = sim_gpu_ids(lab.sim_gpus, "lab.sim_gpus") if lab.sim_gpus else list(DEFAULT_SIM_GPUS)
        return {i: (f"simulated {g}", gpu(g), {}) for i, g in enumerate(ids)}
    nv = nvidia(ctx.host)
    try:
        found = [g for g in nv.require_gpus() if not g.lost]
    except Skip:
        if lab.gpu_backend == "nvml":
            raise
        return {i: (f"simulated {g} (no NVIDIA GPU here)", gpu(g), {})
                for i, g in enumerate(DEFAULT_SIM_GPUS)}  # fmt: skip
    out: dict[int, GpuChoice] = {}
    for g in found:
        spec = match_nvml_name(g.name, g.memory_total)
        total = g.memory_total or (
            spec.cuda_total_bytes if spec else meminfo(ctx.host).get("MemTotal")
        )
        if not total:
            continue
        extra: dict[str, Any] = {"gpu_total_bytes": total}
        if spec is None:
            extra["gpu_name"] = g.name
            if g.cc:
                extra["gpu_compute_capability"] = g.cc
        out[g.index] = (f"GPU {g.index} ({g.name})", spec, extra)
    return out


@check("context-too-long", "lab", "A deployment's context does not fit the KV cache budget",
       """Plans each vllm and sim deployment as `labctl fit` does (the model from the catalog
       or the local cache, its flags: max_model_len, gpu_memory_utilization, kv_cache_dtype,
       tensor_parallel_size…) on the GPU it names: NVML's memory for real GPUs, the GPU
       catalog for simulated ones. A plan that does not fit fails, naming the largest
       max_model_len that does; vLLM would refuse with "To serve at least one request with the
       models's max seq len …". Fix: that max_model_len, or more memory (utilization, GPUs).""",
       rows=(13,))  # fmt: skip
def context_too_long(ctx: Context) -> list[Finding]:
    lab = ctx.lab
    if lab is None:
        raise Skip("no lab config: no deployments to plan")
    deps = [d for d in lab.deployments if d.engine in ("vllm", "sim") and d.model
            and model_kind(d.model) != "openvla"]  # fmt: skip
    if not deps:
        raise Skip("the lab has no vllm or sim deployment to plan")
    gpus = _lab_gpus(ctx)
    return [_plan(ctx, d, gpus) for d in deps]


def _plan(ctx: Context, d: DeploymentSpec, gpus: dict[int, GpuChoice]) -> Finding:
    place, model = f"lab: deployment {d.name}", str(d.model)
    index = d.gpus[0] if d.gpus else 0
    if index < 0:  # named by UUID or bus id: the lab resolves it when it starts
        return Finding("context-too-long", "info", place,
                       f"not planned: GPU {d.gpu_names[0]} is named by UUID or PCI bus id",
                       "the lab resolves it when it starts; `labctl fit --gpu` plans for a "
                       "card by name")  # fmt: skip
    if index not in gpus:
        return Finding("context-too-long", "info", place, f"not planned: GPU {index} is not here",
                       f"GPUs here: {', '.join(v[0] for v in gpus.values()) or 'none'}")  # fmt: skip
    label, spec, extra = gpus[index]
    args = {k.replace("-", "_"): v for k, v in d.args.items()}
    fields = {k: args[k] for k in FIT_FLAGS if k in args}
    fields.setdefault("tensor_parallel_size", len(d.gpus) or 1)
    revision = args.get("revision")
    try:
        arch = resolve_model(model, ctx.lab.models if ctx.lab else None,
                             revision=str(revision) if revision else None, hub=False)  # fmt: skip
        res = plan(arch, FitRequest.on_gpu(spec, **(extra | fields)), suggest=False)
    except (LabError, TypeError, ValueError) as exc:
        return Finding("context-too-long", "info", place, f"not planned: {exc}",
                       clip(f"model {model} on {label}"),
                       f"`labctl models pull {model}` (or `labctl fit {model}`) while online")  # fmt: skip
    evidence = clip(f"planner: {model} on {label}, max_model_len {res.max_model_len:,}, "
                    f"gpu_memory_utilization {res.gpu_memory_utilization}, KV cache "
                    f"{res.kv_cache_tokens:,} tokens")  # fmt: skip
    if res.fits:
        return Finding("context-too-long", "ok", place,
                       f"{model} fits {label} with max_model_len {res.max_model_len:,} "
                       f"({res.kv_cache_tokens:,} tokens of KV cache)", evidence)  # fmt: skip
    reasons = "; ".join(res.reasons)
    if res.max_model_len_fit > 0:
        fix = (f"set max_model_len = {res.max_model_len_fit} in [deployments.{d.name}.args] (or "
               "raise gpu_memory_utilization, or add GPUs with tensor_parallel_size)")  # fmt: skip
    else:
        fix = (f"the weights alone do not fit: `labctl fit {model}` lists what does (a quantized "
               "variant, tensor_parallel_size over more GPUs)")  # fmt: skip
    return Finding("context-too-long", "fail", place,
                   f"{model} does not fit {label}: {reasons}", evidence, fix)  # fmt: skip
