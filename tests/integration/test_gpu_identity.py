"""GPU identity in a running lab on two different simulated cards (an RTX 3090 and a 4090):
engines see NVML's numbering, lab.toml may name a GPU by UUID or PCI bus id, an unknown one
is refused before anything starts, and an engine that takes another GPU fails its start."""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import sys
from typing import Any

from labctl.gpu.sim import SimBackend, SimMachine, parse_sim_gpus
from tests.integration.conftest import Run
from tests.integration.lab import FAST_TWIN, Lab, engine_pids, raw

SIM_GPUS = "1xrtx-3090,1xrtx-4090"
SERVER = Path(__file__).with_name("env_server.py")


def two_cards(home: Path) -> list[tuple[str, str]]:
    """The simulated machine the lab will run on: each GPU's (UUID, PCI bus id)."""
    machine = SimMachine(home)
    return [(d.uuid, d.pci_bus_id) for d in machine.configure(parse_sim_gpus(SIM_GPUS))]


def write(tmp_path: Path, deployment: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(f'[lab]\ngpu_backend = "sim"\nsim_gpus = "{SIM_GPUS}"\n\n{deployment}')
    return path


def recorder(out: Path, gpus: str, hold: int | None = None) -> str:
    held = f', "--hold-gpu", "{hold}"' if hold is not None else ""
    return (
        f'[deployments.env]\nengine = "command"\ngpus = {gpus}\nstop_grace = 5\n'
        f'command = ["{sys.executable}", "{SERVER}", "--host", "{{host}}", "--port", "{{port}}", '
        f'"--out", "{out}"{held}]\n'
    )


def twin(gpus: str) -> str:
    return (
        '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
        f"gpus = {gpus}\nargs = {FAST_TWIN}\n"
    )


def holders(home: Path) -> dict[int, list[int]]:
    """GPU index → the pids holding memory there, as the sim ledger says."""
    reading = SimBackend(SimMachine(home)).read()
    return {d.index: [p.pid for p in d.processes] for d in reading.devices}


def test_a_command_engine_for_gpu_1_sees_pci_order_and_gpu_1(
    tmp_path: Path, lab: Lab, labctl: Callable[..., Run]
) -> None:
    cards = two_cards(lab.home)
    out = tmp_path / "env.json"
    d = lab.up("--config", str(write(tmp_path, recorder(out, "[1]"))))
    d.wait_state("env", "ready")
    env = json.loads(out.read_text())
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "1"
    history = labctl("history", "env", "--url", d.url, "--json", home=lab.home, check=True)
    doc: Any = history.json()
    assert doc["deploys"][0]["gpu_uuids"] == [cards[1][0]]  # journaled: the 4090's UUID


def test_a_twin_named_by_uuid_prefix_or_bus_id_runs_on_that_gpu(
    tmp_path: Path, lab: Lab, labctl: Callable[..., Run]
) -> None:
    (uuid, bus), other = two_cards(lab.home)[1], two_cards(lab.home)[0][0]
    prefix = next(uuid[:n] for n in range(5, len(uuid)) if not other.startswith(uuid[:n]))
    d = lab.up("--config", str(write(tmp_path, twin(f'["{prefix}"]'))))
    ready = d.wait_state("chat", "ready")
    assert ready["gpus"] == [1]
    held = holders(lab.home)
    assert held[1] and not held[0]  # the twin's memory is on the 4090, the GPU named
    # the same GPU by its bus id, in the form lab.toml users copy from lspci: a deploy of it
    nvml_form = bus.lower().replace("00000000:", "0000:")
    record = d.api("POST", "/api/deployments/chat/deploy",
                   {"set": {"gpus": [nvml_form], "max_model_len": 2048}})  # fmt: skip
    assert record["outcome"] == "committed" and record["gpu_uuids"] == [uuid]
    held = holders(lab.home)
    assert held[1] and not held[0]


def test_an_unknown_uuid_is_refused_before_anything_starts(tmp_path: Path, lab: Lab) -> None:
    cards = two_cards(lab.home)
    d = lab.up("--config", str(write(tmp_path, twin('["GPU-ffffffff"]'))), wait=False)
    assert d.proc.wait(60) != 0
    err = d.errors()
    assert (
        'deployments.chat.gpus = ["GPU-ffffffff"]: no GPU has that UUID (or one that begins so); '
        f"the GPUs here are 0: NVIDIA GeForce RTX 3090 {cards[0][0]} ({cards[0][1]}), "
        f"1: NVIDIA GeForce RTX 4090 {cards[1][0]} ({cards[1][1]})"
    ) in err, err
    assert not engine_pids(lab.home) and not (lab.home / "logs").exists()


def test_a_deploy_to_an_unknown_bus_id_is_refused_and_the_old_revision_serves(
    tmp_path: Path, lab: Lab
) -> None:
    d = lab.up("--config", str(write(tmp_path, twin("[0]"))))
    before = d.wait_state("chat", "ready")
    status, _, body = raw(d, "POST", "/api/deployments/chat/deploy",
                          json.dumps({"set": {"gpus": ["0000:99:00.0"]}}).encode(),
                          {"Authorization": f"Bearer {d.token}",
                           "Content-Type": "application/json"})  # fmt: skip
    message = json.loads(body)["error"]["message"]
    assert status == 409 and message.startswith(
        'deployments.chat.gpus = ["0000:99:00.0"]: no GPU has that PCI bus id; the GPUs here '
        "are 0: NVIDIA GeForce RTX 3090 GPU-"
    ), message
    after = d.deployment("chat")
    assert after["state"] == "ready" and after["revision"] == before["revision"]


def test_an_engine_on_a_gpu_it_was_not_planned_for_fails_its_start(
    tmp_path: Path, lab: Lab
) -> None:
    cards = two_cards(lab.home)
    out = tmp_path / "env.json"
    d = lab.up("--config", str(write(tmp_path, recorder(out, "[1]", hold=0))))
    failed = d.wait_state("env", "failed")
    assert "holds memory on GPU 0: NVIDIA GeForce RTX 3090 " + cards[0][0] in failed["error"]
    assert "not on the GPU it was planned for (1: NVIDIA GeForce RTX 4090 " in failed["error"]
    assert not holders(lab.home)[0]  # the failed start was stopped and its memory released
