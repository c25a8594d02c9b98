"""Checks of the host: Secure Boot against the nvidia module, nvidia_uvm, the limits engines
run under, transparent hugepages, memory and the clock; the model cache's own checks are in
:mod:`~labctl.doctor.cache_checks`, registered with these.

Every read goes through the context's :class:`~labctl.doctor.host.HostView`: files under its
root, commands on its PATH, its rlimit source and clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
import resource

from labctl.config import DeploymentSpec, state_dir

# cache_checks: the model cache's checks, host checks too, registered with these.
from labctl.doctor import cache_checks, modelcache  # noqa: F401
from labctl.doctor.finding import Context, Finding, Skip, check
from labctl.doctor.host import HostView
from labctl.doctor.say import Say, clip
from labctl.home import lock_holder
from labctl.units import MiB, format_bytes

NVIDIA_VENDOR = "0x10de"
#: The EFI variable that says whether Secure Boot is on (its last byte: 1 on, 0 off).
EFI_SECURE_BOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e0984b8c"
#: What the kernel logs when Secure Boot refuses an unsigned module.
REJECTED = ("Loading of unsigned module is rejected", "Key was rejected by service")
KERNEL_LOGS = ("/var/log/kern.log", "/var/log/messages")
#: The open-files hard limit below which a busy vLLM runs out ("Too many open files").
WANT_NOFILE = 65536
#: The memlock limit below which llama.cpp's --mlock and RDMA (NCCL over InfiniBand) fail.
WANT_MEMLOCK = 64 * MiB
_LIMIT_ROWS = {
    resource.RLIMIT_NOFILE: "Max open files",
    resource.RLIMIT_MEMLOCK: "Max locked memory",
}
_INF = resource.RLIM_INFINITY


def modules(host: HostView) -> set[str] | None:
    """The loaded kernel modules (None: no ``/proc/modules`` to read)."""
    text = host.read("/proc/modules")
    if text is None:
        return None
    return {line.split(" ", 1)[0] for line in text.splitlines() if line.strip()}


def nvidia_loaded(host: HostView) -> bool | None:
    """Whether the nvidia kernel module is loaded (None: nothing here says)."""
    mods = modules(host)
    if host.exists("/proc/driver/nvidia/version") or (mods is not None and "nvidia" in mods):
        return True
    return None if mods is None else False


def nvidia_gpus(host: HostView) -> list[str]:
    """PCI addresses of NVIDIA display devices (vendor 0x10de, class 0x03…)."""
    found = []
    for bdf in host.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{bdf}"
        if (host.read(f"{base}/vendor", 16) or "").strip().lower() != NVIDIA_VENDOR:
            continue
        klass = (host.read(f"{base}/class", 16) or "").strip().lower()
        if not klass or klass.startswith("0x03"):  # not the card's HDMI audio function
            found.append(bdf)
    return found


def _secure_boot(host: HostView) -> tuple[bool | None, str]:
    """(whether Secure Boot is on, what said so): mokutil, else the EFI variable."""
    res = host.run(["mokutil", "--sb-state"])
    if res is not None and not res.timed_out:
        text = res.stdout + res.stderr
        line = next((ln for ln in text.splitlines() if "SecureBoot" in ln), "")
        if "SecureBoot enabled" in text or "SecureBoot disabled" in text:
            return "enabled" in line, f"mokutil --sb-state: {clip(line, 120)}"
    raw = host.read(EFI_SECURE_BOOT, 64)
    if raw:
        return raw[-1] == "\x01", f"{EFI_SECURE_BOOT}: last byte {ord(raw[-1])}"
    return None, ""


def _rejection(host: HostView) -> str | None:
    """The newest kernel log line saying a module was refused for its signature."""
    texts: list[tuple[str, str]] = []
    res = host.run(["dmesg"])
    if res is not None and res.returncode == 0:
        texts.append(("dmesg", res.stdout))
    for path in KERNEL_LOGS:
        text = host.read(path, 256 * 1024, tail=True)
        if text:
            texts.append((path, text))
    for where, text in texts:
        for line in reversed(text.splitlines()):
            if any(r in line for r in REJECTED):
                return f"{where}: {clip(line, 160)}"
    return None


_MOK_REMEDY = (
    "enroll the DKMS signing key: `sudo mokutil --import /var/lib/dkms/mok.pub` (Ubuntu: "
    "/var/lib/shim-signed/mok/MOK.der), reboot and confirm it in the MOK manager (or sign the "
    "module yourself, or turn Secure Boot off in the firmware)"
)


@check(
    "secure-boot-unsigned-module",
    "host",
    "Secure Boot rejecting the nvidia module",
    """Secure Boot refuses kernel modules not signed by a key it trusts; a DKMS-built nvidia
    module is signed with a local key (/var/lib/dkms/mok.pub) that must be enrolled first.
    Reads `mokutil --sb-state` (or the EFI SecureBoot variable), the NVIDIA PCI devices,
    /proc/modules and the kernel log ("Loading of unsigned module is rejected", "Key was
    rejected by service"). Fix: `sudo mokutil --import /var/lib/dkms/mok.pub` and reboot,
    or sign the module, or turn Secure Boot off.""",
    rows=(3,),
)
def secure_boot_module(ctx: Context) -> list[Finding]:
    say = Say("secure-boot-unsigned-module")
    gpus = nvidia_gpus(ctx.host)
    if not gpus:
        raise Skip("no NVIDIA PCI device (vendor 0x10de under /sys/bus/pci/devices)")
    on, how = _secure_boot(ctx.host)
    if on is None:
        raise Skip(
            "Secure Boot state unknown: no answer from mokutil and no EFI SecureBoot variable "
            "(a legacy BIOS boot has none)"
        )
    if not on:
        return say("ok", "Secure Boot is off: the kernel loads unsigned modules", how)
    loaded = nvidia_loaded(ctx.host)
    line = _rejection(ctx.host)
    if loaded is False:
        return say(
            "fail",
            f"Secure Boot is on and the nvidia module is not loaded for {len(gpus)} NVIDIA "
            'GPU(s): an unsigned DKMS module is refused (`modprobe nvidia`: "Key was rejected '
            'by service")',
            f"{how}; /proc/modules: no nvidia; {line or 'no rejection in the kernel log read'}",
            _MOK_REMEDY,
        )
    if line:
        return say(
            "warn",
            "Secure Boot is on and the kernel refused an unsigned module (an nvidia_uvm or "
            "nvidia_drm build, or a new kernel's DKMS build)",
            f"{how}; {line}",
            _MOK_REMEDY,
        )
    if loaded is None:
        raise Skip(
            "Secure Boot is on, and nothing here says whether the nvidia module is loaded (no "
            "/proc/modules, no /proc/driver/nvidia/version)"
        )
    return say(
        "ok",
        "Secure Boot is on and the nvidia module is loaded: a signed module loads",
        f"{how}; /proc/modules: nvidia",
    )


@check(
    "nvidia-uvm-missing",
    "host",
    "nvidia_uvm not loaded or /dev/nvidia-uvm missing",
    """CUDA needs the nvidia_uvm module and its device node /dev/nvidia-uvm besides the nvidia
    module; without them ggml prints "failed to initialize CUDA: unknown error" and Ollama
    falls back to CPU (often after a suspend and resume). Reads /proc/modules and /dev. Where
    nvidia-modprobe is installed CUDA loads the module at its first use, so that is a warning,
    not a failure. Fix: `sudo modprobe nvidia_uvm` (after a resume: `sudo rmmod nvidia_uvm &&
    sudo modprobe nvidia_uvm`).""",
    rows=(23,),
)
def nvidia_uvm(ctx: Context) -> list[Finding]:
    say = Say("nvidia-uvm-missing")
    if not nvidia_loaded(ctx.host):
        raise Skip("the nvidia kernel module is not loaded")
    mods = modules(ctx.host)
    uvm = None if mods is None else "nvidia_uvm" in mods
    dev = ctx.host.exists("/dev/nvidia-uvm")
    read = {True: "nvidia_uvm", False: "no nvidia_uvm", None: "unread"}[uvm]
    evidence = f"/proc/modules: {read}; /dev/nvidia-uvm {'present' if dev else 'missing'}"
    if uvm is not False and dev:
        return say("ok", "nvidia_uvm is loaded and /dev/nvidia-uvm exists", evidence)
    missing = " and ".join(
        (["the nvidia_uvm module is not loaded"] if uvm is False else [])
        + ([] if dev else ["/dev/nvidia-uvm is missing"])
    )
    remedy = (
        "`sudo modprobe nvidia_uvm && sudo nvidia-modprobe -u -c=0` (after a resume: `sudo "
        "rmmod nvidia_uvm && sudo modprobe nvidia_uvm`)"
    )
    if ctx.host.which("nvidia-modprobe") is not None:
        return say(
            "warn",
            f"{missing}; nvidia-modprobe loads it at CUDA's first use, but not inside a container",
            evidence,
            remedy,
        )
    return say(
        "fail",
        f'{missing}: CUDA cannot start (ggml: "failed to initialize CUDA: unknown error")',
        evidence,
        remedy,
    )


# -- limits ---------------------------------------------------------------------------


def engine_limits(ctx: Context, which: int) -> tuple[int, int, str]:
    """(soft, hard, whose) of an rlimit for the process that runs the engines: the lab daemon
    running on this ``$LABCTL_HOME`` (its ``/proc/PID/limits``), else this process (whose
    limits a ``labctl up`` from here inherits)."""
    pid = lock_holder(state_dir())
    text = ctx.host.read(f"/proc/{pid}/limits") if pid else None
    row = _LIMIT_ROWS[which]
    for line in (text or "").splitlines():
        if line.startswith(row):
            try:
                soft, hard = (
                    _INF if v == "unlimited" else int(v) for v in line[len(row) :].split()[:2]
                )
            except ValueError:
                break
            return soft, hard, f"/proc/{pid}/limits (the lab daemon)"
    soft, hard = ctx.host.rlimit(which)
    return soft, hard, "this process (a `labctl up` from here inherits it)"


def _show(n: int, unit: str = "") -> str:
    if n == _INF or n < 0:
        return "unlimited"
    return format_bytes(n) if unit == "bytes" else str(n)


@check(
    "open-files-limit",
    "host",
    "the open-files limit engines run under",
    """vLLM raises its soft RLIMIT_NOFILE to the hard limit at start; under load a hard limit
    below 65536 ends in "ZMQError Too many open files" / "OSError: [Errno 24]". Reads the lab
    daemon's /proc/PID/limits when one runs, else this process's limits. Fix:
    LimitNOFILE=1048576 in the lab's systemd unit, or `ulimit -n 1048576` (as root) before
    `labctl up`.""",
    rows=(17,),
)
def open_files(ctx: Context) -> list[Finding]:
    say = Say("open-files-limit")
    soft, hard, whose = engine_limits(ctx, resource.RLIMIT_NOFILE)
    evidence = f"RLIMIT_NOFILE of {whose}: soft {_show(soft)}, hard {_show(hard)}"
    if hard != _INF and hard < WANT_NOFILE:
        return say(
            "warn",
            f'open files are limited to {hard} (hard): a busy engine fails with "Too many open '
            'files"',
            evidence,
            "`LimitNOFILE=1048576` under [Service] in the lab's systemd unit, or `ulimit -n "
            "1048576` (as root) in the shell that runs `labctl up`",
        )
    if soft != _INF and soft < WANT_NOFILE:
        return say(
            "info",
            f"open files: soft {soft}, hard {_show(hard)}; vLLM raises its soft limit to the "
            "hard one at start, other engines keep the soft one",
            evidence,
            f"`ulimit -n {_show(hard)}` before `labctl up` raises it for every engine",
        )
    return say("ok", f"open files: soft {_show(soft)}, hard {_show(hard)}", evidence)


def _mlock_users(ctx: Context) -> list[tuple[DeploymentSpec, int | None]]:
    """llama.cpp deployments run with --mlock, and their model file's size (None: unread)."""
    out: list[tuple[DeploymentSpec, int | None]] = []
    for spec in ctx.lab.deployments if ctx.lab is not None else ():
        if spec.engine != "llamacpp" or spec.args.get("mlock") is not True:
            continue
        path = modelcache.local_model(spec)
        try:
            size = ctx.host.file(path).stat().st_size if path else None
        except OSError:
            size = None
        out.append((spec, size))
    return out


@check(
    "memlock-limit",
    "host",
    "the locked-memory limit engines run under",
    """llama.cpp's --mlock locks the whole model in RAM; above RLIMIT_MEMLOCK it prints
    "warning: failed to mlock … Try increasing RLIMIT_MEMLOCK" and the model can be swapped
    out. RDMA (NCCL over InfiniBand) needs locked memory too. Fails when a deployment uses
    mlock and the limit is below its model file; warns below 64 MiB. Fix:
    LimitMEMLOCK=infinity in the lab's systemd unit, or drop mlock from the deployment's
    args.""",
    rows=(18,),
)
def memlock(ctx: Context) -> list[Finding]:
    say = Say("memlock-limit")
    soft, hard, whose = engine_limits(ctx, resource.RLIMIT_MEMLOCK)
    limit = _show(soft, "bytes")
    evidence = f"RLIMIT_MEMLOCK of {whose}: soft {limit}, hard {_show(hard, 'bytes')}"
    remedy = (
        "`LimitMEMLOCK=infinity` under [Service] in the lab's systemd unit (or `ulimit -l "
        "unlimited` as root before `labctl up`)"
    )
    users = _mlock_users(ctx)
    if soft == _INF:
        return say("ok", "locked memory is unlimited", evidence)
    short = [(s, n) for s, n in users if soft < (n if n is not None else WANT_MEMLOCK)]
    if short:
        spec, size = short[0]
        model = format_bytes(size) if size is not None else "its model"
        return say(
            "fail",
            f"deployment {spec.name} runs llama-server with --mlock on {model}, but locked "
            f'memory is limited to {limit}: "failed to mlock", and the model can be swapped out',
            evidence,
            f"{remedy}, or drop mlock from deployments.{spec.name}.args",
        )
    if soft < WANT_MEMLOCK:
        return say(
            "warn",
            f"locked memory is limited to {limit}: llama.cpp's --mlock and RDMA (NCCL over "
            "InfiniBand) need more",
            evidence,
            f"{remedy}, or run llama-server without --mlock",
        )
    names = ", ".join(s.name for s, _ in users)
    return say(
        "ok", f"locked memory: {limit}" + (f", above {names}'s model" if names else ""), evidence
    )


# -- host facts -----------------------------------------------------------------------


@check(
    "transparent-hugepages",
    "host",
    "transparent hugepages setting",
    """Transparent hugepages (always, madvise or never) change how the kernel backs large
    allocations; nvidia-bug-report records the setting. Reads
    /sys/kernel/mm/transparent_hugepage/enabled and defrag. Informational.""",
)
def transparent_hugepages(ctx: Context) -> list[Finding]:
    base = "/sys/kernel/mm/transparent_hugepage"
    enabled = ctx.host.read(f"{base}/enabled", 256)
    if enabled is None:
        raise Skip(f"no {base}/enabled (a kernel without transparent hugepages)")
    defrag = ctx.host.read(f"{base}/defrag", 256) or ""

    def chosen(text: str) -> str:
        return next((w[1:-1] for w in text.split() if w.startswith("[")), text.strip() or "?")

    return Say("transparent-hugepages")(
        "info",
        f"transparent hugepages: {chosen(enabled)} (defrag: {chosen(defrag)})",
        f"{base}/enabled: {enabled.strip()}; defrag: {defrag.strip() or '?'}",
    )


def meminfo(host: HostView) -> dict[str, int]:
    """``/proc/meminfo`` in bytes, by field name (empty when unread)."""
    out = {}
    for line in (host.read("/proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


@check(
    "host-memory",
    "host",
    "memory and swap",
    """Model loads go through the page cache, and on unified-memory machines (GB10) the page
    cache competes with CUDA. Reads /proc/meminfo: MemTotal, MemAvailable, SwapTotal,
    SwapFree. Informational.""",
)
def host_memory(ctx: Context) -> list[Finding]:
    mem = meminfo(ctx.host)
    if "MemTotal" not in mem:
        raise Skip("no /proc/meminfo to read")
    swap = mem.get("SwapTotal", 0)
    swap_text = f"swap {format_bytes(swap)} ({format_bytes(mem.get('SwapFree', 0))} free)"
    avail = mem.get("MemAvailable")
    avail_text = f"{format_bytes(avail)} available of " if avail is not None else ""
    read = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")
    return Say("host-memory")(
        "info",
        f"memory: {avail_text}{format_bytes(mem['MemTotal'])}; {swap_text if swap else 'no swap'}",
        "/proc/meminfo: " + ", ".join(f"{k} {mem[k] // 1024} kB" for k in read if k in mem),
    )


@check(
    "clock-unsynchronized",
    "host",
    "the clock is not synchronized",
    """An unsynchronized clock drifts: the journal's and the dashboard's times then disagree
    with other machines' (and with Prometheus's). Reads `timedatectl show -p NTPSynchronized
    --value` (the kernel's sync flag, which systemd-timesyncd, chrony and ntpd set), else
    /run/systemd/timesync/synchronized. Fix: `sudo timedatectl set-ntp true`.""",
)
def clock_sync(ctx: Context) -> list[Finding]:
    say = Say("clock-unsynchronized")
    res = ctx.host.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    answer = res.stdout.strip() if res is not None and res.returncode == 0 else ""
    now = datetime.fromtimestamp(ctx.host.clock(), UTC).isoformat(timespec="seconds")
    if answer == "no":
        return say(
            "warn",
            "the system clock is not synchronized (NTP): the journal's and the dashboard's "
            "times disagree with other machines'",
            f"timedatectl show -p NTPSynchronized --value: no (clock {now})",
            "`sudo timedatectl set-ntp true`",
        )
    if answer == "yes":
        evidence = "timedatectl show -p NTPSynchronized --value: yes"
    elif ctx.host.exists("/run/systemd/timesync/synchronized"):
        evidence = "/run/systemd/timesync/synchronized exists"
    else:
        raise Skip(
            "no answer from timedatectl (no systemd here) and no systemd-timesyncd state; with "
            "chrony or ntpd, `chronyc tracking` or `ntpq -p` tells"
        )
    return say("ok", "the clock is synchronized (NTP)", f"{evidence} (clock {now})")
