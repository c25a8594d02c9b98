"""Checks of the NVIDIA driver stack: a driver at all (or nouveau in its place), kernel module
against user-space library, the driver against the CUDA the engines were built for, forward
compatibility libraries, the fabric manager, and kernels for the cards' architecture.

Findings about the whole stack are placed at "gpu"; the per-GPU ones at "gpu N". Reads go
through :func:`~labctl.doctor.nvidia.nvidia` (one NVML pass) and
:mod:`~labctl.doctor.builds` (the engines' files).
"""

from __future__ import annotations

import re

from labctl.doctor.builds import (
    ARCH_FIRST_CUDA,
    Build,
    arch_gap,
    cuda_text,
    decode_cuda,
    driver_cuda,
    min_driver,
    native_builds,
    torch_builds,
)
from labctl.doctor.finding import Context, Finding, Severity, Skip, check
from labctl.doctor.host import HostView
from labctl.doctor.nvidia import VERSION_FILE, Nvidia, clip, needs_gpu, nvidia

#: Where distributions put libnvidia-ml.so.1 (a link to libnvidia-ml.so.<driver version>).
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
            "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64", "/usr/lib/wsl/lib")  # fmt: skip
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_NO_PERMISSION = 4
INSTALL = ("install the NVIDIA driver: `sudo ubuntu-drivers install` (Ubuntu) or your "
           "distribution's nvidia-driver package, then reboot")  # fmt: skip
#: ``/usr/local/cuda-12.8/compat``: CUDA's forward-compatibility libcuda.
_COMPAT = re.compile(r"/cuda[^/:]*/compat/?$")
#: Cards CUDA's forward compatibility does not support (it is for data-center GPUs).
_NOT_DATACENTER = re.compile(r"GeForce|TITAN|Quadro|\bRTX\b", re.I)


def _no_driver(nv: Nvidia) -> Skip:
    return Skip(f"no NVIDIA driver: {nv.missing()}")


def _library(host: HostView) -> tuple[str, str] | None:
    """(version, evidence) of the user-space driver from the libnvidia-ml.so.1 link."""
    for d in LIB_DIRS:
        target = host.readlink(f"{d}/libnvidia-ml.so.1")
        m = re.search(r"libnvidia-ml\.so\.(\d+\.\d+(?:\.\d+)?)$", target or "")
        if m:
            return m.group(1), f"{d}/libnvidia-ml.so.1 -> {target}"
    return None


@check("no-nvidia-driver", "gpu", "No NVIDIA driver answering (or nouveau bound instead)",
       """Reads /proc/driver/nvidia/version (the loaded kernel module), the PCI bus
       (/sys/bus/pci/devices/*: vendor 0x10de, class 0x03…, and the driver each is bound to)
       and /proc/modules. An NVIDIA GPU with no driver, or with nouveau bound, fails:
       nvidia-smi says "couldn't communicate with the NVIDIA driver". A machine with no NVIDIA
       GPU at all gets one finding: info for a lab on simulated GPUs, fail for one whose
       deployments need a real GPU. Fix: install the driver; blacklist nouveau.""",
       rows=(2,))  # fmt: skip
def no_nvidia_driver(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    if nv.driver_loaded:
        where = nv.kernel_line or f"NVML sees {len(nv.gpus)} GPU(s), driver {nv.driver}"
        return [Finding("no-nvidia-driver", "ok", "gpu",
                        f"NVIDIA driver {nv.driver} is loaded", clip(where))]  # fmt: skip
    nouveau = [p.address for p in nv.pci if p.driver == "nouveau"]
    if nouveau or (nv.pci and nv.modules and "nouveau" in nv.modules):
        on = ", ".join(nouveau) or "the NVIDIA GPUs"
        return [Finding(
            "no-nvidia-driver", "fail", "gpu",
            f"nouveau is bound to {on} and the NVIDIA driver is not loaded: CUDA cannot use "
            "the GPU (nvidia-smi: couldn't communicate with the NVIDIA driver)",
            clip(f"{nv.missing()}; /proc/modules: "
                 f"{'nouveau' if nv.modules and 'nouveau' in nv.modules else 'no nouveau'}"),
            "blacklist nouveau: `echo 'blacklist nouveau' | sudo tee "
            "/etc/modprobe.d/blacklist-nouveau.conf && sudo update-initramfs -u`, reboot, then "
            "install the NVIDIA driver if it is not (`sudo ubuntu-drivers install`)",
        )]  # fmt: skip
    if nv.pci:
        return [Finding(
            "no-nvidia-driver", "fail", "gpu",
            f"{len(nv.pci)} NVIDIA GPU(s) on the PCI bus but no NVIDIA driver loaded: "
            "nvidia-smi says it couldn't communicate with the NVIDIA driver",
            clip(nv.missing()),
            f"`sudo modprobe nvidia` (see `dmesg` if it refuses); if it is not installed, {INSTALL}",
        )]  # fmt: skip
    need = needs_gpu(ctx.lab)
    if need:
        return [Finding(
            "no-nvidia-driver", "fail", "gpu",
            f"no NVIDIA GPU or driver here, and the lab needs one: {', '.join(need)}",
            clip(nv.missing()),
            f"{INSTALL}; or run the lab on simulated GPUs (lab.gpu_backend = \"sim\")",
        )]  # fmt: skip
    return [Finding(
        "no-nvidia-driver", "info", "gpu",
        "no NVIDIA GPU or driver here; the lab runs on simulated GPUs",
        clip(nv.missing()),
        f"nothing to do for simulated GPUs; for real ones, on a machine with an NVIDIA GPU, "
        f"{INSTALL}",
    )]  # fmt: skip


@check("driver-library-mismatch", "gpu", "Kernel module and user-space driver differ",
       """Compares the loaded kernel module's version (/proc/driver/nvidia/version) with the
       user-space driver's (NVML's nvmlSystemGetDriverVersion, else the libnvidia-ml.so.1
       link), and reads NVML's start error. A driver upgraded under a loaded module gives
       "Failed to initialize NVML: Driver/library version mismatch" to every CUDA program.
       Fix: reboot (or reload the modules), then hold the driver packages.""",
       rows=(1,))  # fmt: skip
def driver_library_mismatch(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    if not nv.driver_loaded:
        raise _no_driver(nv)
    if nv.kernel_version is None:
        raise Skip(f"no {VERSION_FILE} (WSL, or a container that hides it): no kernel module "
                   "version to compare")  # fmt: skip
    kernel = nv.kernel_version
    lib = _library(ctx.host)
    user, user_where = (nv.driver_version, "nvmlSystemGetDriverVersion") if nv.driver_version \
        else (lib if lib else (None, "libnvidia-ml.so.1 not found"))  # fmt: skip
    evidence = clip(f"{VERSION_FILE}: {kernel}; {user_where}: {user or '?'}; "
                    f"nvmlInit: {nv.nvml_error or 'ok'}")  # fmt: skip
    code = nv.nvml_error_code
    if code == NVML_ERROR_LIB_RM_VERSION_MISMATCH or (
        user and kernel != "unknown" and user != kernel
    ):
        return [Finding(
            "driver-library-mismatch", "fail", "gpu",
            f"the loaded kernel module is {kernel} but the user-space driver is "
            f"{user or 'another version'}: CUDA programs fail with 'Failed to initialize NVML: "
            "Driver/library version mismatch'",
            evidence,
            "reboot to load the matching module (or `sudo rmmod nvidia_uvm nvidia_drm "
            "nvidia_modeset nvidia && sudo modprobe nvidia`), then hold the driver packages "
            "(`sudo apt-mark hold 'nvidia-*' 'libnvidia-*'`) so an unattended upgrade cannot "
            "split them again",
        )]  # fmt: skip
    if code is not None:
        major = kernel.split(".")[0]
        sev: Severity = "fail"
        if code == NVML_ERROR_LIBRARY_NOT_FOUND:
            sev = "fail" if needs_gpu(ctx.lab) else "warn"
            what = "NVML's library (libnvidia-ml.so.1) is not installed"
            fix = (f"install the user-space driver matching the module (e.g. `sudo apt install "
                   f"nvidia-utils-{major}`); in a container, start it with `--gpus all`")  # fmt: skip
        elif code == NVML_ERROR_NO_PERMISSION:
            what = "this user may not open the GPU devices"
            fix = "make /dev/nvidia* readable for this user (`ls -l /dev/nvidia*`; the video group)"
        else:
            what = f"NVML cannot start ({nv.nvml_error})"
            fix = (
                "reboot (or `sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm`); then see `dmesg`"
            )
        return [Finding("driver-library-mismatch", sev, "gpu",
                        f"the kernel module {kernel} is loaded but {what}", evidence, fix)]  # fmt: skip
    if user is None:
        raise Skip(f"the user-space driver's version is unknown ({nv.nvml_error or user_where})")
    return [Finding("driver-library-mismatch", "ok", "gpu",
                    f"kernel module and user-space driver are both {kernel}", evidence)]  # fmt: skip


def _driver_cuda(nv: Nvidia) -> tuple[int, int]:
    if nv.cuda_driver:
        return decode_cuda(nv.cuda_driver)
    found = driver_cuda(nv.driver_major) if nv.driver_major else None
    if found is None:
        raise Skip(f"the driver's CUDA version is unknown (driver {nv.driver or '?'})")
    return found


@check("driver-too-old-for-cuda", "gpu", "Driver older than the CUDA the engines were built for",
       """Compares the newest CUDA the driver runs (nvmlSystemGetCudaDriverVersion) with the
       CUDA runtime each engine install brings: torch beside vllm (torch/version.py), the
       libcudart beside llama-server, Ollama's bundled cuda_v* runtimes. A newer major version
       fails ("CUDA driver version is insufficient for CUDA runtime version", torch: "The
       NVIDIA driver on your system is too old"); a newer minor one runs through CUDA's
       minor-version compatibility except kernels compiled just in time (warn). Minimum Linux
       drivers: CUDA 12.4 550, 12.8 570, 12.9 575, 13.0 580. Fix: upgrade the driver, or
       install the engine's build for the driver's CUDA.""",
       rows=(7,))  # fmt: skip
def driver_too_old_for_cuda(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    if not nv.driver_loaded:
        raise _no_driver(nv)
    have = _driver_cuda(nv)
    builds = [
        b for b in torch_builds(ctx.host, ctx.lab) + native_builds(ctx.host, ctx.lab) if b.cuda
    ]
    if not builds:
        raise Skip("no CUDA build of vLLM (torch), llama-server or Ollama found on PATH")
    out = []
    for b in builds:
        assert b.cuda is not None
        need = min_driver(b.cuda)
        evidence = clip(f"{b.where}: CUDA {cuda_text(b.cuda)}; nvmlSystemGetCudaDriverVersion: "
                        f"{cuda_text(have)} (driver {nv.driver})")  # fmt: skip
        fix = (f"upgrade the NVIDIA driver to {need} or newer (`sudo apt install "
               f"nvidia-driver-{need}`), or install a {b.engine} build for CUDA {cuda_text(have)}")  # fmt: skip
        if b.cuda[0] > have[0]:
            out.append(Finding("driver-too-old-for-cuda", "fail", "gpu",
                               f"{b.label} is built for CUDA {cuda_text(b.cuda)} but driver "
                               f"{nv.driver} runs CUDA {cuda_text(have)} at most: it fails with "
                               "'CUDA driver version is insufficient for CUDA runtime version'",
                               evidence, fix))  # fmt: skip
        elif b.cuda > have:
            out.append(Finding("driver-too-old-for-cuda", "warn", "gpu",
                               f"{b.label} is built for CUDA {cuda_text(b.cuda)}, newer than "
                               f"driver {nv.driver}'s CUDA {cuda_text(have)}: minor-version "
                               "compatibility runs it, but kernels compiled just in time fail",
                               evidence, fix))  # fmt: skip
        else:
            out.append(Finding("driver-too-old-for-cuda", "ok", "gpu",
                               f"{b.label}: CUDA {cuda_text(b.cuda)} runs on driver {nv.driver} "
                               f"(CUDA {cuda_text(have)})", evidence))  # fmt: skip
    return out


def _ld_paths(ctx: Context) -> list[tuple[str, str]]:
    """(where, entry) for each LD_LIBRARY_PATH entry of this environment and the lab's
    deployments."""
    sources = [("LD_LIBRARY_PATH", ctx.host.env.get("LD_LIBRARY_PATH", ""))]
    for d in ctx.lab.deployments if ctx.lab else ():
        sources.append((f"deployments.{d.name}.env.LD_LIBRARY_PATH",
                        d.env.get("LD_LIBRARY_PATH", "")))  # fmt: skip
    return [(w, e) for w, v in sources for e in v.split(":") if e]


@check("cuda-forward-compat", "gpu", "CUDA forward-compatibility libraries on a non-datacenter GPU",
       """Looks for CUDA's forward-compatibility libcuda (a …/cuda*/compat folder) on
       LD_LIBRARY_PATH (this environment's and each deployment's) while a GPU is a GeForce,
       TITAN, Quadro or RTX card: forward compatibility is for data-center GPUs, and CUDA
       fails with "Error 804: forward compatibility was attempted on non supported HW". Fix:
       drop the compat folder from LD_LIBRARY_PATH; upgrade the driver instead.""",
       rows=(8,))  # fmt: skip
def cuda_forward_compat(ctx: Context) -> list[Finding]:
    gpus = nvidia(ctx.host).require_gpus()
    compat = [(w, e) for w, e in _ld_paths(ctx) if _COMPAT.search(e)]
    if not compat:
        return [Finding("cuda-forward-compat", "ok", "gpu",
                        "no CUDA forward-compatibility libraries on LD_LIBRARY_PATH",
                        clip(f"LD_LIBRARY_PATH: {ctx.host.env.get('LD_LIBRARY_PATH', '(unset)')}"))]  # fmt: skip
    where, entry = compat[0]
    consumer = [g for g in gpus if _NOT_DATACENTER.search(g.name)]
    if not consumer:
        return [Finding("cuda-forward-compat", "ok", "gpu",
                        f"{entry} (CUDA forward compatibility) is in use on data-center GPUs",
                        clip(f"{where}: {entry}; GPUs: {', '.join(g.name for g in gpus)}"))]  # fmt: skip
    g = consumer[0]
    return [Finding(
        "cuda-forward-compat", "warn", "gpu",
        f"{entry} (CUDA's forward-compatibility libcuda) is on LD_LIBRARY_PATH but GPU {g.index} "
        f"({g.name}) is not a data-center GPU: CUDA fails with 'Error 804: forward "
        "compatibility was attempted on non supported HW'",
        clip(f"{where}: {entry}; nvmlDeviceGetName({g.index}): {g.name}"),
        f"remove {entry} from {where}; to run a newer CUDA, upgrade the driver instead",
    )]  # fmt: skip


@check("fabric-manager", "gpu", "NVSwitch system without the fabric manager running",
       """On a machine with NVSwitch (NVIDIA PCI bridges, class 0x0680, or
       /proc/driver/nvidia-nvswitch/devices), asks `systemctl is-active nvidia-fabricmanager`
       where systemd runs (/run/systemd/system; elsewhere, a container say, unknown: warn).
       Without it CUDA fails with "Error 802: system not yet initialized". Fix: install the
       fabric manager of the driver's exact version and start it.""",
       rows=(10,))  # fmt: skip
def fabric_manager(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    if not nv.driver_loaded:
        raise _no_driver(nv)
    if not nv.nvswitches:
        raise Skip("no NVSwitch here (no NVIDIA PCI bridge, no /proc/driver/nvidia-nvswitch "
                   "devices): the fabric manager is for NVSwitch systems")  # fmt: skip
    major = nv.driver_major or "<driver branch>"
    fix = (f"`sudo apt install nvidia-fabricmanager-{major}` (the driver's exact version, "
           f"{nv.driver}) and `sudo systemctl enable --now nvidia-fabricmanager`")  # fmt: skip
    switches = f"{len(nv.nvswitches)} NVSwitch(es): {', '.join(nv.nvswitches[:4])}"
    if not ctx.host.exists("/run/systemd/system"):  # sd_booted(): systemctl answers for nothing
        return [Finding("fabric-manager", "warn", "gpu",
                        "NVSwitch present; whether nvidia-fabricmanager runs is unknown: systemd "
                        "does not run here (in a container, the fabric manager runs on the host)",
                        clip(f"{switches}; no /run/systemd/system"), fix)]  # fmt: skip
    res = ctx.host.run(["systemctl", "is-active", "nvidia-fabricmanager"])
    if res is None or res.timed_out:
        why = "systemctl is not on PATH" if res is None else "systemctl timed out"
        return [Finding("fabric-manager", "warn", "gpu",
                        f"NVSwitch present; whether nvidia-fabricmanager runs is unknown ({why})",
                        clip(switches), fix)]  # fmt: skip
    state = res.stdout.strip() or res.stderr.strip() or "unknown"
    evidence = clip(f"{switches}; systemctl is-active nvidia-fabricmanager: {state}")
    if state == "active":
        return [Finding("fabric-manager", "ok", "gpu",
                        "NVSwitch present and nvidia-fabricmanager is active", evidence)]  # fmt: skip
    return [Finding("fabric-manager", "fail", "gpu",
                    f"NVSwitch present but nvidia-fabricmanager is {state}: CUDA fails with "
                    "'Error 802: system not yet initialized'", evidence, fix)]  # fmt: skip


@check("no-kernel-image", "gpu", "Engine build without kernels for the GPU's architecture",
       """Compares each GPU's compute capability (NVML) with what the torch beside vLLM was
       built for (torch/version.py: its CUDA release; read, not imported): sm_120 (RTX 50xx,
       RTX PRO 6000) needs a CUDA 12.8+ build, sm_121 (GB10) 12.9+, sm_100 (B200) 12.8+; CUDA
       12.8+ torch wheels leave out compute capability below 7.0 and CUDA 13 below 7.5; a CPU
       build has no kernels at all. Otherwise vLLM fails with "CUDA error: no kernel image is
       available for execution on the device". Fix: a build for a newer CUDA (cu128, cu129,
       cu130) or a source build for the arch.""",
       rows=(11,))  # fmt: skip
def no_kernel_image(ctx: Context) -> list[Finding]:
    gpus = nvidia(ctx.host).require_gpus()
    builds = torch_builds(ctx.host, ctx.lab)
    if not builds:
        raise Skip("no vLLM with torch installed here (vllm not on PATH, or no torch/version.py "
                   "in its environment)")  # fmt: skip
    out = []
    for g in gpus:
        if g.cc is None:
            continue
        gaps = [(b, _gap(b, g.cc)) for b in builds]
        bad = [(b, why) for b, why in gaps if why]
        cc = f"{g.cc[0]}.{g.cc[1]}"
        if not bad:
            out.append(Finding("no-kernel-image", "ok", g.place,
                               f"{', '.join(b.label for b in builds)} has kernels for "
                               f"{g.name} (sm_{g.cc[0]}{g.cc[1]})",
                               clip(f"{builds[0].where}: CUDA {cuda_text(builds[0].cuda)}; "
                                    f"nvmlDeviceGetCudaComputeCapability: {cc}")))  # fmt: skip
            continue
        b, why = bad[0]
        out.append(Finding(
            "no-kernel-image", "fail", g.place,
            f"{b.label} has no kernels for {g.name} (compute capability {cc}): {why}; vLLM fails "
            "with 'no kernel image is available for execution on the device'",
            clip(f"{b.where}: torch {b.torch}, CUDA {cuda_text(b.cuda)}; "
                 f"nvmlDeviceGetCudaComputeCapability: {cc}"),
            f"install vLLM with a torch built for CUDA {_want(g.cc)} or newer (e.g. `pip install "
            f"vllm --extra-index-url https://download.pytorch.org/whl/cu{_want(g.cc).replace('.', '')}`)"
            f", or build vLLM from source with TORCH_CUDA_ARCH_LIST={cc}",
        ))  # fmt: skip
    if not out:
        raise Skip("NVML reports no compute capability for any GPU")
    return out


def _gap(b: Build, cc: tuple[int, int]) -> str | None:
    if b.cuda is None:
        return "it is a CPU-only build"
    return arch_gap(cc, b.cuda)


def _want(cc: tuple[int, int]) -> str:
    """The CUDA release to ask for: the first that compiles for ``cc``, at least 12.8."""
    first = max([v for k, v in ARCH_FIRST_CUDA.items() if k[0] == cc[0] and k <= cc] or [(12, 8)])
    return cuda_text(max(first, (12, 8))) if cc >= (7, 0) else "12.6"


@check("driver-too-old-bundled-cuda", "gpu", "Driver too old for llama.cpp's and Ollama's CUDA",
       """Reads the driver's version (NVML, else /proc/driver/nvidia/version). CUDA 12.4+
       builds of llama.cpp and Ollama need driver 550 or newer, and GPUs below compute
       capability 7.0 need 570 or newer for the kernels compiled just in time; Ollama logs
       "NVIDIA driver too old … required_driver=550 or newer" and falls back to the CPU. Fix:
       upgrade the driver.""",
       rows=(28,))  # fmt: skip
def driver_too_old_bundled_cuda(ctx: Context) -> list[Finding]:
    nv = nvidia(ctx.host)
    if not nv.driver_loaded:
        raise _no_driver(nv)
    major = nv.driver_major
    if major is None:
        raise Skip(f"the driver's version is unknown ({nv.kernel_line or nv.nvml_error})")
    bundles = ", ".join(sorted({b.engine for b in native_builds(ctx.host, ctx.lab)})) or \
        "none found on PATH"  # fmt: skip
    old_cc = [(g, g.cc) for g in nv.gpus if g.cc and g.cc[0] < 7]
    evidence = clip(f"driver {nv.driver} (nvmlSystemGetDriverVersion / {VERSION_FILE}); "
                    f"llama.cpp/Ollama CUDA builds here: {bundles}")  # fmt: skip
    if major < 550:
        return [Finding("driver-too-old-bundled-cuda", "warn", "gpu",
                        f"driver {nv.driver} is older than 550: CUDA 12.4+ builds of llama.cpp "
                        "and Ollama need 550 or newer (Ollama: 'NVIDIA driver too old')",
                        evidence, "upgrade the NVIDIA driver to 550 or newer (570+ for GPUs "
                        "below compute capability 7.0): `sudo apt install nvidia-driver-570`")]  # fmt: skip
    if old_cc and major < 570:
        g, cc = old_cc[0]
        return [Finding("driver-too-old-bundled-cuda", "warn", g.place,
                        f"{g.name} (compute capability {cc[0]}.{cc[1]}) needs driver 570 or "
                        f"newer for llama.cpp's and Ollama's JIT-compiled kernels; driver is "
                        f"{nv.driver}", evidence,
                        "upgrade the NVIDIA driver to 570 or newer: `sudo apt install "
                        "nvidia-driver-570`")]  # fmt: skip
    return [Finding("driver-too-old-bundled-cuda", "ok", "gpu",
                    f"driver {nv.driver} runs the CUDA 12.4+ builds of llama.cpp and Ollama",
                    evidence)]  # fmt: skip
