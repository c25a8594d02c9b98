"""Engines in containers with real Podman: an image built here from the project's own
llama-server, deployed, swapped with a host process and back under load, found again by its
labels after the daemon is killed, and gone after `labctl down`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import json
import os
from pathlib import Path
import signal
import time
from typing import Any

import pytest

from labctl.runtime.container import Runtime
from tests.containerimage import PODMAN, llama_image, podman
from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, alive, engine_pids, get, wait_for
from tests.integration.test_lab import complete, llama_server_binary
from tests.tinygguf import write_tiny_llama

FLAGS = ('container_global_flags = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]\n'
         'container_run_flags = ["--ulimit", "nofile=16384:16384", "--ulimit", '
         '"nproc=16384:16384"]\n')  # fmt: skip


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return llama_image(podman(), llama_server_binary(), "labctl-test-llama:lab",
                       tmp_path_factory.mktemp("image"), {})  # fmt: skip


def lab_toml(tmp_path: Path, image: str, model: Path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(
        f'[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\napi_commands = true\n{FLAGS}\n'
        f'[deployments.small]\nengine = "llamacpp"\nmodel = "{model}"\nruntime = "podman"\n'
        f'image = "{image}"\nstop_grace = 5\n'
        "args = { ctx_size = 512, threads = 1, parallel = 2 }\n"
    )
    return path


def ours(home: Path, runtime: Runtime = PODMAN) -> list[str]:
    return [c.name for c in runtime.containers(str(home))]


def deploy(d: Daemon, settings: dict[str, Any]) -> dict[str, Any]:
    record = d.api("POST", "/api/deployments/small/deploy", {"set": settings}, timeout=180)
    assert record["outcome"] == "committed", record
    return dict(record)


def test_a_container_engine_swaps_with_a_host_process_and_back_under_load(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, image: str
) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    d = lab.up("--config", str(lab_toml(tmp_path, image, model)))
    first = d.wait_state("small", "ready", timeout=60)
    assert ours(lab.home) == ["labctl-small-r1"]
    ps = labctl("ps", "--url", d.url, "--json", home=lab.home, check=True).json()
    rows = ps["processes"]  # type: ignore[index]
    assert {r["role"] for r in rows} >= {"engine", "container"}
    assert all(r["container"] == "labctl-small-r1" and r["image"] == image for r in rows)
    boxed = [r["pid"] for r in rows if r["role"] == "container"]
    assert any(b"llama-server" in Path(f"/proc/{p}/cmdline").read_bytes() for p in boxed)
    table = labctl("ps", "--url", d.url, home=lab.home, check=True).out
    assert "CONTAINER ID (IMAGE)" in table
    box = d.deployment("small")["container"]  # what the dashboard shows beside the pid
    assert (box["name"], box["image"]) == ("labctl-small-r1", image) and len(box["id"]) == 64
    assert f"labctl-small-r1 {box['id'][:12]} ({image})" in table
    assert all(r["container_id"] == box["id"] for r in rows)
    server = next(p for p in boxed if b"llama-server" in Path(f"/proc/{p}/cmdline").read_bytes())
    os.kill(server, signal.SIGKILL)  # the engine dies inside its container: restarted
    wait_for(lambda: d.deployment("small")["restarts"] == 1, 30, "the restart")
    again = d.wait_state("small", "ready", timeout=60)
    assert again["container"]["id"] != box["id"] and ours(lab.home) == ["labctl-small-r1"]
    assert complete(d, "small")["choices"]
    boxed = [r["pid"] for r in d.api("GET", "/api/ps")["processes"] if r["role"] == "container"]
    out = tmp_path / "bench.json"
    bench = lab.start("bench", "--base-url", d.url, "--model", "small", "--request-rate", "10",
                      "--num-prompts", "2000", "--input-len", "8", "--output-len", "8",
                      "--json-out", str(out))  # fmt: skip
    wait_for(lambda: 'code="200",model="small"' in get(d.url + "/metrics"), 30, "the load")
    time.sleep(1)  # requests run on the container, then through each swap
    host = deploy(d, {"runtime": None, "image": None, "binary": llama_server_binary()})
    assert ours(lab.home) == [] and not any(alive(p) for p in boxed)
    assert bench.poll() is None and complete(d, "small")["choices"]
    time.sleep(1)
    back = deploy(d, {"runtime": "podman", "image": image, "binary": None})
    assert ours(lab.home) == [f"labctl-small-r{back['to_revision']}"]
    time.sleep(1)
    assert bench.poll() is None, "both swaps ran under load"
    bench.send_signal(signal.SIGINT)
    assert bench.wait(60) == 130
    doc = json.loads(out.read_text())
    assert doc["completed"] >= 10 and doc["failed"] == 0, doc["errors_by_reason"]
    stops = [s for s in host["steps"] if s["name"] == "stop"]
    assert stops and stops[0]["outcome"] == "ok"
    assert labctl("down", "--url", d.url, home=lab.home, check=True).code == 0
    assert d.proc.wait(60) == 0
    assert ours(lab.home) == [] and engine_pids(lab.home) == []
    assert not alive(first["pid"])


def test_a_container_left_by_a_killed_daemon_is_found_by_its_labels(
    lab: Lab, tmp_path: Path, image: str
) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    config = lab_toml(tmp_path, image, model)
    d = lab.up("--config", str(config))
    d.wait_state("small", "ready", timeout=60)
    slow = d.api("POST", "/api/deployments/small/deploy",
                 {"set": {"ctx_size": 256}, "wait": False})  # fmt: skip
    wait_for(lambda: "labctl-small-r2" in ours(lab.home), 60, "the new revision's container")
    d.proc.kill()  # SIGKILL while revision 2's container starts
    d.proc.wait(10)
    assert slow["ticket"]
    for pid in engine_pids(lab.home):  # the runtime's clients die too: the containers remain
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: engine_pids(lab.home) == [], 10, "the clients to die")
    assert "labctl-small-r2" in ours(lab.home)
    again = lab.up("--config", str(config))
    ready = again.wait_state("small", "ready", timeout=90)
    names = ours(lab.home)
    assert names == [f"labctl-small-r{ready['revision']}"], names  # one serves; none left over
    assert complete(again, "small")["choices"]
    history = again.api("GET", "/api/history")["deploys"]
    assert all(r["outcome"] is not None for r in history)  # the journal is closed
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(60) == 0
    assert ours(lab.home) == []


def test_an_image_for_a_newer_cuda_than_the_driver_is_refused_at_preflight(
    tmp_path: Path, shared_dir: Path
) -> None:
    from labctl.config import DeploymentSpec
    from labctl.deploy.preflight import Planner
    from labctl.errors import DeployError
    from labctl.gpu.nvml import NvmlBackend
    from tests.fakenvml import FakeNvml, load_h100

    runtime = podman()
    binary = llama_server_binary()
    newer = llama_image(runtime, binary, "labctl-test-llama:cuda13.1", tmp_path,
                        {"NVIDIA_REQUIRE_CUDA": "cuda>=13.1 brand=tesla,driver>=535"})  # fmt: skip
    older = llama_image(runtime, binary, "labctl-test-llama:cuda12.8", tmp_path,
                        {"NVIDIA_REQUIRE_CUDA": "cuda>=12.8"})  # fmt: skip
    backend = NvmlBackend(FakeNvml([load_h100(shared_dir)]))  # the real H100's driver: CUDA 13.0
    assert backend.read().cuda_driver_version == 13000
    planner = Planner(backend, dict, containers=(PODMAN.global_flags, PODMAN.run_flags))

    def spec(image: str) -> DeploymentSpec:
        return DeploymentSpec.from_dict("small", {"engine": "llamacpp", "model": "/m/x.gguf",
                                                  "runtime": "podman", "image": image})  # fmt: skip

    with pytest.raises(DeployError) as refused:
        asyncio.run(planner.check_image(spec(newer)))
    assert str(refused.value).startswith(
        f"small: image {newer} needs CUDA 13.1 (NVIDIA_REQUIRE_CUDA"
    )
    assert "the driver runs CUDA 13.0 at most" in str(refused.value)
    asyncio.run(planner.check_image(spec(older)))  # 12.8 runs on a 13.0 driver
    with pytest.raises(DeployError, match="not available here.*podman pull localhost/nope:2"):
        asyncio.run(planner.check_image(spec("localhost/nope:2")))
