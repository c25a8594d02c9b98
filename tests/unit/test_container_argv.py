"""The command lines a container runtime gets, and the CUDA an image says it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import EngineError
from labctl.runtime.container import Mount, Runtime, image_cuda


def argv(kind: str, **kw: object) -> list[str]:
    rt = Runtime(kind, ("--runtime", "runc"), ("--ulimit", "nofile=1:1"))
    base: dict[str, object] = {"name": "labctl-chat-r2", "labels": {"labctl.revision": "2"},
                               "env": {"HF_HUB_OFFLINE": "1"}, "port": 8123}  # fmt: skip
    return rt.run_argv("img:1", ["vllm", "serve", "m"], **(base | kw))  # type: ignore[arg-type]


def test_podman_gets_gpus_by_cdi_and_the_flags_where_they_go() -> None:
    out = argv("podman", gpu_uuids=["GPU-a", "GPU-b"], mounts=[Mount(Path("/m"), Path("/m"))])
    assert out[:4] == ["podman", "--runtime", "runc", "run"] and out[4:6] == [
        "--ulimit",
        "nofile=1:1",
    ]
    assert "--rm" in out and "-d" not in out  # attached: the client is the engine process
    assert out[out.index("-p") + 1] == "127.0.0.1:8123:8123"
    assert [
        x for i, x in enumerate(out) if x == "--device" or (i and out[i - 1] == "--device")
    ] == ["--device", "nvidia.com/gpu=GPU-a", "--device", "nvidia.com/gpu=GPU-b"]
    assert "--ipc=host" in out and "/m:/m:ro" in out and "HF_HUB_OFFLINE=1" in out
    assert out[-4:] == ["img:1", "vllm", "serve", "m"]


def test_docker_gets_gpus_by_uuid_and_a_planned_shm() -> None:
    out = argv("docker", gpu_uuids=["GPU-a", "GPU-b"], shm_bytes=2**30, stop_grace=12.4)
    assert out[out.index("--gpus") + 1] == '"device=GPU-a,GPU-b"'  # docker reads it as CSV
    assert f"--shm-size={2**30}b" in out and "--ipc=host" not in out
    assert "--stop-timeout=12" in out and "labctl.revision=2" in out


def test_an_unknown_runtime_is_refused_naming_the_known() -> None:
    with pytest.raises(EngineError, match="use one of podman, docker"):
        Runtime("lxc")


@pytest.mark.parametrize(("env", "need"), [
    (["NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=tesla,driver>=470"], (12, 8)),
    (["CUDA_VERSION=12.4.1"], (12, 4)),
    (["NVIDIA_REQUIRE_CUDA=cuda>=12.8", "NVIDIA_DISABLE_REQUIRE=true"], None),
    (["PATH=/bin"], None),
    (["PATH=/bin", "LABEL:com.nvidia.cuda.version=12.6.2"], (12, 6)),
    (["CUDA_VERSION=12.4.1", "LABEL:com.nvidia.cuda.version=12.6.2"], (12, 4)),
])  # fmt: skip
def test_image_cuda_reads_what_the_image_requires(env: list[str], need: object) -> None:
    labels = {e[6:].partition("=")[0]: e.partition("=")[2] for e in env if e.startswith("LABEL:")}
    got = image_cuda([e for e in env if not e.startswith("LABEL:")], labels)
    assert (got[0] if got else None) == need
