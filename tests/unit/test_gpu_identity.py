"""GPU identity: lab.toml names GPUs by index, UUID or PCI bus id; every adapter gives its
engine NVML's numbering; a ready engine found on a GPU it was not planned for is named."""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import sqlite3
from typing import Any

import pytest
from tests.fakenvml import FakeNvml, geforce_profile, load_h100

from labctl.config import ENGINES, DeploymentSpec, LabConfig
from labctl.deploy.journal import MIGRATIONS, Journal
from labctl.engines import adapter
from labctl.errors import ConfigError
from labctl.gpu.identity import misplaced, resolve, resolve_lab, uuids
from labctl.gpu.nvml import NvmlBackend
from labctl.gpu.sample import DeviceSample, GpuProcess, GpuReading

#: The fake NVML's two different cards, in PCI bus order: an H100 at 00:06.0, an RTX 3090 at
#: 01:00.0 (a CUDA runtime left to its default order would number the H100 first as well,
#: but a machine where the faster card sits on the later bus would not).
RTX_UUID = "GPU-3090aaaa-0000-4000-8000-000000000002"

#: One deployment of each engine, as lab.toml would give it.
TABLES: dict[str, dict[str, Any]] = {
    "vllm": {"engine": "vllm", "model": "Qwen/Qwen3-8B"},
    "llamacpp": {"engine": "llamacpp", "model": "/models/tiny.gguf"},
    "whispercpp": {"engine": "whispercpp", "model": "/models/ggml-base.en.bin"},
    "openvla": {"engine": "openvla", "model": "openvla/openvla-7b"},
    "sim": {"engine": "sim", "model": "Qwen/Qwen3-0.6B"},
    "command": {"engine": "command", "command": ["my-server", "--port", "{port}"]},
}


@pytest.fixture
def devices(shared_dir: Path) -> tuple[DeviceSample, ...]:
    h100 = load_h100(shared_dir)
    backend = NvmlBackend(FakeNvml([h100, geforce_profile(h100)]),
                          host_memory_reader=lambda: (2**37, 2**36))  # fmt: skip
    try:
        return backend.read().devices
    finally:
        backend.close()


def spec(gpus: list[Any], engine: str = "sim", **more: Any) -> DeploymentSpec:
    return DeploymentSpec.from_dict("chat", {**TABLES[engine], "gpus": gpus, **more})


def test_tables_cover_every_engine() -> None:
    assert set(TABLES) == set(ENGINES)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("named", [1, RTX_UUID[:12], "0000:01:00.0", "00000000:01:00.0"])
def test_adapter_env_names_gpu_1_in_pci_bus_order(
    engine: str, named: int | str, devices: tuple[DeviceSample, ...]
) -> None:
    assert [d.name for d in devices] == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 3090"]
    resolved = resolve(spec([named], engine), devices)
    assert resolved.gpus == (1,)
    env = adapter(engine).launch(resolved.to_dict(), "127.0.0.1", 9000, resolved.gpus).env
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "1"
    assert "GGML_VK_VISIBLE_DEVICES" not in env  # Vulkan numbers devices its own way


def test_adapter_env_names_every_gpu_of_a_tensor_parallel_deployment() -> None:
    launch = adapter("vllm").launch(TABLES["vllm"] | {"name": "chat"}, "127.0.0.1", 9000, [1, 0])
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "1,0"


def test_config_takes_uuids_prefixes_mig_and_bus_ids_and_writes_them_back() -> None:
    named = ["GPU-3090aaaa", "0000:01:00.0", "MIG-1f2e3d4c-aaaa-bbbb-cccc-000000000000", 3]
    s = spec(named)
    assert s.gpus == (-1, -1, -1, 3) and s.gpu_names == tuple(named)
    assert s.to_dict()["gpus"] == named and "gpu_names" not in s.to_dict()
    assert DeploymentSpec.from_dict("chat", s.to_dict()) == s  # the journal's round trip
    plain = spec([1, 0])
    assert plain.gpu_names == () and plain.to_dict()["gpus"] == [1, 0]


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (["rtx3090"], r"^deployments.chat.gpus = \['rtx3090'\]: 'rtx3090' is not a GPU index, "
                      r"UUID or PCI bus id; give an index \(0 to 63\), a UUID as `nvidia-smi -L`"),
        (["GPU-"], "'GPU-' is not a GPU index, UUID or PCI bus id"),
        (["0000:01:00"], "'0000:01:00' is not a GPU index"),
        (["0000:01:00.0", "00000000:01:00.0"], "GPU '0000:01:00.0' is listed twice"),
        (["GPU-ABCD", "gpu-abcd"], "GPU 'GPU-ABCD' is listed twice"),
        ([1, 1], r"gpus = \[1, 1\]: GPU 1 is listed twice; list each GPU once"),
        ([1.5], r"give a list of GPU indices \(0 to 63\), e.g. \[0\] or \[0, 1\], or of UUIDs"),
    ],
)  # fmt: skip
def test_config_refuses_what_names_no_gpu(gpus: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(gpus)


def test_config_checks_tensor_parallel_against_gpus_named_by_uuid() -> None:
    with pytest.raises(ConfigError, match=r"with deployments.chat.gpus = \['GPU-ab'\]: vLLM runs"):
        spec(["GPU-ab"], args={"tensor_parallel_size": 2})


def test_resolve_refuses_an_unknown_uuid_naming_the_gpus_here(
    devices: tuple[DeviceSample, ...],
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(spec(["GPU-ffff"]), devices)
    assert str(err.value) == (
        'deployments.chat.gpus = ["GPU-ffff"]: no GPU has that UUID (or one that begins so); '
        "the GPUs here are 0: NVIDIA H100 80GB HBM3 GPU-5eab0000-0000-4000-8000-000000000001 "
        f"(00000000:00:06.0), 1: NVIDIA GeForce RTX 3090 {RTX_UUID} (00000000:01:00.0)"
    )
    with pytest.raises(ConfigError, match=r"no GPU has that PCI bus id; the GPUs here are 0: "):
        resolve(spec(["0000:02:00.0"]), devices)
    with pytest.raises(ConfigError, match=r"MIG instances are not listed by the lab's GPU backend"):
        resolve(spec(["MIG-1f2e3d4c"]), devices)
    with pytest.raises(ConfigError, match=r"no GPU has that UUID .*; this machine has no GPU$"):
        resolve(spec(["GPU-ffff"]), ())


def test_resolve_refuses_an_ambiguous_prefix_and_one_gpu_named_twice(
    devices: tuple[DeviceSample, ...],
) -> None:
    with pytest.raises(ConfigError, match=r"'GPU-3' begins the UUIDs of 2 GPUs \(0: NVIDIA H100 "):
        resolve(spec(["GPU-3"]), [replace(devices[0], uuid="GPU-3aaa"), devices[1]])
    with pytest.raises(ConfigError, match=r"'GPU-3090' and 1 are one GPU \(1: NVIDIA GeForce RTX "
                                          r"3090 .*\); list each GPU once"):  # fmt: skip
        resolve(spec(["GPU-3090", 1]), devices)


def test_resolve_lab_keeps_the_index_messages(devices: tuple[DeviceSample, ...]) -> None:
    lab = LabConfig(deployments=(spec(["GPU-3090", 0]),))
    assert resolve_lab(lab, devices).deployments[0].gpus == (1, 0)
    with pytest.raises(ConfigError, match=r"^deployments.chat.gpus = \['GPU-3090', 2\]: GPU 2 is "
                                          r"beyond the lab's 2 GPUs; use indices 0 to 1"):  # fmt: skip
        resolve_lab(LabConfig(deployments=(spec(["GPU-3090", 2]),)), devices)
    assert uuids(devices, (1, 0)) == [RTX_UUID, devices[0].uuid]


def test_misplaced_names_the_gpu_a_process_is_on_and_the_one_planned(
    devices: tuple[DeviceSample, ...],
) -> None:
    on_h100 = GpuReading("nvml", (replace(devices[0], processes=(GpuProcess(77, 2**30),)),
                                  replace(devices[1], processes=())))  # fmt: skip
    assert misplaced(on_h100, (1,), {77, 78}) == (
        "its process 77 holds memory on GPU 0: NVIDIA H100 80GB HBM3 "
        "GPU-5eab0000-0000-4000-8000-000000000001 (00000000:00:06.0), not on the GPU it was "
        f"planned for (1: NVIDIA GeForce RTX 3090 {RTX_UUID} (00000000:01:00.0))"
    )
    assert misplaced(on_h100, (0,), {77}) is None  # where it was planned
    assert misplaced(on_h100, (1,), {99}) is None  # another's process
    none_listed = GpuReading("nvml", tuple(replace(d, processes=()) for d in devices))
    assert misplaced(none_listed, (1,), {77}) is None  # no list: nothing to confirm


def test_journal_migration_3_records_the_gpus_a_revision_ran_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version={number}")
    db.execute("INSERT INTO deploys (deployment, kind, to_revision, started) "
               "VALUES ('chat', 'deploy', 1, 1.0)")  # fmt: skip
    db.commit()
    db.close()
    j = Journal(path)
    assert j.schema_version == len(MIGRATIONS) == 3
    old = j.history("chat")[0]
    assert old["gpu_uuids"] is None  # written before schema 3
    deploy = j.begin("chat", "deploy", 1, 2)
    j.ran_on(deploy, [RTX_UUID])
    assert j.record(deploy) is not None and j.history("chat")[0]["gpu_uuids"] == [RTX_UUID]
    assert json.loads(json.dumps(j.record(deploy)))["gpu_uuids"] == [RTX_UUID]
    j.close()
