"""The simulated machine of a $LABCTL_HOME: which card `sim serve --gpu` runs on, how
`labctl gpus --sim-gpus` replaces it, and the one total every surface shows for a card."""

from __future__ import annotations

from collections.abc import Iterator
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
import pytest

from labctl.catalog.gpus import gpu
from labctl.cli.main import cli
from labctl.cli.sim import machine_gpu
from labctl.errors import CatalogError, UsageError
from labctl.gpu.sim import SimBackend, SimMachine, describe
from labctl.units import GiB, MiB


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("LABCTL_HOME", str(path))
    return path


@pytest.fixture
def held(home: Path) -> Iterator[SimMachine]:
    """This process holds 1 GiB on the home's simulated GPU 0 (the default RTX 3090)."""
    machine = SimMachine(home)
    machine.allocate(0, GiB, name="twin")
    try:
        yield machine
    finally:
        machine.release()


def labctl(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, list(args))


def test_describe_counts_runs_of_one_gpu() -> None:
    assert describe(["rtx-3090"]) == "1× rtx-3090"
    assert describe(["rtx-3090", "rtx-3090", "h100-sxm"]) == "2× rtx-3090 + 1× h100-sxm"
    assert describe([]) == "no GPU"


def test_sim_serve_gpu_makes_the_machine_of_a_fresh_home(home: Path) -> None:
    machine = SimMachine(home)
    assert machine.configured() is None
    assert machine_gpu(machine, "H100-SXM", 0) == "h100-sxm"
    assert machine.configured() == ["h100-sxm"]
    assert [d.spec.id for d in machine.devices()] == ["h100-sxm"]
    # The twin then sees the card it plans for: no free-memory error about a 23.58 GiB card.
    assert machine.free_bytes(0) == (gpu("h100-sxm").cuda_total_bytes,) * 2


def test_sim_serve_gpu_on_a_later_index_makes_that_many(tmp_path: Path) -> None:
    machine = SimMachine(tmp_path)
    assert machine_gpu(machine, "l4", 2) == "l4"
    assert machine.configured() == ["l4", "l4", "l4"]


def test_sim_serve_without_gpu_runs_as_the_machines_card(tmp_path: Path) -> None:
    fresh = SimMachine(tmp_path / "a")
    assert machine_gpu(fresh, None, 0) == "rtx-3090"  # the embedded default's card
    assert fresh.configured() == ["rtx-3090"]
    two = SimMachine(tmp_path / "b")
    two.configure([gpu("rtx-3090"), gpu("h100-sxm")])
    assert machine_gpu(two, None, 1) == "h100-sxm"
    assert machine_gpu(two, "h100-sxm", 1) == "h100-sxm"
    assert machine_gpu(two, None, 5) is None  # the twin then fails as CUDA does


def test_sim_serve_gpu_refuses_a_machine_with_another_card(tmp_path: Path) -> None:
    machine = SimMachine(tmp_path)
    machine.devices()  # the embedded default: one RTX 3090
    with pytest.raises(UsageError) as err:
        machine_gpu(machine, "h100-sxm", 0)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert message.startswith("--gpu h100-sxm: found 1× rtx-3090 in " + str(machine.dir))
    for remedy in ("pass --gpu rtx-3090", "a fresh LABCTL_HOME",
                   "'labctl gpus --sim-gpus h100-sxm'"):  # fmt: skip
        assert remedy in message, message
    assert machine.configured() == ["rtx-3090"]  # left as it was
    with pytest.raises(CatalogError, match="unknown GPU 'h100-sx'"):
        machine_gpu(machine, "h100-sx", 0)


def test_sim_serve_gpu_refusal_is_one_line_from_the_cli(home: Path) -> None:
    SimMachine(home).devices()
    result = labctl("sim", "serve", "--gpu", "h100-sxm", "--model", "Qwen/Qwen3-0.6B")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labctl: error: --gpu h100-sxm: found 1×")


def test_gpus_sim_gpus_replaces_the_machine(home: Path) -> None:
    result = labctl("gpus", "--gpu-backend", "sim", "--sim-gpus", "2xl4", "--json")
    assert result.exit_code == 0, result.stderr
    assert [d["catalog_id"] for d in json.loads(result.stdout)["devices"]] == ["l4", "l4"]
    assert SimMachine(home).configured() == ["l4", "l4"]


def test_gpus_sim_gpus_is_refused_while_a_process_holds_memory(held: SimMachine) -> None:
    result = labctl("gpus", "--gpu-backend", "sim", "--sim-gpus", "1xh100-sxm")
    assert result.exit_code == 2
    assert "holds memory on the simulated 1× rtx-3090" in result.stderr, result.stderr
    assert held.configured() == ["rtx-3090"]
    same = labctl("gpus", "--gpu-backend", "sim", "--sim-gpus", "1xrtx-3090", "--json")
    assert same.exit_code == 0, same.stderr  # the machine it already is: nothing to swap


def test_gpus_shows_the_total_the_device_reports(held: SimMachine) -> None:
    (device,) = SimBackend(held).read().devices
    assert device.memory_total_bytes == 24576 * MiB  # what NVML reports for an RTX 3090
    table = labctl("gpus", "--gpu-backend", "sim")
    assert table.exit_code == 0, table.stderr
    assert "24.00 GiB" in table.stdout and "23.58" not in table.stdout, table.stdout
    doc = json.loads(labctl("gpus", "--gpu-backend", "sim", "--json").stdout)
    assert doc["devices"][0]["total_bytes"] == device.memory_total_bytes


def test_status_and_gpus_show_one_total_for_one_card(
    held: SimMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`labctl status` renders what the daemon reads from the same backend (its _gpus)."""
    (device,) = SimBackend(held).read().devices
    doc = {"url": "http://127.0.0.1:8080", "pid": 1, "config": "embedded default",
           "gpu_backend": "sim", "deployments": [], "serving": {}, "alerts": [],
           "gpus": [{"index": 0, "name": device.name,
                     "memory_total_bytes": device.memory_total_bytes,
                     "memory_by_deployment": {"chat": GiB}}]}  # fmt: skip
    monkeypatch.setattr("labctl.cli.lab.call", lambda *args, **kwargs: doc)
    status = labctl("status")
    assert status.exit_code == 0, status.stderr
    assert "1.00 of 24.00 GiB" in status.stdout, status.stdout
    assert "24.00 GiB" in labctl("gpus", "--gpu-backend", "sim").stdout


def test_gpus_sim_gpus_rewrites_a_damaged_device_list(home: Path) -> None:
    (home / "sim-gpus").mkdir(parents=True)
    (home / "sim-gpus" / "devices.json").write_text('{"gpus": 3}')
    broken = labctl("gpus", "--gpu-backend", "sim")
    assert broken.exit_code != 0 and "run 'labctl gpus --sim-gpus …'" in broken.stderr
    fixed = labctl("gpus", "--gpu-backend", "sim", "--sim-gpus", "1xl4", "--json")
    assert fixed.exit_code == 0, fixed.stderr
    assert SimMachine(home).configured() == ["l4"]
