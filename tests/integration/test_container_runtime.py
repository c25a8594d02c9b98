"""The container runtime layer against real Podman: an engine image built here runs attached,
is found by its labels and under its host pids, says the CUDA it needs, and stops to nothing."""

from __future__ import annotations

from pathlib import Path
import subprocess
import urllib.request

import pytest

from labctl.errors import EngineError
from labctl.gpu.procs import read_stat
from labctl.runtime.container import LAB, Mount, container_name, image_cuda
from tests.containerimage import llama_image, podman
from tests.integration.lab import free_port, wait_for
from tests.integration.test_lab import llama_server_binary
from tests.tinygguf import write_tiny_llama


def test_an_engine_container_runs_is_found_by_label_and_stops_to_nothing(tmp_path: Path) -> None:
    runtime = podman()
    need = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.4 brand=tesla,driver>=470,driver<471"}
    image = llama_image(runtime, llama_server_binary(), "labctl-test-llama:rt", tmp_path, need)
    assert image_cuda(*runtime.image_config(image)) == ((12, 4), "NVIDIA_REQUIRE_CUDA=" + need[
        "NVIDIA_REQUIRE_CUDA"])  # fmt: skip
    (tmp_path / "m").mkdir()
    model = write_tiny_llama(tmp_path / "m" / "tiny.gguf", seed=3)
    lab, port, name = str(tmp_path), free_port(), container_name("chat", 7)
    labels = {LAB: lab, "labctl.deployment": "chat", "labctl.revision": "7"}
    argv = runtime.run_argv(
        image, ["llama-server", "-m", str(model), "--host", "0.0.0.0", "--port", str(port)],
        name=name, labels=labels, env={"LLAMA_ARG_THREADS": "1"}, port=port,
        mounts=[Mount(model.parent, model.parent)], stop_grace=5,
    )  # fmt: skip
    with (tmp_path / "log").open("wb") as log:
        client = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                 .status == 200, timeout=60, what="the container to serve")  # fmt: skip
        (found,) = runtime.containers(lab)
        assert (found.name, found.deployment, found.revision, found.running) == (name, "chat", 7,
                                                                                 True)  # fmt: skip
        assert found.image.endswith("labctl-test-llama:rt")
        cid, pids = runtime.host_pids(name)
        assert cid == found.id
        assert any("llama-server" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                   for p in pids)  # fmt: skip
        runtime.stop(name, grace=5)
        client.wait(30)  # the attached client ends with its container
        assert runtime.containers(lab) == []
        assert all((st := read_stat(p)) is None or not st.alive for p in pids)
    finally:
        client.kill()
        runtime.stop(name, grace=1)
    assert "llama_server" in (tmp_path / "log").read_text(errors="replace")


def test_an_image_that_is_not_here_is_named_with_the_pull_to_run() -> None:
    runtime = podman()
    with pytest.raises(EngineError, match=r"not available here.*podman pull localhost/nope:1"):
        runtime.image_config("localhost/nope:1")
