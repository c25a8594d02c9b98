"""The container checks against fixture hosts: a root tree, a fake ``docker`` on a PATH of its
own printing canned JSON, a fake ``nvidia-smi``, an NVML stand-in and a statvfs source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.fakenvml import FakeNvml, load_h100

from labctl.config import DeploymentSpec, LabConfig
from labctl.doctor.container_checks import (
    container_no_gpus,
    dev_char_links,
    image_cuda,
    image_cuda_too_new,
    needs_gpu,
    shm_small,
    toolkit,
)
from labctl.doctor.finding import Context, Finding, Skip, checks
from labctl.doctor.host import HostView

VLLM_REQUIRE = (
    "NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=tesla,driver>=470,driver<471 "
    "brand=unknown,driver>=535,driver<536"
)
SMI_124 = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


class Host:
    """A fixture machine: files under ``root``, executables in ``bin``."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.bin = tmp_path / "bin"
        self.data = tmp_path / "data"
        for d in (self.root, self.bin, self.data):
            d.mkdir()
        self.shm_bytes = 16 * 2**30
        self.nvml: Any = None

    def file(self, path: str, text: str = "") -> None:
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def nvidia_gpu(self, bdf: str = "0000:01:00.0") -> None:
        self.file(f"/sys/bus/pci/devices/{bdf}/vendor", "0x10de\n")
        self.file(f"/sys/bus/pci/devices/{bdf}/class", "0x030000\n")

    def container(self) -> None:
        self.file("/.dockerenv")

    def exe(self, name: str, body: str) -> None:
        p = self.bin / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)

    def docker(
        self,
        info: dict[str, Any] | None = None,
        images: Sequence[dict[str, Any]] = (),
        inspect: Sequence[dict[str, Any]] = (),
    ) -> None:
        """A fake docker: ``info`` (None: its daemon is down), ``images`` and ``image inspect``."""
        (self.data / "info.json").write_text(json.dumps(info))
        (self.data / "images.json").write_text("".join(json.dumps(i) + "\n" for i in images))
        (self.data / "inspect.json").write_text(json.dumps(list(inspect)))
        down = info is None
        self.exe("docker", f"""case "$1" in
  info) {'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2; exit 1' if down else f'/bin/cat {self.data}/info.json'} ;;
  images) /bin/cat {self.data}/images.json ;;
  image) /bin/cat {self.data}/inspect.json ;;
  *) exit 2 ;;
esac
""")  # fmt: skip

    def view(self) -> HostView:
        size = self.shm_bytes

        def statvfs(path: str) -> os.statvfs_result:
            if not Path(path).exists():
                raise FileNotFoundError(2, "No such file or directory")
            return os.statvfs_result((4096, 4096, size // 4096, 0, 0, 0, 0, 0, 0, 255))

        return HostView(root=self.root, path=str(self.bin), nvml=self.nvml, env={},
                        statvfs=statvfs)  # fmt: skip


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def h100(shared_dir: Path) -> dict[str, Any]:
    return load_h100(shared_dir)


def run(
    fn: Callable[[Context], list[Finding]], host: Host, lab: LabConfig | None = None
) -> Finding:
    (finding,) = fn(Context(host.view(), lab))
    return finding


def lab(backend: str, *specs: DeploymentSpec) -> LabConfig:
    return LabConfig(gpu_backend=backend, deployments=specs)


VLLM = DeploymentSpec(name="chat", engine="vllm", model="Qwen/Qwen3-8B")
VLLM_TP2 = DeploymentSpec(name="big", engine="vllm", model="Qwen/Qwen3-32B", gpus=(0, 1))
TWIN = DeploymentSpec(name="twin", engine="sim", model="Qwen/Qwen3-0.6B")
CPP = DeploymentSpec(name="small", engine="llamacpp", model="/m/small.gguf")


def test_container_checks_cover_their_catalogue_rows() -> None:
    rows = {c.code: c.rows for c in checks().values() if c.place == "container"}
    assert rows["container-toolkit-missing"] == (4,)
    assert rows["container-dev-char-links"] == (5,)
    assert rows["image-cuda-too-new"] == (6,)
    assert rows["shm-small"] == (14,)
    assert rows["container-no-gpus"] == (22,)


# -- row 4: the toolkit --------------------------------------------------------------------


def test_toolkit_missing_warns_when_docker_has_no_nvidia_runtime_and_no_cdi(host: Host) -> None:
    host.nvidia_gpu()
    host.docker({"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}, "CgroupDriver": "systemd"})
    f = run(toolkit, host)
    assert (f.code, f.severity, f.place) == ("container-toolkit-missing", "warn", "container")
    assert "could not select device driver" in f.message
    assert "nvidia-ctk runtime configure --runtime=docker" in f.remedy
    assert "systemctl restart docker" in f.remedy
    assert "Runtimes = io.containerd.runc.v2, runc" in f.evidence


@pytest.mark.parametrize("how", ["runtime", "cdi"])
def test_toolkit_is_ok_with_the_nvidia_runtime_or_a_cdi_spec(host: Host, how: str) -> None:
    host.nvidia_gpu()
    runtimes = {
        "runc": {},
        **({"nvidia": {"path": "nvidia-container-runtime"}} if how == "runtime" else {}),
    }
    host.docker({"Runtimes": runtimes})
    if how == "cdi":
        host.file("/var/run/cdi/nvidia.yaml", "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    f = run(toolkit, host)
    assert (f.code, f.severity, f.remedy) == ("container-toolkit-missing", "ok", "")
    assert ("nvidia runtime" if how == "runtime" else "/var/run/cdi/nvidia.yaml") in f.message


def test_toolkit_skips_without_docker_or_its_daemon_or_a_gpu(host: Host) -> None:
    with pytest.raises(Skip, match="docker is not installed"):
        toolkit(Context(host.view()))
    host.docker(None)
    with pytest.raises(Skip, match="Cannot connect to the Docker daemon"):
        toolkit(Context(host.view()))
    host.docker({"Runtimes": {"runc": {}}})
    with pytest.raises(Skip, match="no NVIDIA GPU"):
        toolkit(Context(host.view()))


# -- row 5: /dev/char links under the systemd cgroup driver ---------------------------------


def test_dev_char_links_missing_under_systemd_cgroups_warns(host: Host) -> None:
    host.nvidia_gpu()
    host.docker({"Runtimes": {"nvidia": {}}, "CgroupDriver": "systemd"})
    (host.root / "dev/char").mkdir(parents=True)
    (host.root / "dev/char/8:0").symlink_to("../sda")
    f = run(dev_char_links, host)
    assert (f.code, f.severity) == ("container-dev-char-links", "warn")
    assert "Failed to initialize NVML: Unknown Error" in f.message
    assert "nvidia-ctk system create-dev-char-symlinks --create-all" in f.remedy
    assert "native.cgroupdriver=cgroupfs" in f.remedy


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_dev_char_links_ok_with_links_or_cgroupfs(host: Host, driver: str) -> None:
    host.nvidia_gpu()
    host.docker({"Runtimes": {"nvidia": {}}, "CgroupDriver": driver})
    if driver == "systemd":
        (host.root / "dev/char").mkdir(parents=True)
        (host.root / "dev/char/195:0").symlink_to("../nvidia0")
    f = run(dev_char_links, host)
    assert (f.code, f.severity, f.remedy) == ("container-dev-char-links", "ok", "")


# -- row 6: an image's CUDA against the driver's --------------------------------------------


def _images(host: Host, env: list[str]) -> None:
    host.nvidia_gpu()
    host.docker(
        {"Runtimes": {"nvidia": {}}},
        images=[{"Repository": "vllm/vllm-openai", "Tag": "v0.11.0", "ID": "0123456789ab"},
                {"Repository": "busybox", "Tag": "latest", "ID": "ffffffffffff"}],
        inspect=[{"Id": "sha256:0123456789ab" + "0" * 52, "Config": {"Env": env}}],
    )  # fmt: skip


def test_image_needing_newer_cuda_than_the_driver_warns_with_the_runtime_error(host: Host) -> None:
    _images(host, ["PATH=/usr/bin", VLLM_REQUIRE, "CUDA_VERSION=12.8.1"])
    host.exe("nvidia-smi", f"/bin/cat <<'EOF'\n{SMI_124}EOF\n")
    f = run(image_cuda_too_new, host)
    assert (f.code, f.severity) == ("image-cuda-too-new", "warn")
    assert f.message.startswith("vllm/vllm-openai:v0.11.0 needs CUDA 12.8")
    assert "requirement error: unsatisfied condition: cuda>=12.8" in f.message
    assert "upgrade the NVIDIA driver" in f.remedy and "older tag of vllm/vllm-openai" in f.remedy
    assert "nvidia-smi: CUDA Version: 12.4" in f.evidence


def test_image_within_the_drivers_cuda_is_ok_read_through_nvml(host: Host, h100: Any) -> None:
    _images(host, ["PATH=/usr/bin", VLLM_REQUIRE])
    host.nvml = FakeNvml([h100])  # the real H100's readings: CUDA 13.0
    f = run(image_cuda_too_new, host)
    assert (f.code, f.severity, f.remedy) == ("image-cuda-too-new", "ok", "")
    assert "CUDA 13.0" in f.message and "nvmlSystemGetCudaDriverVersion() = 13000" in f.evidence


def test_image_check_skips_without_engine_images_or_a_driver_version(host: Host) -> None:
    host.docker({"Runtimes": {}}, images=[{"Repository": "busybox", "Tag": "1", "ID": "ab"}])
    with pytest.raises(Skip, match="no engine image pulled"):
        image_cuda_too_new(Context(host.view()))
    _images(host, [VLLM_REQUIRE])
    with pytest.raises(Skip, match="CUDA version is unknown"):
        image_cuda_too_new(Context(host.view()))


def test_image_cuda_reads_the_requirement_else_the_cuda_version() -> None:
    assert image_cuda([VLLM_REQUIRE]) == ((12, 8), VLLM_REQUIRE[:120])
    assert image_cuda(["CUDA_VERSION=12.4.1"]) == ((12, 4), "CUDA_VERSION=12.4.1")
    assert image_cuda(["NVIDIA_DISABLE_REQUIRE=true", VLLM_REQUIRE]) is None
    assert image_cuda(["PATH=/bin"]) is None


# -- row 14: /dev/shm -----------------------------------------------------------------------


def test_shm_of_64_mb_fails_a_lab_with_a_multi_gpu_vllm_deployment(host: Host) -> None:
    host.container()
    host.file("/dev/shm/.keep")
    host.shm_bytes = 64 * 2**20
    f = run(shm_small, host, lab("nvml", VLLM_TP2))
    assert (f.code, f.severity) == ("shm-small", "fail")
    assert "64 MiB" in f.message and "big" in f.message and "Bus error" in f.message
    assert (
        "--ipc=host" in f.remedy and "--shm-size=16g" in f.remedy and "medium: Memory" in f.remedy
    )
    assert "/.dockerenv exists" in f.evidence
    # one GPU per deployment: a warning
    f = run(shm_small, host, lab("nvml", VLLM))
    assert (f.code, f.severity) == ("shm-small", "warn")


def test_shm_large_enough_is_ok_and_outside_a_container_skipped(host: Host) -> None:
    host.file("/dev/shm/.keep")
    with pytest.raises(Skip, match="not in a container"):
        shm_small(Context(host.view(), lab("nvml", VLLM_TP2)))
    host.file("/proc/1/cgroup", "0::/kubepods/besteffort/pod1234/abcd\n")
    f = run(shm_small, host, lab("nvml", VLLM_TP2))
    assert (f.code, f.severity, f.remedy) == ("shm-small", "ok", "")
    assert "/proc/1/cgroup: 0::/kubepods" in f.evidence


# -- row 22: a container without GPUs ---------------------------------------------------------


def test_container_without_gpu_nodes_fails_a_lab_that_needs_gpus(host: Host) -> None:
    host.container()
    host.file("/dev/null")
    f = run(container_no_gpus, host, lab("auto", VLLM, TWIN))
    assert (f.code, f.severity) == ("container-no-gpus", "fail")
    assert "chat" in f.message and "twin" not in f.message
    assert "--gpus all" in f.remedy and "nvidia.com/gpu=all" in f.remedy


def test_container_with_gpu_nodes_or_a_simulated_lab_is_ok(host: Host) -> None:
    host.container()
    host.file("/dev/null")
    f = run(container_no_gpus, host, lab("sim", VLLM))
    assert (f.code, f.severity) == ("container-no-gpus", "ok")
    f = run(container_no_gpus, host, lab("auto", CPP))  # llama.cpp may run on the CPU
    assert (f.code, f.severity) == ("container-no-gpus", "ok")
    host.file("/dev/nvidia0")
    host.file("/dev/nvidiactl")
    f = run(container_no_gpus, host, lab("nvml", VLLM))
    assert (f.code, f.severity, f.remedy) == ("container-no-gpus", "ok", "")
    assert "/dev/nvidia0" in f.evidence


def test_container_whose_gpus_nvml_reads_is_not_called_gpu_less_for_lack_of_dev_nodes(
    host: Host, h100: Any
) -> None:
    """Where NVML lists GPUs, the container was given them, whatever /dev/nvidiaN shows
    (some runtimes expose the GPUs through other nodes): no failure that refuses deploys."""
    host.container()
    host.file("/dev/null")
    host.nvml = FakeNvml([h100])
    f = run(container_no_gpus, host, lab("nvml", VLLM))
    assert (f.code, f.severity, f.remedy) == ("container-no-gpus", "ok", "")
    assert "NVML lists 1 GPU" in f.message and "no nvidia[0-9]* node" in f.evidence


def test_container_no_gpus_skips_outside_a_container(host: Host) -> None:
    with pytest.raises(Skip, match="not in a container"):
        container_no_gpus(Context(host.view(), lab("nvml", VLLM)))


def test_needs_gpu_by_engine_and_backend() -> None:
    nvml, auto, sim = lab("nvml"), lab("auto"), lab("sim")
    assert needs_gpu(VLLM, nvml) and needs_gpu(VLLM, auto) and needs_gpu(CPP, nvml)
    assert not needs_gpu(VLLM, sim) and not needs_gpu(TWIN, nvml) and not needs_gpu(CPP, auto)
    assert not needs_gpu(VLLM, LabConfig(sim_gpus="1xrtx-3090"))  # auto, on simulated GPUs


def test_the_checks_cover_the_catalogue_rows_the_lab_needs() -> None:
    from labctl.doctor.finding import checks

    covered = {row for c in checks().values() for row in c.rows}
    needed = {*range(1, 9), *range(10, 15), *range(17, 29)}
    assert needed <= covered, sorted(needed - covered)
    assert len(needed) == 25
    for c in checks().values():  # every check explains itself, without the source's indent
        assert c.title and c.explain and not c.explain.startswith(" "), c.code
