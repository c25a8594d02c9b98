"""The container runtime: the NVIDIA Container Toolkit, NVML inside containers, the engines'
images against the driver, and the container the lab itself may run in.

No engine the lab starts runs in a container today, so what would stop a ``docker run
--gpus all`` of an engine image is a warning; what stops the lab's own engines when the lab
runs inside a container (no GPU device nodes, a 64 MB ``/dev/shm``) is a failure.
Docker is asked through its CLI (``docker info``, ``docker images``, ``docker image
inspect``), on the view's PATH and with its timeout.
"""

from __future__ import annotations

import json
import re
from typing import Any

from labctl.config import DeploymentSpec, LabConfig
from labctl.doctor.finding import Context, Finding, Severity, Skip, check
from labctl.doctor.host import HostView
from labctl.doctor.nvidia import GPU_ENGINES, nvidia
from labctl.runtime.container import image_cuda
from labctl.units import GiB

#: The engine images the lab's engines are published as (vLLM, llama.cpp, whisper.cpp).
ENGINE_IMAGES = ("vllm/vllm-openai", "ghcr.io/ggml-org/llama.cpp", "ghcr.io/ggml-org/whisper.cpp")
#: Below this, ``/dev/shm`` in a container is Docker's 64 MB default or near it.
SHM_FLOOR = 1 * GiB
#: Where CDI specs live (the toolkit writes one; ``nvidia-cdi-refresh`` keeps the second).
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
_CONTAINER_CGROUP = re.compile(r"docker|containerd|kubepods|libpod|crio")

TOOLKIT_FIX = "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
GPUS_FIX = (
    "start the container with `--gpus all` (or CDI: `--device nvidia.com/gpu=all`; "
    "Kubernetes: `resources.limits: nvidia.com/gpu`)"
)
SHM_FIX = (
    "run the container with --ipc=host or --shm-size=16g (Kubernetes: an emptyDir with "
    "medium: Memory on /dev/shm)"
)


def needs_gpu(spec: DeploymentSpec, lab: LabConfig) -> bool:
    """Whether ``spec``'s engine needs a real NVIDIA GPU in ``lab``: never a twin, nothing on
    simulated GPUs, every engine on ``nvml``, and on ``auto`` (NVML where a GPU is visible,
    else simulated) the engines that cannot fall back to the CPU (vLLM, OpenVLA)."""
    if spec.engine == "sim" or lab.gpu_backend == "sim" or lab.sim_gpus:
        return False
    return lab.gpu_backend == "nvml" or spec.engine in GPU_ENGINES


def gpu_deployments(lab: LabConfig | None) -> list[str]:
    """The lab's deployments that need a real GPU (see :func:`needs_gpu`)."""
    if lab is None:
        return []
    return [d.name for d in lab.deployments if needs_gpu(d, lab)]


def nvidia_pci(host: HostView) -> list[str]:
    """PCI addresses of the NVIDIA GPUs, which sysfs lists whether or not a driver is bound."""
    return [g.address for g in nvidia(host).pci]


def gpu_nodes(host: HostView) -> list[str]:
    """``/dev/nvidiaN``: one device node per GPU the driver (or a container runtime) gave."""
    return [f"/dev/{n}" for n in host.listdir("/dev") if re.fullmatch(r"nvidia\d+", n)]


def in_container(host: HostView) -> str | None:
    """How the view shows that it is inside a container (None: it does not)."""
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if host.exists(marker):
            return f"{marker} exists"
    for line in (host.read("/proc/1/cgroup", 1 << 16) or "").splitlines():
        if _CONTAINER_CGROUP.search(line):
            return f"/proc/1/cgroup: {line.strip()[:160]}"
    return None


def _docker(host: HostView, *args: str) -> str:
    """``docker ARGS``'s output.

    Raises:
        Skip: docker is not installed, or its daemon does not answer.
    """
    if host.which("docker") is None:
        raise Skip("docker is not installed (no `docker` on PATH)")
    res = host.run(["docker", *args])
    if res is None:
        raise Skip("docker could not be started")
    if res.timed_out:
        raise Skip(f"`docker {args[0]}` did not answer within {host.timeout:g} s")
    if res.returncode != 0:
        lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
        why = lines[0].split(". ")[0][:200] if lines else f"exit {res.returncode}"
        raise Skip(f"the docker daemon does not answer ({why})")
    return res.stdout


def docker_info(host: HostView) -> dict[str, Any]:
    """``docker info --format '{{json .}}'``, read.

    Raises:
        Skip: docker is not installed, its daemon does not answer, or it reports errors.
    """
    out = _docker(host, "info", "--format", "{{json .}}")
    try:
        info = json.loads(out)
    except ValueError:
        raise Skip(f"`docker info` printed no JSON: {out.strip()[:120]!r}") from None
    if not isinstance(info, dict):
        raise Skip("`docker info` printed no JSON object")
    errors = info.get("ServerErrors") or []
    if errors:
        raise Skip(f"the docker daemon does not answer: {str(errors[0])[:200]}")
    return info


def cdi_specs(host: HostView) -> list[str]:
    return [f"{d}/{n}" for d in CDI_DIRS for n in host.listdir(d)
            if n.endswith((".yaml", ".yml", ".json"))]  # fmt: skip


def _found(code: str, severity: Severity, message: str, evidence: str, remedy: str = "") -> Finding:
    return Finding(code, severity, "container", message, evidence, remedy)


@check(
    "container-toolkit-missing", "container", "NVIDIA Container Toolkit not configured for Docker",
    """
    `docker run --gpus all` fails with `could not select device driver "" with capabilities:
    [[gpu]]` when Docker has no `nvidia` runtime and no CDI spec describes the GPUs. Read:
    `docker info` (its Runtimes) and /etc/cdi, /var/run/cdi. A warning: the lab's engines do
    not run in containers. Fix: install the toolkit, then
    `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`
    (or `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`).
    """,
    rows=(4,),
)  # fmt: skip
def toolkit(ctx: Context) -> list[Finding]:
    code = "container-toolkit-missing"
    info = docker_info(ctx.host)
    gpus = nvidia_pci(ctx.host)
    if not gpus:
        raise Skip("no NVIDIA GPU on this machine: there is none for containers to use")
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    specs = cdi_specs(ctx.host)
    evidence = (f"docker info: Runtimes = {', '.join(runtimes) or 'none'}; CDI specs: "
                f"{', '.join(specs) or 'none in ' + ' or '.join(CDI_DIRS)}")  # fmt: skip
    if "nvidia" in runtimes or specs:
        how = "the nvidia runtime" if "nvidia" in runtimes else f"CDI ({specs[0]})"
        return [_found(code, "ok", f"Docker reaches the GPUs through {how}", evidence)]
    return [_found(code, "warn",
                   f"{len(gpus)} NVIDIA GPU(s) here, but Docker has no nvidia runtime and no CDI "
                   'spec: `docker run --gpus all` fails with `could not select device driver "" '
                   "with capabilities: [[gpu]]`", evidence, TOOLKIT_FIX)]  # fmt: skip


@check(
    "container-dev-char-links", "container", "NVML lost inside containers after a daemon-reload",
    """
    With Docker's systemd cgroup driver, a `systemctl daemon-reload` takes the GPUs away from
    running containers (`Failed to initialize NVML: Unknown Error` inside them) unless
    /dev/char has the links for the NVIDIA device nodes (195:*). Read: `docker info`
    (CgroupDriver) and /dev/char. Fix:
    `sudo nvidia-ctk system create-dev-char-symlinks --create-all` (and its udev rule), or
    `"exec-opts": ["native.cgroupdriver=cgroupfs"]` in /etc/docker/daemon.json; then recreate
    the containers.
    """,
    rows=(5,),
)  # fmt: skip
def dev_char_links(ctx: Context) -> list[Finding]:
    code = "container-dev-char-links"
    info = docker_info(ctx.host)
    if not nvidia_pci(ctx.host):
        raise Skip("no NVIDIA GPU on this machine")
    driver = str(info.get("CgroupDriver") or "")
    links = [n for n in ctx.host.listdir("/dev/char") if n.startswith("195:")]
    evidence = (f"docker info: CgroupDriver = {driver or '?'}; /dev/char: "
                f"{', '.join(links[:4]) or 'no 195:* link'}")  # fmt: skip
    if driver != "systemd":
        return [_found(code, "ok", f"Docker's cgroup driver is {driver or 'unknown'}, not systemd",
                       evidence)]  # fmt: skip
    if links:
        return [_found(code, "ok", "/dev/char links the NVIDIA device nodes", evidence)]
    return [_found(code, "warn",
                   "Docker uses the systemd cgroup driver and /dev/char has no NVIDIA links: after "
                   "a `systemctl daemon-reload`, containers lose their GPUs (`Failed to initialize "
                   "NVML: Unknown Error`)", evidence,
                   "sudo nvidia-ctk system create-dev-char-symlinks --create-all (or set "
                   '`"exec-opts": ["native.cgroupdriver=cgroupfs"]` in /etc/docker/daemon.json), '
                   "then recreate the containers")]  # fmt: skip


def driver_cuda(host: HostView) -> tuple[tuple[int, int], str] | None:
    """The newest CUDA the driver supports, and where it was read: NVML, else the header of
    ``nvidia-smi``; None when neither says."""
    v = nvidia(host).cuda_driver
    if v is not None:
        return (v // 1000, v % 1000 // 10), f"nvmlSystemGetCudaDriverVersion() = {v}"
    res = host.run(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", res.stdout) if res is not None else None
    if m is None:
        return None
    return (int(m.group(1)), int(m.group(2))), f"nvidia-smi: {m.group(0)}"


def engine_images(host: HostView) -> dict[str, str]:
    """Image id → ``repository:tag`` of the engine images pulled here.

    Raises:
        Skip: docker is not installed or does not answer, or no engine image is pulled.
    """
    found: dict[str, str] = {}
    for line in _docker(host, "images", "--format", "{{json .}}").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("Repository") in ENGINE_IMAGES and row.get("ID"):
            found.setdefault(str(row["ID"]), f"{row['Repository']}:{row.get('Tag', '')}")
    if not found:
        raise Skip(f"no engine image pulled ({', '.join(ENGINE_IMAGES)})")
    return found


@check(
    "image-cuda-too-new", "container", "An engine image needs a newer CUDA than the driver",
    """
    An image built for a newer CUDA than the driver supports does not start:
    `nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please
    update your driver to a newer version, or use an earlier cuda container`. Read: the
    pulled vllm/vllm-openai, ghcr.io/ggml-org/llama.cpp and whisper.cpp images
    (`docker image inspect`: NVIDIA_REQUIRE_CUDA, CUDA_VERSION) against the driver's CUDA
    (NVML nvmlSystemGetCudaDriverVersion, or the `nvidia-smi` header). Fix: upgrade the
    driver, or use an older tag of the image.
    """,
    rows=(6,),
)  # fmt: skip
def image_cuda_too_new(ctx: Context) -> list[Finding]:
    code = "image-cuda-too-new"
    images = engine_images(ctx.host)
    driver = driver_cuda(ctx.host)
    if driver is None:
        raise Skip("the driver's CUDA version is unknown (no NVML, no `nvidia-smi`)")
    (have, read), drv = driver, f"{driver[0][0]}.{driver[0][1]}"
    try:
        inspected = json.loads(_docker(ctx.host, "image", "inspect", *images))
    except ValueError:
        raise Skip("`docker image inspect` printed no JSON") from None
    out, fine = [], []
    for doc in inspected if isinstance(inspected, list) else []:
        image_id = str(doc.get("Id", "")).removeprefix("sha256:")
        name = next((n for i, n in images.items() if image_id.startswith(i)), image_id[:12])
        config = doc.get("Config") or {}
        need = image_cuda(config.get("Env") or [], config.get("Labels") or {})
        if need is None or need[0] <= have:
            fine.append(name)
            continue
        want, repo = f"{need[0][0]}.{need[0][1]}", name.rsplit(":", 1)[0]
        message = (
            f"{name} needs CUDA {want}, the driver supports CUDA {drv}: it fails to start with "
            "`nvidia-container-cli: requirement error: unsatisfied condition: "
            f"cuda>={want}, please update your driver to a newer version, or use an earlier "
            "cuda container`"
        )
        remedy = (
            f"upgrade the NVIDIA driver to one for CUDA {want} or newer, or use an older tag of "
            f"{repo} built for CUDA {drv}"
        )
        out.append(_found(code, "warn", message, f"docker image inspect {name}: {need[1]}; {read}",
                          remedy))  # fmt: skip
    if not out:
        out.append(_found(code, "ok", f"every engine image runs on the driver's CUDA {drv}",
                          f"{', '.join(fine) or 'no image inspected'}; {read}"))  # fmt: skip
    return out


def _multi_gpu_vllm(lab: LabConfig | None) -> list[str]:
    """The lab's vLLM deployments that span GPUs (their workers talk through /dev/shm)."""
    if lab is None:
        return []
    out = []
    for d in lab.deployments:
        tp = d.args.get("tensor_parallel_size", len(d.gpus))
        if d.engine == "vllm" and isinstance(tp, int) and tp > 1:
            out.append(d.name)
    return out


@check(
    "shm-small", "container", "/dev/shm too small in a container",
    """
    Docker gives a container 64 MB of /dev/shm; vLLM's workers exchange tensors through it,
    and a multi-GPU deployment dies with `Fatal Python error: Bus error` or hangs with `No
    available shared memory broadcast block found`. Read: statvfs('/dev/shm') when inside a
    container (/.dockerenv, /proc/1/cgroup). Below 1 GiB: a failure for a lab with a vLLM
    deployment on several GPUs, else a warning. Fix: `--ipc=host` or `--shm-size=16g`
    (Kubernetes: an emptyDir with `medium: Memory` mounted on /dev/shm).
    """,
    rows=(14,),
)  # fmt: skip
def shm_small(ctx: Context) -> list[Finding]:
    code = "shm-small"
    where = in_container(ctx.host)
    if where is None:
        raise Skip("not in a container: /dev/shm is the host's")
    try:
        st = ctx.host.statvfs(str(ctx.host.file("/dev/shm")))
    except OSError as exc:
        return [_found(code, "warn", "/dev/shm is missing in this container",
                       f"{where}; statvfs('/dev/shm'): {exc.strerror or exc}",
                       SHM_FIX)]  # fmt: skip
    size = st.f_blocks * st.f_frsize
    evidence = f"{where}; statvfs('/dev/shm'): {size / 2**20:.0f} MiB"
    if size >= SHM_FLOOR:
        return [_found(code, "ok", f"/dev/shm has {size / GiB:.1f} GiB", evidence)]
    multi = _multi_gpu_vllm(ctx.lab)
    if multi:
        return [_found(code, "fail",
                       f"/dev/shm has {size / 2**20:.0f} MiB: the multi-GPU vLLM deployment(s) "
                       f"{', '.join(multi)} crash with `Bus error` or hang ('No available shared "
                       "memory broadcast block found')", evidence, SHM_FIX)]  # fmt: skip
    return [_found(code, "warn",
                   f"/dev/shm has {size / 2**20:.0f} MiB (Docker's default is 64 MB): a vLLM "
                   "engine on several GPUs would crash with `Bus error` or hang", evidence,
                   SHM_FIX)]  # fmt: skip


@check(
    "container-no-gpus", "container", "Running in a container started without GPUs",
    """
    In a container started without `--gpus`, engines see no GPU: `ggml_cuda_init: failed to
    initialize CUDA: no CUDA-capable device is detected`, vLLM's `RuntimeError: Failed to
    infer device type`. Read: /.dockerenv, /proc/1/cgroup, /dev/nvidia*, NVML (GPUs it lists
    were given, whatever the nodes are called). A failure when the
    lab has deployments that need a GPU. Fix: start the container with `--gpus all` (CDI:
    `--device nvidia.com/gpu=all`).
    """,
    rows=(22,),
)  # fmt: skip
def container_no_gpus(ctx: Context) -> list[Finding]:
    code = "container-no-gpus"
    where = in_container(ctx.host)
    if where is None:
        raise Skip("not in a container")
    nodes = gpu_nodes(ctx.host)
    evidence = f"{where}; /dev: {', '.join(nodes[:8]) or 'no nvidia[0-9]* node'}"
    if nodes:
        return [_found(code, "ok", f"this container has {len(nodes)} GPU device node(s)",
                       evidence)]  # fmt: skip
    if seen := nvidia(ctx.host).gpus:  # given through nodes of other names: NVML reached them
        return [_found(code, "ok", f"NVML lists {len(seen)} GPU(s) in this container",
                       evidence)]  # fmt: skip
    needing = gpu_deployments(ctx.lab)
    if needing:
        return [_found(code, "fail",
                       f"this container was started without GPUs: {', '.join(needing)} cannot "
                       "start (`no CUDA-capable device is detected`)", evidence,
                       GPUS_FIX)]  # fmt: skip
    if ctx.lab is None:
        return [_found(code, "info",
                       "this container has no GPU device node: engines started here see no GPU",
                       evidence, GPUS_FIX)]  # fmt: skip
    return [_found(code, "ok",
                   "this container has no GPU, and none of the lab's deployments needs one",
                   evidence)]  # fmt: skip
