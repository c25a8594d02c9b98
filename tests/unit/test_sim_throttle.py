"""Clock event reasons provoked on a simulated GPU: read by the sim backend on that GPU only,
ended when the process that provoked them exits or their time is up."""

from __future__ import annotations

from pathlib import Path
import subprocess
import time
from typing import Any

from click.testing import CliRunner
import pytest

from labctl.catalog.gpus import gpu
from labctl.cli.main import cli
from labctl.errors import GpuError, UsageError
from labctl.gpu.sim import SimBackend, SimMachine, clock_event_bits

IDLE = 0x1
POWER_CAP = 0x4
THERMAL = 0x20


@pytest.fixture
def machine(tmp_path: Path) -> SimMachine:
    m = SimMachine(tmp_path / "home")
    m.configure([gpu("rtx-3090"), gpu("rtx-3090")])
    return m


def reasons(machine: SimMachine) -> list[int | None]:
    return [d.clock_event_reasons for d in SimBackend(machine).read().devices]


def test_names_become_nvml_bits() -> None:
    assert clock_event_bits("sw_power_cap") == POWER_CAP
    assert clock_event_bits("sw_power_cap, sw_thermal_slowdown") == POWER_CAP | THERMAL
    for bad in ("", "thermal", "sw_power_cap,,hw_slowdown"):
        with pytest.raises(UsageError, match="is not a clock event reason; name one or more"):
            clock_event_bits(bad)


def test_reasons_show_on_the_named_gpu_only(machine: SimMachine) -> None:
    assert reasons(machine) == [IDLE, IDLE]
    machine.provoke(1, POWER_CAP | THERMAL)
    try:
        assert reasons(machine) == [IDLE, IDLE | POWER_CAP | THERMAL]
        calm, hot = SimBackend(machine).read().devices
        assert hot.power_watts == hot.power_limit_watts == 350
        assert hot.temperature_c == 88.0
        assert calm.power_watts == 35 and calm.temperature_c == 32
    finally:
        machine.calm()
    assert reasons(machine) == [IDLE, IDLE]


def test_a_new_provocation_replaces_the_last(machine: SimMachine) -> None:
    machine.provoke(0, POWER_CAP)
    machine.provoke(1, THERMAL)
    try:
        assert reasons(machine) == [IDLE, IDLE | THERMAL]
    finally:
        machine.calm()


def test_reasons_end_when_their_process_exits(machine: SimMachine) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        machine.provoke(0, POWER_CAP, pid=proc.pid)
        assert reasons(machine) == [IDLE | POWER_CAP, IDLE]
    finally:
        proc.kill()
        proc.wait()
    assert reasons(machine) == [IDLE, IDLE]
    assert not list(machine.events.glob("*.json"))


def test_reasons_end_when_their_time_is_up(machine: SimMachine) -> None:
    machine.provoke(0, THERMAL, seconds=0.1)
    assert reasons(machine) == [IDLE | THERMAL, IDLE]
    time.sleep(0.15)
    assert reasons(machine) == [IDLE, IDLE]
    assert machine.clock_events() == []


def test_a_damaged_entry_is_ignored(machine: SimMachine) -> None:
    machine.events.mkdir(parents=True, exist_ok=True)
    (machine.events / "1.json").write_text('["not", "an", "entry"]')
    assert reasons(machine) == [IDLE, IDLE]


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"index": 2, "bits": POWER_CAP}, GpuError, "there is no simulated GPU 2"),
        ({"index": 0, "bits": 0}, UsageError, "at least one clock event reason"),
        ({"index": 0, "bits": POWER_CAP, "seconds": 0}, UsageError, "a positive time"),
        ({"index": 0, "bits": POWER_CAP, "pid": 2**22 + 1}, GpuError, "is not running"),
    ],
    ids=["no-gpu", "no-reason", "no-time", "dead-pid"],
)  # fmt: skip
def test_bad_provocations_are_refused(
    machine: SimMachine, kw: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        machine.provoke(**kw)


def test_the_command_holds_the_reasons_for_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LABCTL_HOME", str(home))
    seen: list[list[int | None]] = []
    real = SimMachine.provoke

    def provoke(self: SimMachine, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        seen.append(reasons(self))

    monkeypatch.setattr(SimMachine, "provoke", provoke)
    result = CliRunner().invoke(cli, ["sim", "throttle", "0", "hw_slowdown", "--for", "50ms"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("READY ")
    assert seen == [[IDLE | 0x8]]
    assert reasons(SimMachine(home)) == [IDLE]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["0", "too_hot"], "'too_hot' is not a clock event reason"),
        (["1", "sw_power_cap"], "there is no simulated GPU 1; this machine has GPUs 0–0"),
        (["0", "sw_power_cap", "--for", "soon"], "--for: 'soon' is not a duration"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["sim", "throttle", *args])
    assert result.exit_code != 0
    assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
