"""`labctl export systemd`'s unit and drop-in, as text, from a LabConfig and the host's paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from labctl.config import DeploymentSpec, GatewayConfig, LabConfig, ModelsConfig, default_config
from labctl.errors import UsageError
from labctl.export.systemd import (
    DROPIN,
    UNIT,
    Host,
    dropin_text,
    environment,
    exec_line,
    files,
    search_path,
    start_timeout,
    stop_timeout,
    unit_text,
)

HOST = Host(
    command=("/opt/labctl/bin/labctl", "up", "--config", "/etc/labctl/lab.toml"),
    home=Path("/var/lib/labctl"),
    user="alice",
    env={"HF_HUB_CACHE": "/data/hf/hub", "PATH": "/opt/vllm/bin:/usr/bin"},
)


def keys(text: str) -> dict[str, list[str]]:
    """Each ``Key=`` of a unit file and its values, in order (comments left out)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def lab(*specs: DeploymentSpec, drain: float = 60.0, pull: bool = False) -> LabConfig:
    return dataclasses.replace(
        default_config(), deployments=specs, source="/etc/labctl/lab.toml",
        gateway=GatewayConfig(drain_timeout=drain), models=ModelsConfig(pull=pull),
    )  # fmt: skip


def test_the_unit_has_every_key_the_issue_names() -> None:
    unit = keys(unit_text(default_config(), HOST))
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/opt/labctl/bin/labctl up --config /etc/labctl/lab.toml"]
    assert unit["KillMode"] == ["mixed"] and unit["Restart"] == ["on-failure"]
    assert unit["After"] == ["network-online.target nvidia-persistenced.service"]
    assert unit["Wants"] == ["network-online.target nvidia-persistenced.service"]
    assert unit["LimitNOFILE"] == ["1048576"] and unit["LimitMEMLOCK"] == ["infinity"]
    assert unit["Environment"] == ["LABCTL_HOME=/var/lib/labctl"]
    assert unit["WantedBy"] == ["multi-user.target"]
    # the embedded default: one twin, 30 s stop grace, 60 s drain
    assert unit["TimeoutStopSec"] == ["120s"] and unit["TimeoutStartSec"] == ["1920s"]
    assert "(embedded default)" in unit["Description"][0]


def test_stop_timeout_covers_the_drain_and_the_longest_stop_grace() -> None:
    a = DeploymentSpec(name="a", engine="sim", stop_grace=10)
    b = DeploymentSpec(name="b", engine="sim", stop_grace=45.5)
    assert stop_timeout(lab(a, b, drain=20)) == "96s"  # 20 + 45.5 + 30, rounded up
    assert stop_timeout(lab(drain=5)) == "35s"  # no deployments: the drain and the margin


def test_start_timeout_adds_every_start_in_turn() -> None:
    a = DeploymentSpec(name="a", engine="sim", startup_timeout=600)
    b = DeploymentSpec(name="b", engine="sim")  # scaled to its weights: 30 min assumed
    assert start_timeout(lab(a, b)) == f"{120 + 600 + 1800}s"
    assert start_timeout(lab(a, pull=True)) == "infinity"  # a pull takes what the network takes


def test_a_lab_toml_names_its_source_and_the_embedded_default_has_no_config() -> None:
    text = unit_text(lab(), dataclasses.replace(HOST, command=("/usr/bin/labctl", "up")))
    assert "Description=labctl lab (/etc/labctl/lab.toml)" in text
    assert "ExecStart=/usr/bin/labctl up\n" in text


def test_the_dropin_holds_the_users_account_and_paths() -> None:
    text = dropin_text(HOST)
    assert keys(text) == {
        "User": ["alice"],
        "Environment": ["HF_HUB_CACHE=/data/hf/hub", "PATH=/opt/vllm/bin:/usr/bin"],
    }
    assert text.splitlines()[3] == "[Service]"
    assert "User=" not in dropin_text(dataclasses.replace(HOST, user=None))  # root


def test_files_are_the_unit_and_its_dropin() -> None:
    assert [name for name, _ in files(default_config(), HOST)] == [UNIT, DROPIN]
    assert DROPIN == "labctl.service.d/paths.conf"


def test_odd_characters_are_escaped_as_systemd_reads_them() -> None:
    assert exec_line(["/opt/my labs/labctl", "up", "--config", "/x/100%/$HOME.toml"]) == (
        '"/opt/my labs/labctl" up --config /x/100%%/$$HOME.toml'
    )
    assert exec_line(['/a"b\\c']) == '"/a\\"b\\\\c"'
    assert environment("HF_HUB_CACHE", "/m/my models") == 'Environment="HF_HUB_CACHE=/m/my models"'
    assert environment("X", "50%") == "Environment=X=50%%"


def test_a_line_break_is_refused_with_one_line() -> None:
    with pytest.raises(UsageError, match="line break"):
        unit_text(default_config(), dataclasses.replace(HOST, home=Path("/a\nb")))
    with pytest.raises(UsageError, match="line break"):
        dropin_text(dataclasses.replace(HOST, env={"PATH": "/a\n[Service]"}))


def test_search_path_keeps_absolute_folders_once() -> None:
    assert search_path("/a:.:bin::/b:/a:~/x") == "/a:/b"
    assert search_path("") == ""


def test_the_readmes_unit_is_the_one_written() -> None:
    """The README's unit (alice's paths, the embedded default's timeouts) is what
    ``unit_text`` writes for that lab, line for line."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    section = readme.split("### Surviving reboots: the lab as a systemd unit", 1)[1]
    shown = section.split("```ini\n", 1)[1].split("```", 1)[0]
    config = dataclasses.replace(default_config(), source="/home/alice/lab/lab.toml")
    host = Host(command=("/home/alice/.venv/bin/labctl", "up", "--config", config.source),
                home=Path("/home/alice/.local/state/labctl"), user="alice", env={})  # fmt: skip
    written = unit_text(config, host)
    assert shown == written[written.index("[Unit]") :]
