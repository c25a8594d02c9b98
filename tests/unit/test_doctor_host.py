"""The doctor's host checks against fixture machines: a tmp root tree for /proc, /sys, /dev
and /var/log, fake commands on a tmp PATH, fake rlimits, and a hub cache written in the
layout huggingface_hub reads. Each catalogue row has a fixture that triggers it and one that
does not; the assertions are on the code, the severity and the fix the remedy names."""

from __future__ import annotations

import json
import os
from pathlib import Path
import resource

import pytest
from tests.doctorhost import NOW, Runs, fake_exe, hub_repo, lab_toml, write

from labctl.config import LabConfig
from labctl.doctor.finding import checks
from labctl.doctor.host import HostView
from labctl.home import DaemonLock
from labctl.units import MiB

INF = resource.RLIM_INFINITY


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state directory of the test's own, so no daemon of this machine's is read."""
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "state"))


class Machine(Runs):
    """A fixture host: ``root`` for files, ``bin`` for commands, limits by resource."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.env: dict[str, str] = {"HOME": "/home/lab"}
        self.limits: dict[int, tuple[int, int]] = {
            resource.RLIMIT_NOFILE: (1048576, 1048576),
            resource.RLIMIT_MEMLOCK: (INF, INF),
        }

    def view(self) -> HostView:
        return HostView(root=self.root, path=str(self.bin), nvml=None, env=self.env,
                        rlimit=self.limits.__getitem__, clock=lambda: NOW)  # fmt: skip


@pytest.fixture
def m(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_rows_are_registered() -> None:
    rows = {r for c in checks().values() for r in c.rows}
    assert {3, 17, 18, 19, 20, 21, 23} <= rows


# -- row 3: Secure Boot ----------------------------------------------------------------

SB_EFI = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e0984b8c"


def nvidia_card(m: Machine) -> None:
    write(m.root, "/sys/bus/pci/devices/0000:01:00.0/vendor", "0x10de\n")
    write(m.root, "/sys/bus/pci/devices/0000:01:00.0/class", "0x030000\n")
    write(m.root, "/sys/bus/pci/devices/0000:00:1f.0/vendor", "0x8086\n")


def test_secure_boot_rejecting_the_module_fails(m: Machine) -> None:
    nvidia_card(m)
    write(m.root, SB_EFI, b"\x06\x00\x00\x00\x01")
    write(m.root, "/proc/modules", "ext4 1 0 - Live 0x0\n")
    write(m.root, "/var/log/kern.log", "Dec 3 kernel: Loading of unsigned module is rejected\n")
    f = m.one("secure-boot-unsigned-module")
    assert f.severity == "fail"
    assert "mokutil --import /var/lib/dkms/mok.pub" in f.remedy
    assert "Loading of unsigned module is rejected" in f.evidence
    assert "last byte 1" in f.evidence


def test_secure_boot_from_mokutil_with_no_log_still_fails(m: Machine) -> None:
    nvidia_card(m)
    fake_exe(m.bin, "mokutil", 'echo "SecureBoot enabled"')
    write(m.root, "/proc/modules", "ext4 1 0 - Live 0x0\n")
    f = m.one("secure-boot-unsigned-module")
    assert f.severity == "fail"
    assert "mokutil --sb-state: SecureBoot enabled" in f.evidence
    assert "mokutil --import" in f.remedy


def test_secure_boot_with_the_module_loaded_is_ok(m: Machine) -> None:
    nvidia_card(m)
    write(m.root, SB_EFI, b"\x06\x00\x00\x00\x01")
    write(m.root, "/proc/modules", "nvidia 1 0 - Live 0x0\nnvidia_uvm 1 0 - Live 0x0\n")
    f = m.one("secure-boot-unsigned-module")
    assert (f.severity, f.remedy) == ("ok", "")
    assert "signed module loads" in f.message


def test_secure_boot_off_is_ok_and_no_card_skips(m: Machine) -> None:
    write(m.root, "/proc/modules", "ext4 1 0 - Live 0x0\n")
    fake_exe(m.bin, "mokutil", 'echo "SecureBoot disabled"')
    assert "no NVIDIA PCI device" in m.skip("secure-boot-unsigned-module")
    nvidia_card(m)
    assert m.one("secure-boot-unsigned-module").severity == "ok"


# -- row 23: nvidia_uvm ----------------------------------------------------------------


def test_nvidia_uvm_missing_fails(m: Machine) -> None:
    write(m.root, "/proc/modules", "nvidia 1 0 - Live 0x0\n")
    f = m.one("nvidia-uvm-missing")
    assert f.severity == "fail"
    assert "sudo modprobe nvidia_uvm" in f.remedy
    assert "no nvidia_uvm" in f.evidence and "/dev/nvidia-uvm missing" in f.evidence


def test_nvidia_uvm_missing_with_nvidia_modprobe_warns(m: Machine) -> None:
    write(m.root, "/proc/modules", "nvidia 1 0 - Live 0x0\n")
    fake_exe(m.bin, "nvidia-modprobe", "exit 0")
    f = m.one("nvidia-uvm-missing")
    assert f.severity == "warn"
    assert "modprobe nvidia_uvm" in f.remedy


def test_nvidia_uvm_present_is_ok_and_no_driver_skips(m: Machine) -> None:
    write(m.root, "/proc/modules", "ext4 1 0 - Live 0x0\n")
    assert "not loaded" in m.skip("nvidia-uvm-missing")
    write(m.root, "/proc/modules", "nvidia_uvm 1 0 - Live 0x0\nnvidia 1 0 - Live 0x0\n")
    write(m.root, "/dev/nvidia-uvm", "")
    assert m.one("nvidia-uvm-missing").severity == "ok"


# -- row 17: open files ----------------------------------------------------------------


def test_low_hard_open_files_limit_warns(m: Machine) -> None:
    m.limits[resource.RLIMIT_NOFILE] = (1024, 4096)
    f = m.one("open-files-limit")
    assert f.severity == "warn"
    assert "LimitNOFILE=1048576" in f.remedy and "ulimit -n" in f.remedy
    assert "soft 1024, hard 4096" in f.evidence


def test_low_soft_open_files_limit_is_info_and_high_is_ok(m: Machine) -> None:
    m.limits[resource.RLIMIT_NOFILE] = (1024, 1048576)
    f = m.one("open-files-limit")
    assert f.severity == "info"
    assert "ulimit -n 1048576" in f.remedy
    m.limits[resource.RLIMIT_NOFILE] = (1048576, 1048576)
    assert m.one("open-files-limit").severity == "ok"


def test_open_files_of_the_running_daemon_are_read(m: Machine, tmp_path: Path) -> None:
    """A daemon holding the state directory: its /proc/PID/limits, not this process's."""
    home = tmp_path / "state"
    home.mkdir()
    lock = DaemonLock(home)
    try:
        write(m.root, f"/proc/{os.getpid()}/limits",
              "Limit                     Soft Limit   Hard Limit   Units\n"
              "Max open files            1024         4096         files\n"
              "Max locked memory         unlimited    unlimited    bytes\n")  # fmt: skip
        f = m.one("open-files-limit")
        assert f.severity == "warn"
        assert f"/proc/{os.getpid()}/limits (the lab daemon)" in f.evidence
        m.limits[resource.RLIMIT_MEMLOCK] = (MiB, MiB)  # this process's: not read
        assert m.one("memlock-limit").severity == "ok"
    finally:
        lock.release()


# -- row 18: memlock -------------------------------------------------------------------


def mlock_lab(m: Machine, tmp_path: Path, size: int) -> LabConfig:
    model = write(m.root, "/models/m.gguf", b"GGUF")
    os.truncate(model, size)
    return lab_toml(tmp_path, '[deployments.chat]\nengine = "llamacpp"\n'
                    'model = "/models/m.gguf"\nargs = { mlock = true }\n')  # fmt: skip


def test_mlock_deployment_above_the_limit_fails(m: Machine, tmp_path: Path) -> None:
    lab = mlock_lab(m, tmp_path, 256 * MiB)
    m.limits[resource.RLIMIT_MEMLOCK] = (128 * MiB, 128 * MiB)
    f = m.one("memlock-limit", lab)
    assert f.severity == "fail"
    assert "LimitMEMLOCK=infinity" in f.remedy and "drop mlock" in f.remedy
    assert "256.00 MiB" in f.message and "chat" in f.message


def test_mlock_deployment_within_the_limit_is_ok(m: Machine, tmp_path: Path) -> None:
    lab = mlock_lab(m, tmp_path, 256 * MiB)
    m.limits[resource.RLIMIT_MEMLOCK] = (512 * MiB, 512 * MiB)
    assert m.one("memlock-limit", lab).severity == "ok"
    m.limits[resource.RLIMIT_MEMLOCK] = (INF, INF)
    assert m.one("memlock-limit", lab).severity == "ok"


def test_low_memlock_without_mlock_warns(m: Machine) -> None:
    m.limits[resource.RLIMIT_MEMLOCK] = (8 * MiB, 8 * MiB)
    f = m.one("memlock-limit")
    assert f.severity == "warn"
    assert "LimitMEMLOCK=infinity" in f.remedy


# -- row 19: the Hugging Face token ----------------------------------------------------

VLLM_LAB = '[deployments.chat]\nengine = "vllm"\nmodel = "meta-llama/Llama-3.1-8B-Instruct"\n'


@pytest.mark.parametrize("where", ["env", "file"])
def test_a_token_is_ok_and_never_shown(m: Machine, tmp_path: Path, where: str) -> None:
    token = "hf_" + "AbCdEf0123456789" * 2
    if where == "env":
        m.env["HF_TOKEN"] = token
    else:
        m.env["HF_HOME"] = "/data/hf"
        write(m.root, "/data/hf/token", token + "\n")
    f = m.one("hf-token-missing", lab_toml(tmp_path, VLLM_LAB))
    assert f.severity == "ok"
    assert token not in json.dumps(f.to_json())
    assert "hf_…" in f.evidence and f"{len(token)} characters" in f.evidence
    assert ("$HF_TOKEN" if where == "env" else "/data/hf/token") in f.message


def test_no_token_while_vllm_reads_hub_repos_is_info(m: Machine, tmp_path: Path) -> None:
    f = m.one("hf-token-missing", lab_toml(tmp_path, VLLM_LAB))
    assert f.severity == "info"
    assert "hf auth login" in f.remedy and "HF_TOKEN" in f.remedy
    assert "chat" in f.message
    write(m.root, "/home/lab/.cache/huggingface/token", "hf_" + "x1" * 16)
    assert m.one("hf-token-missing", lab_toml(tmp_path, VLLM_LAB)).severity == "ok"


def test_no_token_and_no_hub_deployment_is_ok(m: Machine, tmp_path: Path) -> None:
    lab = lab_toml(tmp_path, '[deployments.twin]\nengine = "sim"\nmodel = "Qwen/Qwen3-8B"\n')
    assert m.one("hf-token-missing", lab).severity == "ok"


# -- row 20: partial downloads ---------------------------------------------------------


def cache_lab(tmp_path: Path, extra: str = "") -> tuple[LabConfig, Path]:
    cache = tmp_path / "hub"
    cache.mkdir(exist_ok=True)
    return lab_toml(tmp_path, f'[models]\nhf_cache = "{cache}"\n{extra}'), cache


def test_stale_partial_download_warns(m: Machine, tmp_path: Path) -> None:
    lab, cache = cache_lab(tmp_path)
    d = hub_repo(cache, "org/half", {"config.json": b"{}"}, partial=b"y" * 5000)
    blob = next((d / "blobs").glob("*.incomplete"))
    os.utime(blob, (NOW - 7200, NOW - 7200))
    f = m.one("partial-downloads", lab)
    assert f.severity == "warn"
    assert "labctl models prune" in f.remedy and "labctl models pull org/half" in f.remedy
    assert "org/half" in f.message and ".incomplete" in f.evidence


def test_recent_partial_download_is_info(m: Machine, tmp_path: Path) -> None:
    lab, cache = cache_lab(tmp_path)
    d = hub_repo(cache, "org/half", {"config.json": b"{}"}, partial=b"y" * 5000)
    os.utime(next((d / "blobs").glob("*.incomplete")), (NOW - 60, NOW - 60))
    f = m.one("partial-downloads", lab)
    assert f.severity == "info"
    assert "labctl models pull org/half" in f.remedy


def test_cache_without_partial_downloads_is_ok(m: Machine, tmp_path: Path) -> None:
    lab, cache = cache_lab(tmp_path)
    hub_repo(cache, "org/whole", {"config.json": b"{}", "model.safetensors": b"x" * 100})
    assert m.one("partial-downloads", lab).severity == "ok"
    missing = lab_toml(tmp_path, f'[models]\nhf_cache = "{tmp_path / "none"}"\n')
    assert "no hub cache" in m.skip("partial-downloads", missing)


# -- row 21: the cache's filesystem ----------------------------------------------------


def mountinfo(*mounts: tuple[str, str, str]) -> str:
    lines = ["22 1 0:21 / / rw,relatime - ext4 /dev/nvme0n1p2 rw"]
    lines += [f"{30 + i} 22 0:{40 + i} / {point} rw - {fs} {source} rw"
              for i, (point, fs, source) in enumerate(mounts)]  # fmt: skip
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("fs", "fix"), [("nfs4", "safetensors-load-strategy eager"),
                                         ("tmpfs", "local disk")])  # fmt: skip
def test_cache_on_network_or_ram_warns(m: Machine, tmp_path: Path, fs: str, fix: str) -> None:
    lab, cache = cache_lab(tmp_path)
    write(m.root, "/proc/self/mountinfo", mountinfo((os.path.realpath(cache), fs, "nas:/models")))
    f = m.one("model-cache-network-fs", lab)
    assert f.severity == "warn"
    assert fix in f.remedy
    assert fs in f.message and fs in f.evidence


def test_gguf_on_nfs_warns_and_local_cache_is_ok(m: Machine, tmp_path: Path) -> None:
    lab = lab_toml(tmp_path, f'[models]\nhf_cache = "{tmp_path / "hub"}"\n'
                   '[deployments.chat]\nengine = "llamacpp"\nmodel = "/nas/m.gguf"\n')  # fmt: skip
    write(m.root, "/proc/self/mountinfo", mountinfo(("/nas", "nfs", "nas:/export")))
    f = m.one("model-cache-network-fs", lab)
    assert f.severity == "warn" and "deployments.chat.model" in f.message
    write(m.root, "/proc/self/mountinfo", mountinfo(("/nas", "xfs", "/dev/sdb1")))
    f = m.one("model-cache-network-fs", lab)
    assert (f.severity, f.remedy) == ("ok", "")
    assert "ext4" in f.message


# -- host facts ------------------------------------------------------------------------


def test_clock_unsynchronized_warns(m: Machine) -> None:
    fake_exe(m.bin, "timedatectl", 'echo "no"')
    f = m.one("clock-unsynchronized")
    assert f.severity == "warn"
    assert "sudo timedatectl set-ntp true" in f.remedy


def test_clock_synchronized_is_ok_or_unknown_skips(m: Machine, tmp_path: Path) -> None:
    assert "timedatectl" in m.skip("clock-unsynchronized")
    write(m.root, "/run/systemd/timesync/synchronized", "")
    assert m.one("clock-unsynchronized").severity == "ok"
    fake_exe(m.bin, "timedatectl", 'echo "yes"')
    f = m.one("clock-unsynchronized")
    assert f.severity == "ok" and "NTPSynchronized --value: yes" in f.evidence


def test_transparent_hugepages_and_memory_are_info(m: Machine) -> None:
    assert "transparent hugepages" in m.skip("transparent-hugepages")
    assert "meminfo" in m.skip("host-memory")
    write(m.root, "/sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n")
    write(m.root, "/proc/meminfo",
          "MemTotal:       65536000 kB\nMemAvailable:   32768000 kB\nSwapTotal: 0 kB\n")  # fmt: skip
    thp = m.one("transparent-hugepages")
    assert thp.severity == "info" and "madvise" in thp.message
    mem = m.one("host-memory")
    assert mem.severity == "info" and "no swap" in mem.message and "62.50 GiB" in mem.message


def test_fixture_host_reads_nothing_of_this_machine(m: Machine) -> None:
    """An empty fixture root: the kernel checks skip rather than read the real /proc."""
    for code in ("secure-boot-unsigned-module", "nvidia-uvm-missing", "host-memory",
                 "transparent-hugepages", "model-cache-network-fs"):  # fmt: skip
        m.skip(code)
