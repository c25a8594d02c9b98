"""The doctor's driver and GPU checks against fixture machines: a tmp root for /proc and /sys,
fake commands (dmesg, systemctl) and engine installs (a vllm beside a torch/version.py, a
llama-server beside a libcudart) on a tmp PATH, and the NVML replay of the real H100 readings
with one field changed per case. Each catalogue row has a fixture that triggers it and one
that does not; the assertions are on the code, the severity and the fix the remedy names."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.doctorhost import Runs, fake_exe, write
from tests.fakenvml import FakeNvml, gb10_profile, geforce_profile, load_h100

from labctl.config import DeploymentSpec, LabConfig, default_config
from labctl.doctor.finding import Context, Finding, checks, run_checks
from labctl.doctor.host import HostView

GiB = 2**30
DRIVER = "580.159.04"
KERNEL_LINE = (f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release "
               "Build  (dvs-builder@U22-I3-AF03-09-1)  Thu Oct 16 00:00:00 UTC 2026")  # fmt: skip
MODULES = ("nvidia_uvm 2076672 0 - Live 0x0\nnvidia_drm 139264 0 - Live 0x0\n"
           "nvidia 14381056 1 nvidia_uvm, Live 0x0\n")  # fmt: skip
#: The driver and GPU checks (and the rows of the catalogue they cover).
MINE = {"no-nvidia-driver", "driver-library-mismatch", "driver-too-old-for-cuda",
        "cuda-forward-compat", "fabric-manager", "no-kernel-image",
        "driver-too-old-bundled-cuda", "gpu-reads", "persistence-off", "xid-errors",
        "retired-pages", "pcie-link", "unified-memory", "gpu-memory-held", "context-too-long"}  # fmt: skip
ROWS = {1, 2, 7, 8, 10, 11, 12, 13, 24, 25, 26, 27, 28}


@pytest.fixture
def h100(shared_dir: Path) -> dict[str, Any]:
    return load_h100(shared_dir)


class Machine(Runs):
    """A fixture host with NVIDIA's driver loaded and the given NVML devices."""

    def __init__(self, tmp_path: Path, devices: list[dict[str, Any]] | None) -> None:
        self.root = tmp_path / "root"
        self.bin = tmp_path / "bin"
        self.bin.mkdir(parents=True)
        self.env: dict[str, str] = {"HOME": "/home/lab", "LABCTL_HOME": "/state"}
        self.path = [str(self.bin)]
        self.nvml: FakeNvml | None = FakeNvml(devices) if devices is not None else None
        write(self.root, "/proc/modules", MODULES if devices else "")
        if devices:
            write(self.root, "/proc/driver/nvidia/version", KERNEL_LINE + "\n")
            for d in devices:
                self.pci(d["pci"]["busId"][4:].lower(), "nvidia")
        fake_exe(self.bin, "dmesg", "echo '[    1.0] Linux version 6.8.0'")

    def pci(self, address: str, driver: str | None, klass: str = "0x030200") -> None:
        base = self.root / "sys/bus/pci/devices" / address
        write(base, "vendor", "0x10de\n")
        write(base, "class", klass + "\n")
        if driver:
            (base / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")

    def file(self, path: str, text: str) -> None:
        write(self.root, path, text)

    def exe(self, name: str, body: str) -> None:
        fake_exe(self.bin, name, body)

    def venv(self, torch: str, cuda: str | None) -> None:
        """A vLLM install at /opt/vllm whose torch is ``torch`` built for ``cuda``."""
        fake_exe(self.root / "opt/vllm/bin", "vllm", "exit 0")
        script = self.root / "opt/vllm/bin/vllm"
        script.write_text("#!/opt/vllm/bin/python3\nimport sys\n")
        script.chmod(0o755)
        cuda_line = f"cuda: Optional[str] = '{cuda}'" if cuda else "cuda: Optional[str] = None"
        self.file("/opt/vllm/lib/python3.12/site-packages/torch/version.py",
                  f"__version__ = '{torch}'\ndebug = False\n{cuda_line}\nhip = None\n")  # fmt: skip
        self.path.insert(0, str(self.root / "opt/vllm/bin"))

    def view(self) -> HostView:
        return HostView(root=self.root, path=os.pathsep.join(self.path), nvml=self.nvml,
                        env=self.env)  # fmt: skip


def vllm_lab(backend: str = "nvml", **args: Any) -> LabConfig:
    chat = DeploymentSpec(name="chat", engine="vllm", model="Qwen/Qwen3-8B", gpus=(0,), args=args)
    return LabConfig(gpu_backend=backend, deployments=(chat,))


def test_doctor_gpu_checks_cover_their_catalogue_rows() -> None:
    known = checks()
    assert set(known) >= MINE
    assert {r for c in MINE for r in known[c].rows} == ROWS
    assert all(known[c].explain and known[c].title for c in MINE)


# -- row 2: a driver at all -------------------------------------------------------------------


def test_doctor_no_driver_nouveau_bound_fails_and_says_blacklist(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.pci("0000:01:00.0", "nouveau")
    m.file("/proc/modules", "nouveau 2793472 1 - Live 0x0\n")
    f = m.one("no-nvidia-driver")
    assert (f.severity, f.place) == ("fail", "gpu")
    assert "nouveau is bound to 0000:01:00.0" in f.message and "blacklist nouveau" in f.remedy
    assert "update-initramfs" in f.remedy and "0000:01:00.0 (nouveau)" in f.evidence


def test_doctor_no_driver_for_a_gpu_on_the_bus_fails_and_says_modprobe(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.pci("0000:01:00.0", None)
    m.pci("0000:01:00.1", "snd_hda_intel", klass="0x040300")  # its audio function: not a GPU
    f = m.one("no-nvidia-driver")
    assert f.severity == "fail" and f.message.startswith("1 NVIDIA GPU(s) on the PCI bus")
    assert "sudo modprobe nvidia" in f.remedy and "ubuntu-drivers install" in f.remedy


@pytest.mark.parametrize(
    ("lab", "severity"),
    [(None, "info"), (default_config(), "info"), (vllm_lab("nvml"), "fail"),
     (vllm_lab("auto"), "fail"), (LabConfig(gpu_backend="nvml"), "fail"),
     (LabConfig(gpu_backend="auto", deployments=(DeploymentSpec("t", "llamacpp"),)), "info")],
)  # fmt: skip
def test_doctor_no_gpu_at_all_is_one_finding_by_what_the_lab_needs(
    tmp_path: Path, lab: LabConfig | None, severity: str
) -> None:
    m = Machine(tmp_path, None)
    m.nvml = FakeNvml([])
    m.nvml.init_error = "NVMLError_DriverNotLoaded"
    f = m.one("no-nvidia-driver", lab)
    assert f.severity == severity and "no NVIDIA GPU or driver here" in f.message
    assert "ubuntu-drivers install" in f.remedy and "DriverNotLoaded" in f.evidence
    for code in MINE - {"no-nvidia-driver", "context-too-long"}:
        assert m.skip(code, lab).startswith("no NVIDIA driver: "), code


def test_doctor_driver_loaded_is_ok(tmp_path: Path, h100: dict[str, Any]) -> None:
    f = Machine(tmp_path, [h100]).one("no-nvidia-driver")
    assert (f.severity, f.message) == ("ok", f"NVIDIA driver {DRIVER} is loaded")
    assert f.evidence.startswith("NVRM version:")


# -- row 1: kernel module against user-space driver ---------------------------------------------


def test_doctor_driver_library_mismatch_fails_on_versions_that_differ(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    m.file("/proc/driver/nvidia/version", KERNEL_LINE.replace(DRIVER, "580.95.05"))
    f = m.one("driver-library-mismatch")
    assert f.severity == "fail" and "580.95.05" in f.evidence and DRIVER in f.evidence
    assert "reboot" in f.remedy and "apt-mark hold" in f.remedy


def test_doctor_driver_library_mismatch_fails_when_nvml_refuses_to_start(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    assert m.nvml is not None
    m.nvml.init_error = "NVMLError_LibRmVersionMismatch"
    lib = m.root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libnvidia-ml.so.1").symlink_to("libnvidia-ml.so.580.160.01")
    f = m.one("driver-library-mismatch")
    assert f.severity == "fail" and "user-space driver is 580.160.01" in f.message
    assert "LibRmVersionMismatch" in f.evidence and "sudo modprobe nvidia" in f.remedy


def test_doctor_driver_library_missing_in_a_container_says_gpus_all(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    assert m.nvml is not None
    m.nvml.init_error = "NVMLError_LibraryNotFound"
    assert m.one("driver-library-mismatch", default_config()).severity == "warn"
    f = m.one("driver-library-mismatch", vllm_lab())
    assert f.severity == "fail" and "--gpus all" in f.remedy and "nvidia-utils-580" in f.remedy


def test_doctor_driver_library_same_versions_is_ok(tmp_path: Path, h100: dict[str, Any]) -> None:
    f = Machine(tmp_path, [h100]).one("driver-library-mismatch")
    assert (f.severity, f.message) == (
        "ok",
        f"kernel module and user-space driver are both {DRIVER}",
    )


# -- row 7: driver against the engines' CUDA ----------------------------------------------------


@pytest.mark.parametrize(
    ("driver_cuda", "torch", "cuda", "severity"),
    [(12020, "2.7.0+cu128", "12.8", "warn"), (12080, "2.9.0+cu130", "13.0", "fail"),
     (13000, "2.7.0+cu128", "12.8", "ok"), (12080, "2.7.0+cu128", "12.8", "ok")],
)  # fmt: skip
def test_doctor_driver_too_old_for_torch_cuda(
    tmp_path: Path, h100: dict[str, Any], driver_cuda: int, torch: str, cuda: str, severity: str
) -> None:
    h100["cuda_driver"] = driver_cuda
    m = Machine(tmp_path, [h100])
    m.venv(torch, cuda)
    f = m.one("driver-too-old-for-cuda")
    assert f.severity == severity and f"torch {torch}" in f.message
    assert "/opt/vllm/lib/python3.12/site-packages/torch/version.py" in f.evidence
    if severity == "fail":
        assert "nvidia-driver-580" in f.remedy and "insufficient" in f.message
    elif severity == "warn":
        assert "nvidia-driver-570" in f.remedy and "build for CUDA 12.2" in f.remedy


def test_doctor_driver_too_old_for_a_llama_server_cuda_build(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    h100["cuda_driver"] = 12080
    m = Machine(tmp_path, [h100])
    fake_exe(m.root / "usr/local/bin", "llama-server", "exit 0")
    m.file("/usr/local/lib/libcudart.so.13.0.48", "")
    m.path.append(str(m.root / "usr/local/bin"))
    f = m.one("driver-too-old-for-cuda")
    assert f.severity == "fail" and f.message.startswith("llama-server is built for CUDA 13.0")
    assert "nvidia-driver-580" in f.remedy


def test_doctor_driver_too_old_for_cuda_skips_without_engine_builds(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    assert "no CUDA build" in Machine(tmp_path, [h100]).skip("driver-too-old-for-cuda")


# -- row 8: forward compatibility on a GeForce ----------------------------------------------------


def test_doctor_cuda_forward_compat_on_a_geforce_warns(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [geforce_profile(h100)])
    m.env["LD_LIBRARY_PATH"] = "/usr/local/cuda-12.8/compat:/usr/local/lib"
    f = m.one("cuda-forward-compat")
    assert f.severity == "warn" and "Error 804" in f.message
    assert "remove /usr/local/cuda-12.8/compat from LD_LIBRARY_PATH" in f.remedy
    m.env["LD_LIBRARY_PATH"] = "/usr/local/lib"
    assert m.one("cuda-forward-compat").severity == "ok"


def test_doctor_cuda_forward_compat_on_a_datacenter_gpu_is_ok(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    m.env["LD_LIBRARY_PATH"] = "/usr/local/cuda/compat"
    f = m.one("cuda-forward-compat")
    assert f.severity == "ok" and "data-center" in f.message


def test_doctor_cuda_forward_compat_in_a_deployments_env_warns(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [geforce_profile(h100)])
    chat = DeploymentSpec("chat", "vllm", "Qwen/Qwen3-8B", env={"LD_LIBRARY_PATH": "/usr/local/cuda-13.0/compat"})  # fmt: skip
    f = m.one("cuda-forward-compat", LabConfig(deployments=(chat,)))
    assert f.severity == "warn" and "deployments.chat.env.LD_LIBRARY_PATH" in f.remedy


# -- row 10: fabric manager ---------------------------------------------------------------------


@pytest.mark.parametrize(("state", "severity"), [("inactive", "fail"), ("active", "ok")])
def test_doctor_fabric_manager_on_an_nvswitch_system(
    tmp_path: Path, h100: dict[str, Any], state: str, severity: str
) -> None:
    m = Machine(
        tmp_path, [dict(h100, pci={"busId": f"00000000:{i + 1:02x}:00.0"}) for i in range(8)]
    )
    (m.root / "proc/driver/nvidia-nvswitch/devices/0000:05:00.0").mkdir(parents=True)
    (m.root / "run/systemd/system").mkdir(parents=True)  # booted with systemd
    m.exe("systemctl", f'[ "$2" = nvidia-fabricmanager ] && echo {state}; [ {state} = active ]')
    f = m.one("fabric-manager")
    assert f.severity == severity and f"nvidia-fabricmanager: {state}" in f.evidence
    if severity == "fail":
        assert "Error 802" in f.message
        assert "apt install nvidia-fabricmanager-580" in f.remedy and "enable --now" in f.remedy


def test_doctor_fabric_manager_skips_without_nvswitch(tmp_path: Path, h100: dict[str, Any]) -> None:
    m = Machine(tmp_path, [h100])
    m.pci("0000:00:07.0", None, klass="0x068000")  # an NVSwitch bridge on the bus: it applies
    m.exe("systemctl", "echo failed; exit 3")
    (m.root / "run/systemd/system").mkdir(parents=True)
    assert m.one("fabric-manager").severity == "fail"
    assert "no NVSwitch" in Machine(tmp_path / "2", [h100]).skip("fabric-manager")


def test_doctor_fabric_manager_where_systemd_does_not_run_is_unknown_not_a_failure(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    """In a container on an NVSwitch host the fabric manager runs on the host, and systemctl
    there answers for no system: no failure (which would refuse every deploy) on its word."""
    m = Machine(tmp_path, [h100])
    m.pci("0000:00:07.0", None, klass="0x068000")
    m.exe("systemctl", "echo 'System has not been booted with systemd as init system (PID 1). "
                       "Can'\\''t operate.' >&2; echo 'Failed to connect to bus: Host is down' >&2; exit 1")  # fmt: skip
    f = m.one("fabric-manager")
    assert f.severity == "warn", f
    assert "systemd does not run here" in f.message and "/run/systemd/system" in f.evidence


# -- row 11: kernels for the GPU's architecture ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cc", "torch", "cuda", "severity", "fix"),
    [("NVIDIA GeForce RTX 5090", [12, 0], "2.6.0+cu126", "12.6", "fail", "whl/cu128"),
     ("NVIDIA GB10", [12, 1], "2.7.0+cu128", "12.8", "fail", "whl/cu129"),
     ("NVIDIA GeForce GTX 1080 Ti", [6, 1], "2.7.0+cu128", "12.8", "fail", "whl/cu126"),
     ("NVIDIA H100 80GB HBM3", [9, 0], "2.7.0+cpu", None, "fail", "whl/cu128"),
     ("NVIDIA H100 80GB HBM3", [9, 0], "2.7.0+cu128", "12.8", "ok", ""),
     ("NVIDIA GeForce RTX 5090", [12, 0], "2.9.0+cu130", "13.0", "ok", "")],
)  # fmt: skip
def test_doctor_no_kernel_image_for_the_gpus_architecture(
    tmp_path: Path, h100: dict[str, Any], name: str, cc: list[int], torch: str,
    cuda: str | None, severity: str, fix: str,
) -> None:  # fmt: skip
    h100.update(name=name, cc=cc)
    m = Machine(tmp_path, [h100])
    m.venv(torch, cuda)
    f = m.one("no-kernel-image")
    assert (f.severity, f.place) == (severity, "gpu 0")
    assert f"nvmlDeviceGetCudaComputeCapability: {cc[0]}.{cc[1]}" in f.evidence
    if severity == "fail":
        assert "no kernel image" in f.message and fix in f.remedy
        assert f"TORCH_CUDA_ARCH_LIST={cc[0]}.{cc[1]}" in f.remedy


def test_doctor_no_kernel_image_skips_without_vllm(tmp_path: Path, h100: dict[str, Any]) -> None:
    assert "no vLLM with torch" in Machine(tmp_path, [h100]).skip("no-kernel-image")


# -- row 28: the driver for llama.cpp's and Ollama's bundled CUDA ---------------------------------


@pytest.mark.parametrize(
    ("driver", "cc", "severity", "fix"),
    [("535.230.02", [9, 0], "warn", "550 or newer"), ("560.35.03", [6, 1], "warn", "570 or newer"),
     ("560.35.03", [8, 6], "ok", ""), (DRIVER, [6, 1], "ok", "")],
)  # fmt: skip
def test_doctor_driver_too_old_for_bundled_cuda(
    tmp_path: Path, h100: dict[str, Any], driver: str, cc: list[int], severity: str, fix: str
) -> None:
    h100.update(driver=driver, cc=cc)
    m = Machine(tmp_path, [h100])
    m.file("/proc/driver/nvidia/version", KERNEL_LINE.replace(DRIVER, driver))
    fake_exe(m.root / "usr/bin", "ollama", "exit 0")
    m.file("/usr/lib/ollama/cuda_v12/libcudart.so.12.8.90", "")
    m.path.append(str(m.root / "usr/bin"))
    f = m.one("driver-too-old-bundled-cuda")
    assert f.severity == severity and "ollama" in f.evidence
    assert fix in f.remedy


# -- per GPU: reads, persistence, errors, link, unified memory -------------------------------------


def test_doctor_gpu_reads_each_gpu_or_fails_a_lost_one(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    lost = dict(copy.deepcopy(h100), pci={"busId": "00000000:00:07.0"})
    lost["name"] = "ERR NVMLError_GpuIsLost: GPU is lost"
    ok, bad = Machine(tmp_path, [h100, lost]).run("gpu-reads")
    assert (ok.severity, ok.place) == ("ok", "gpu 0")
    assert ok.message == f"NVIDIA H100 80GB HBM3, driver {DRIVER}, 79.2 GiB, compute capability 9.0"
    assert (bad.severity, bad.place) == ("fail", "gpu 1") and "GpuIsLost" in bad.evidence
    assert "reboot" in bad.remedy


@pytest.mark.parametrize(("mode", "severity"), [(0, "warn"), (1, "ok")])
def test_doctor_persistence_mode(
    tmp_path: Path, h100: dict[str, Any], mode: int, severity: str
) -> None:
    h100["persistence"] = mode
    second = dict(h100, pci={"busId": "00000000:00:07.0"})
    f = Machine(tmp_path, [h100, second]).run("persistence-off")[1]
    assert (f.severity, f.place) == (severity, "gpu 1")
    assert f"nvmlDeviceGetPersistenceMode(1): {mode}" == f.evidence
    if severity == "warn":
        assert "sudo nvidia-smi -i 1 -pm 1" in f.remedy and "nvidia-persistenced" in f.remedy


@pytest.mark.parametrize(
    ("xid", "severity", "fix"),
    [(79, "warn", "seating"), (95, "fail", "nvidia-smi -r -i 0"), (48, "warn", "RMA"),
     (63, "warn", "reload the driver"), (13, "info", "restart the application"),
     (154, "warn", "Xid catalog"),
     (None, "ok", "")],
)  # fmt: skip
def test_doctor_xid_errors_in_the_kernel_log(
    tmp_path: Path, h100: dict[str, Any], xid: int | None, severity: str, fix: str
) -> None:
    m = Machine(tmp_path, [h100])
    lines = [
        "[    1.0] Linux version 6.8.0",
        "[  900.1] nvidia-nvlink: Nvlink Core is being initialized",
    ]
    if xid is not None:
        lines += [
            f"[ 1200.5] NVRM: Xid (PCI:0000:00:06): {xid}, pid=4242, name=python3, details"
        ] * 2
    m.exe("dmesg", "printf '%s\\n' " + " ".join(f"'{ln}'" for ln in lines))  # builtins only
    f = m.one("xid-errors")
    assert (f.severity, f.place) == (severity, "gpu 0") and f.evidence.startswith("dmesg: ")
    if xid is not None:
        assert f"Xid {xid} (" in f.message and "x2" in f.message and fix in f.remedy


def test_doctor_xid_of_a_gpu_not_here_or_one_back_on_the_bus_refuses_nothing(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    """A container may read its host's kernel log: an Xid of a GPU NVML does not list here is
    another's (info, on the host); and a GPU that fell off the bus earlier this boot but
    reads now was brought back (warn): neither is a failure that refuses every deploy."""
    m = Machine(tmp_path, [h100])
    m.exe(
        "dmesg",
        "printf '%s\\n' '[ 5.0] NVRM: Xid (PCI:0000:c3:00): 79, GPU has fallen off the bus.'",
    )
    (f,) = [f for f in m.run("xid-errors") if f.severity != "ok"]
    assert (f.severity, f.place) == ("info", "host")
    assert "on PCI c3:00, a GPU NVML does not list here" in f.message
    m.exe(
        "dmesg",
        "printf '%s\\n' '[ 5.0] NVRM: Xid (PCI:0000:00:06): 79, GPU has fallen off the bus.'",
    )
    f = m.one("xid-errors")
    assert (f.severity, f.place) == ("warn", "gpu 0")
    assert "reads through NVML now" in f.message


def test_doctor_xid_79_of_a_lost_gpu_fails_and_a_worse_xid_is_not_hidden_by_a_79(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    lost = dict(copy.deepcopy(h100), pci={"busId": "00000000:00:07.0"})
    lost["name"] = "ERR NVMLError_GpuIsLost: GPU is lost"  # NVML gives it no address
    m = Machine(tmp_path, [h100, lost])
    m.exe(
        "dmesg",
        "printf '%s\\n' '[ 5.0] NVRM: Xid (PCI:0000:00:07): 79, GPU has fallen off the bus.'",
    )
    f = [f for f in m.run("xid-errors") if f.severity != "ok"]
    assert [(x.severity, x.place) for x in f] == [("fail", "gpu 1")], f
    m = Machine(tmp_path / "2", [h100])
    m.exe("dmesg", "printf '%s\\n' '[ 5] NVRM: Xid (PCI:0000:00:06): 79, x' '[ 6] NVRM: Xid "
                   "(PCI:0000:00:06): 79, x' '[ 7] NVRM: Xid (PCI:0000:00:06): 95, x'")  # fmt: skip
    f = m.one("xid-errors")
    assert f.severity == "fail" and "nvidia-smi -r -i 0" in f.remedy  # 95's, not 79's
    m.exe("dmesg", "printf '%s\\n' '[ 5] NVRM: Xid (PCI:0000:c3:00): 13, x' '[ 6] NVRM: Xid "
                   "(PCI:0000:c3:00.0): 13, x'")  # fmt: skip
    assert len([f for f in m.run("xid-errors") if f.place == "host"]) == 1  # one address


def test_doctor_xid_errors_fall_back_to_kern_log_of_this_boot(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    m.exe("dmesg", "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1")
    m.file("/var/log/kern.log",
           "Nov 1 kernel: NVRM: Xid (PCI:0000:00:06): 79, GPU has fallen off the bus.\n"
           "Nov 2 kernel: Linux version 6.8.0\nNov 2 kernel: NVRM: Xid (PCI:0000:00:06): 13, pid=1\n")  # fmt: skip
    f = m.one("xid-errors")
    assert f.severity == "info" and "Xid 79" not in f.message  # an earlier boot's
    assert f.evidence.startswith("/var/log/kern.log: ")


@pytest.mark.parametrize(
    ("field", "value", "severity", "fix"),
    [("remapped_rows", [0, 0, 1, 0], "fail", "sudo nvidia-smi -r -i 0"),
     ("remapped_rows", [0, 2, 0, 1], "fail", "RMA"),
     ("retired_pages_pending", 1, "fail", "sudo nvidia-smi -r -i 0"),
     ("retired_pages", [list(range(40)), list(range(20))], "fail", "RMA"),
     ("retired_pages", [list(range(40)), list(range(19))], "ok", ""),
     ("remapped_rows", [3, 0, 0, 0], "ok", "")],
)  # fmt: skip
def test_doctor_retired_pages_and_row_remaps(
    tmp_path: Path, h100: dict[str, Any], field: str, value: Any, severity: str, fix: str
) -> None:
    h100[field] = value
    f = Machine(tmp_path, [h100]).one("retired-pages")
    assert (f.severity, f.place) == (severity, "gpu 0")
    assert "nvmlDeviceGetRemappedRows(0)" in f.evidence and fix in f.remedy


@pytest.mark.parametrize(
    ("link", "util", "reasons", "severity", "fix"),
    [((5, 5, 8, 16), 0, 1, "warn", "x16 slot"), ((3, 5, 16, 16), 90, 0, "warn", "BIOS PCIe"),
     ((1, 5, 16, 16), 0, 1, "ok", ""), ((5, 5, 16, 16), 95, 0x40, "warn", "cooling"),
     ((5, 5, 16, 16), 95, 0x80, "warn", "power delivery"), ((5, 5, 16, 16), 95, 0x4, "ok", "")],
)  # fmt: skip
def test_doctor_pcie_link_and_slowdown(
    tmp_path: Path, h100: dict[str, Any], link: tuple[int, int, int, int], util: int,
    reasons: int, severity: str, fix: str,
) -> None:  # fmt: skip
    h100.update(pcie_gen=link[0], pcie_max_gen=link[1], pcie_width=link[2], pcie_max_width=link[3],
                util={"gpu": util, "memory": 0}, clocks_event_reasons=reasons)  # fmt: skip
    f = Machine(tmp_path, [h100]).one("pcie-link")
    assert (f.severity, f.place) == (severity, "gpu 0") and "NVML link" in f.evidence
    assert fix in f.remedy
    if link[0] < link[1] and util <= 50:
        assert "while idle" in f.message


def test_doctor_unified_memory_is_info_with_the_hosts_meminfo(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [gb10_profile(h100)])
    m.file("/proc/meminfo", "MemTotal:       125489508 kB\nMemAvailable:   104857600 kB\n")
    f = m.one("unified-memory")
    assert (f.severity, f.place) == ("info", "gpu 0") and "119.7 GiB total" in f.message
    assert "gpu_memory_utilization at 0.85-0.90" in f.remedy and "drop_caches" in f.remedy
    other = Machine(tmp_path / "2", [h100])
    assert "every GPU reports its own memory" in other.skip("unified-memory")


# -- row 12: memory other processes hold -----------------------------------------------------------


def _held(h100: dict[str, Any], used: int) -> dict[str, Any]:
    h100["procs"] = [{"pid": 4242, "usedGpuMemory": used}]
    total = h100["mem_v2"]["total"]
    h100["mem_v2"] = {**h100["mem_v2"], "free": total - h100["mem_v2"]["reserved"] - used}
    return h100


def test_doctor_gpu_memory_held_fails_a_vllm_deployment_that_cannot_start(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [_held(h100, 60 * GiB)])
    m.file("/proc/4242/comm", "python3\n")
    m.file("/proc/4242/stat", "4242 (python3) S 1 4242 4242 0 -1\n")
    f = m.one("gpu-memory-held", vllm_lab(gpu_memory_utilization=0.9))
    assert (f.severity, f.place) == ("fail", "gpu 0")
    assert "Free memory on device (19.18/79.18 GiB) on startup is less than desired GPU memory " \
        "utilization (0.9, 71.26 GiB)" in f.message  # fmt: skip
    assert "pid 4242 (python3, 60.0 GiB)" in f.evidence
    assert "kill 4242" in f.remedy and "gpu_memory_utilization to 0.23" in f.remedy
    f = m.one("gpu-memory-held", vllm_lab(gpu_memory_utilization=0.2))
    assert f.severity == "warn" and "kill 4242" in f.remedy


def test_doctor_gpu_memory_held_by_the_labs_own_engine_is_ok(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [_held(h100, 60 * GiB)])
    m.file("/state/owners.json", json.dumps({"pids": {"4000": "chat"}}))
    m.file("/proc/4242/stat", "4242 (VLLM::EngineCor) S 4000 4000 4000 0 -1\n")
    f = m.one("gpu-memory-held", vllm_lab())
    assert f.severity == "ok" and "none but the lab" in f.evidence


def test_doctor_gpu_memory_held_by_a_desktop_warns(tmp_path: Path, h100: dict[str, Any]) -> None:
    m = Machine(tmp_path, [geforce_profile(h100)])
    m.file("/proc/1312/comm", "Xorg\n")
    f = m.one("gpu-memory-held")
    assert f.severity == "warn" and "pid 1312 (Xorg, 0.0 GiB)" in f.message
    assert "kill 1312" in f.remedy


def test_doctor_gpu_memory_held_on_an_idle_gpu_is_ok(tmp_path: Path, h100: dict[str, Any]) -> None:
    f = Machine(tmp_path, [h100]).one("gpu-memory-held", vllm_lab())
    assert f.severity == "ok" and f.message.startswith("no process outside the lab")


# -- row 13: the context against the KV cache budget ------------------------------------------------


def test_doctor_context_too_long_on_a_simulated_gpu_names_what_fits(tmp_path: Path) -> None:
    chat = DeploymentSpec("chat", "sim", "Qwen/Qwen3-8B", args={"max_model_len": 40960})
    lab = LabConfig(gpu_backend="sim", sim_gpus="1xrtx-3090", deployments=(chat,))
    f = Machine(tmp_path, None).one("context-too-long", lab)
    assert (f.severity, f.place) == ("fail", "lab: deployment chat")
    assert "does not fit simulated rtx-3090" in f.message and "largest context" in f.message
    fit = int(f.remedy.split("max_model_len = ")[1].split()[0])
    assert 0 < fit < 40960 and "[deployments.chat.args]" in f.remedy
    ok = LabConfig(gpu_backend="sim", sim_gpus="1xrtx-3090",
                   deployments=(DeploymentSpec("chat", "sim", "Qwen/Qwen3-8B", args={"max_model_len": fit}),))  # fmt: skip
    assert Machine(tmp_path / "2", None).one("context-too-long", ok).severity == "ok"


def test_doctor_context_too_long_on_nvml_reads_the_gpus_memory(
    tmp_path: Path, h100: dict[str, Any]
) -> None:
    m = Machine(tmp_path, [h100])
    f = m.one("context-too-long", vllm_lab(max_model_len=40960))
    assert f.severity == "ok" and "GPU 0 (NVIDIA H100 80GB HBM3)" in f.message
    f = m.one("context-too-long", vllm_lab(max_model_len=40960, gpu_memory_utilization=0.25))
    assert f.severity == "fail" and "max_model_len = " in f.remedy


def test_doctor_context_too_long_skips_without_a_lab_or_a_driver(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    assert "no lab config" in m.skip("context-too-long")
    assert m.skip("context-too-long", vllm_lab("nvml")).startswith("no NVIDIA driver: ")


# -- whole machines ----------------------------------------------------------------------------------


def _mine(ctx: Context) -> tuple[list[Finding], list[Any]]:
    report = run_checks(ctx, sorted(MINE))
    return list(report.findings), list(report.skipped)


def test_doctor_real_h100_readings_give_no_false_fail(tmp_path: Path, h100: dict[str, Any]) -> None:
    m = Machine(tmp_path, [h100])
    m.venv("2.11.0+cu130", "13.0")  # as recorded: torch 2.11.0+cu130 on driver 580 (CUDA 13.0)
    m.file("/proc/meminfo", "MemTotal: 2113412116 kB\nMemAvailable: 2000000000 kB\n")
    findings, skipped = _mine(Context(m.view(), vllm_lab(max_model_len=32768)))
    assert [f for f in findings if f.severity == "fail"] == []
    by_code = {f.code: f for f in findings}
    assert {"gpu-reads", "persistence-off", "retired-pages", "pcie-link", "no-kernel-image",
            "driver-too-old-for-cuda", "gpu-memory-held", "context-too-long"} <= set(by_code)  # fmt: skip
    assert all(by_code[c].severity == "ok" for c in by_code if c != "no-nvidia-driver")
    assert {s.code for s in skipped} == {"fabric-manager", "unified-memory"}


def test_doctor_gb10_is_unified_memory_not_an_error(tmp_path: Path, h100: dict[str, Any]) -> None:
    m = Machine(tmp_path, [gb10_profile(h100)])
    m.venv("2.9.0+cu130", "13.0")
    m.file("/proc/meminfo", "MemTotal: 125489508 kB\nMemAvailable: 104857600 kB\n")
    findings, _ = _mine(Context(m.view(), None))
    assert [f for f in findings if f.severity == "fail"] == []
    (unified,) = [f for f in findings if f.code == "unified-memory"]
    assert unified.severity == "info"
    (reads,) = [f for f in findings if f.code == "gpu-reads"]
    assert "unified memory" in reads.message and "compute capability 12.1" in reads.message


def _no_nvidia_here() -> bool:
    return not Path("/proc/driver/nvidia/version").exists()


@pytest.mark.skipif(not _no_nvidia_here(), reason="this machine has an NVIDIA driver")
@pytest.mark.parametrize(("lab", "severity"), [(default_config(), "info"), (vllm_lab(), "fail")])
def test_doctor_this_machine_without_nvidia_gives_one_finding_and_skips_the_rest(
    lab: LabConfig, severity: str
) -> None:
    findings, skipped = _mine(Context(HostView(), lab))
    (driver,) = [f for f in findings if f.code == "no-nvidia-driver"]
    assert driver.severity == severity and "ubuntu-drivers install" in driver.remedy
    others = [f for f in findings if f.code != "no-nvidia-driver"]
    # The one check that does not need a driver plans the lab's simulated GPUs.
    assert all(f.code == "context-too-long" and f.severity == "ok" for f in others)
    waiting = {s.code: s.reason for s in skipped}
    assert set(waiting) | {f.code for f in findings} == MINE
    assert all(
        r.startswith("no NVIDIA driver: ") for c, r in waiting.items() if c != "context-too-long"
    )
