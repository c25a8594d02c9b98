"""The doctor's checks of the lab itself, each against a lab.toml that triggers it and one
that does not: engines on a fake PATH, the listen address, the deployments' models in a hub
cache written in huggingface_hub's layout, its free space (a fake statvfs), and the clock
against the state directory."""

from __future__ import annotations

from dataclasses import replace
import os
from pathlib import Path

import pytest
from tests.doctorhost import NOW, fake_exe, hub_repo, lab_toml

from labctl.catalog.models import resolve
from labctl.config import LabConfig
from labctl.doctor.finding import Context, Finding, Skip, checks
from labctl.doctor.host import HostView
from labctl.fit.weights import plan_weights
from labctl.units import GiB, MiB, format_bytes

LAB_CODES = ("engine-missing", "listen-exposed", "model-not-cached", "model-cache-space",
             "clock-went-back")  # fmt: skip


def statvfs(free: int, total: int = 1 << 40) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, total // 4096, free // 4096, free // 4096,
                              1000, 1000, 1000, 0, 255))  # fmt: skip


class Lab:
    """A fixture host for the lab's checks: a PATH folder, a statvfs answer, a clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.free = 100 * GiB
        self.cache = tmp_path / "hub"
        self.cache.mkdir()

    def config(self, deployments: str = "", models: str = "") -> LabConfig:
        return lab_toml(self.tmp, f'[models]\nhf_cache = "{self.cache}"\n{models}\n{deployments}')

    def run(self, code: str, lab: LabConfig | None) -> list[Finding]:
        view = HostView(root=self.root, path=str(self.bin), nvml=None, env={"PATH": "/nowhere"},
                        statvfs=lambda _: statvfs(self.free), clock=lambda: NOW)  # fmt: skip
        found = list(checks()[code].run(Context(view, lab)))
        assert found and all(f.code == code for f in found)
        return found

    def one(self, code: str, lab: LabConfig | None) -> Finding:
        (f,) = self.run(code, lab)
        return f

    def skip(self, code: str, lab: LabConfig | None) -> str:
        with pytest.raises(Skip) as info:
            self.run(code, lab)
        return str(info.value)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "state"))
    return Lab(tmp_path)


@pytest.mark.parametrize("code", LAB_CODES)
def test_no_lab_config_skips(lab: Lab, code: str) -> None:
    assert lab.skip(code, None) == "no lab config"


# -- engines ---------------------------------------------------------------------------

LLAMA = '[deployments.chat]\nengine = "llamacpp"\nmodel = "/m/model.gguf"\n'


def test_missing_llama_server_fails_naming_the_fix(lab: Lab) -> None:
    f = lab.one("engine-missing", lab.config(LLAMA))
    assert f.severity == "fail"
    assert f.place == "lab: deployment chat"
    assert "llama-server" in f.message and "not on PATH" in f.message
    assert "deployments.chat.binary" in f.remedy and "llama-server" in f.remedy


def test_llama_server_on_path_is_ok_with_its_version(lab: Lab) -> None:
    fake_exe(lab.bin, "llama-server",
             'echo "version: 6500 (abc1234)" >&2; echo "built with cc for x86_64" >&2')  # fmt: skip
    f = lab.one("engine-missing", lab.config(LLAMA))
    assert (f.severity, f.remedy) == ("ok", "")
    assert "version: 6500 (abc1234)" in f.message


def test_engine_that_does_not_start_fails(lab: Lab) -> None:
    fake_exe(lab.bin, "llama-server", 'echo "llama-server: error while loading shared '
             'libraries: libcudart.so.12: cannot open shared object file" >&2; exit 127')  # fmt: skip
    f = lab.one("engine-missing", lab.config(LLAMA))
    assert f.severity == "fail"
    assert "exits 127" in f.message and "libcudart.so.12" in f.evidence
    assert "deployments.chat.binary" in f.remedy


def test_binary_setting_is_what_is_checked(lab: Lab) -> None:
    built = fake_exe(lab.tmp / "build", "llama-server", 'echo "version: 7000 (def)"')
    config = lab.config(LLAMA + f'binary = "{built}"\n')
    f = lab.one("engine-missing", config)
    assert f.severity == "ok" and str(built) in f.message and "7000" in f.message


def test_vllm_version_from_its_package_without_running_it(lab: Lab) -> None:
    venv = lab.tmp / "venv"
    fake_exe(venv / "bin", "vllm", "exit 3")  # running it would fail the check
    (venv / "lib" / "python3.11" / "site-packages" / "vllm-0.11.1.dist-info").mkdir(parents=True)
    config = lab.config(f'[deployments.chat]\nengine = "vllm"\nmodel = "org/m"\n'
                        f'binary = "{venv / "bin" / "vllm"}"\n')  # fmt: skip
    f = lab.one("engine-missing", config)
    assert f.severity == "ok" and "vllm 0.11.1" in f.message
    assert "vllm-0.11.1.dist-info" in f.evidence


def test_vllm_and_whisper_server_by_running_them(lab: Lab) -> None:
    fake_exe(lab.bin, "vllm", 'echo "0.10.2"')
    fake_exe(lab.bin, "whisper-server", 'echo "usage: whisper-server [options]"')
    config = lab.config('[deployments.chat]\nengine = "vllm"\nmodel = "org/m"\n'
                        '[deployments.asr]\nengine = "whispercpp"\nmodel = "/m/ggml.bin"\n')  # fmt: skip
    found = {f.place: f for f in lab.run("engine-missing", config)}
    assert found["lab: deployment chat"].severity == "ok"
    assert "vllm" in found["lab: deployment chat"].message
    assert found["lab: deployment asr"].severity == "ok"
    assert "prints no version" in found["lab: deployment asr"].message


def test_command_engine_missing_and_unused_engines_unchecked(lab: Lab) -> None:
    config = lab.config('[deployments.twin]\nengine = "sim"\nmodel = "Qwen/Qwen3-8B"\n'
                        '[deployments.own]\nengine = "command"\n'
                        'command = ["my-server", "--port", "{port}"]\n')  # fmt: skip
    (f,) = lab.run("engine-missing", config)
    assert f.severity == "fail" and f.place == "lab: deployment own"
    assert "deployments.own.command[0]" in f.remedy
    fake_exe(lab.bin, "my-server", "exit 0")
    assert lab.one("engine-missing", config).severity == "ok"


def test_a_twin_only_lab_checks_no_engine(lab: Lab) -> None:
    config = lab.config('[deployments.twin]\nengine = "sim"\nmodel = "Qwen/Qwen3-8B"\n')
    assert "twin is built in" in lab.skip("engine-missing", config)


# -- the listener ----------------------------------------------------------------------


def test_listen_beyond_loopback_without_keys_fails(lab: Lab) -> None:
    exposed = replace(lab.config(), listen="0.0.0.0:8080")  # as `labctl up --listen` may
    f = lab.one("listen-exposed", exposed)
    assert f.severity == "fail"
    assert "[[gateway.keys]]" in f.remedy and "gateway.admin_token" in f.remedy
    assert '"127.0.0.1:8080"' in f.remedy
    assert "0.0.0.0" in f.message


def test_listen_on_loopback_or_with_keys_is_ok(lab: Lab) -> None:
    f = lab.one("listen-exposed", lab.config())
    assert f.severity == "ok" and "loopback" in f.message
    keyed = lab_toml(lab.tmp, '[lab]\nlisten = "0.0.0.0:8080"\n[gateway]\n'
                     'keys = [{ key = "sk-team-0123456789" }]\n'
                     'admin_token = "an-admin-token-0123456789"\n')  # fmt: skip
    f = lab.one("listen-exposed", keyed)
    assert f.severity == "ok" and "1 API key(s)" in f.message


# -- the deployments' models -----------------------------------------------------------

WHOLE = {"config.json": b"{}", "model.safetensors": b"x" * 100, "tokenizer.json": b"{}"}


def vllm(repo: str, name: str = "chat") -> str:
    return f'[deployments.{name}]\nengine = "vllm"\nmodel = "{repo}"\n'


def test_model_not_in_the_cache_fails_naming_the_pull(lab: Lab) -> None:
    hub_repo(lab.cache, "org/half", {"config.json": b"{}"},
             tree={"config.json": 2, "model.safetensors": 3000, "README.md": 10})  # fmt: skip
    f = lab.one("model-not-cached", lab.config(vllm("org/half")))
    assert f.severity == "fail" and f.place == "lab: deployment chat"
    assert "`labctl models pull org/half`" in f.remedy
    assert "2.93 KiB to download" in f.message and "about" not in f.message
    assert "model.safetensors" in f.evidence


def test_model_whole_in_the_cache_is_ok(lab: Lab) -> None:
    hub_repo(lab.cache, "org/whole", WHOLE)
    f = lab.one("model-not-cached", lab.config(vllm("org/whole")))
    assert (f.severity, f.remedy) == ("ok", "")


def test_model_missing_with_pull_on_is_info(lab: Lab) -> None:
    f = lab.one("model-not-cached", lab.config(vllm("Qwen/Qwen3-8B"), models="pull = true"))
    assert f.severity == "info" and "pulls it first" in f.message
    weights = plan_weights(resolve("Qwen/Qwen3-8B")).weights_bytes
    assert f"about {format_bytes(weights)} to download" in f.message


def test_twin_and_llama_models_are_not_cache_checked(lab: Lab) -> None:
    config = lab.config('[deployments.twin]\nengine = "sim"\nmodel = "org/none"\n' + LLAMA)
    assert "no vllm deployment" in lab.skip("model-not-cached", config)


def test_cache_disk_almost_full_fails(lab: Lab) -> None:
    lab.free = 500 * MiB
    f = lab.one("model-cache-space", lab.config())
    assert f.severity == "fail"
    assert "labctl models prune" in f.remedy and "hf_cache" in f.remedy


def test_models_to_download_larger_than_free_space_warn(lab: Lab) -> None:
    lab.free = plan_weights(resolve("Qwen/Qwen3-8B")).weights_bytes // 2
    config = lab.config(vllm("Qwen/Qwen3-8B"))
    f = lab.one("model-cache-space", config)
    assert f.severity == "warn"
    assert "Qwen/Qwen3-8B" in f.message and "labctl models rm" in f.remedy
    lab.free = 100 * GiB
    f = lab.one("model-cache-space", config)
    assert f.severity == "ok" and "Qwen/Qwen3-8B" in f.message


# -- the clock -------------------------------------------------------------------------


def test_state_file_from_the_future_warns(lab: Lab) -> None:
    home = lab.tmp / "state"
    (home / "logs").mkdir(parents=True)
    (home / "disk.json").write_text("{}")
    os.utime(home / "disk.json", (NOW - 100, NOW - 100))
    (home / "logs" / "chat.log").write_text("x")
    os.utime(home / "logs" / "chat.log", (NOW + 3600, NOW + 3600))
    f = lab.one("clock-went-back", lab.config())
    assert f.severity == "warn"
    assert "chat.log" in f.message and "3600 s in the future" in f.message
    assert "sudo timedatectl set-ntp true" in f.remedy


def test_state_files_in_the_past_are_ok(lab: Lab) -> None:
    assert "no state directory" in lab.skip("clock-went-back", lab.config())
    home = lab.tmp / "state"
    home.mkdir()
    (home / "journal.db").write_text("")
    os.utime(home / "journal.db", (NOW - 5, NOW - 5))
    f = lab.one("clock-went-back", lab.config())
    assert f.severity == "ok" and "journal.db" in f.message
