"""A deployment's engine in a container (``runtime`` and ``image`` in lab.toml).

The adapter builds the engine's command line as for the host; :func:`wrap` runs it in the
image through the runtime (``runtime/container.py``), attached, so the runtime's client is
the engine process the lab follows and stops. What changes in the container:

- the engine listens on every interface of the container, its port published on the lab's
  host address only;
- its GPUs go in by UUID (CDI or ``--gpus``), so the device-order variables the host needs
  are dropped (inside, the GPUs it got are all it sees); simulated GPUs give it none;
- the model goes in read-only at the path it has on the host (a file's folder, the hub
  cache), with ``HF_HUB_OFFLINE=1`` where the snapshot is whole;
- variables reach it by name only (``--env NAME``): their values stay in the client's
  environment, never on a command line that ``ps`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.config import DeploymentSpec
from labctl.runtime.container import (
    DEPLOYMENT,
    LAB,
    REVISION,
    Mount,
    Runtime,
    container_name,
)

#: Variables that place an engine on the host's GPUs; inside a container they would point
#: at GPUs it does not have.
_HOST_ONLY = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


Flags = tuple[tuple[str, ...], tuple[str, ...]]


def runtime_for(spec: DeploymentSpec, flags: Flags) -> Runtime:
    assert spec.runtime is not None
    return Runtime(spec.runtime, *flags)


@dataclass
class InContainer:
    """Where a container engine runs: its container's name, image and runtime, and the
    container's id once the runtime has said it."""

    name: str
    image: str
    runtime: Runtime
    id: str | None = None

    @classmethod
    def of(cls, spec: DeploymentSpec, revision: int, flags: Flags) -> InContainer:
        """The container revision ``revision`` of ``spec`` runs in (started or adopted)."""
        assert spec.image is not None
        return cls(container_name(spec.name, revision), spec.image, runtime_for(spec, flags))

    def shown(self) -> dict[str, str | None]:
        """What ``labctl ps``, ``/api/status`` and the dashboard show of it."""
        return {"name": self.name, "id": self.id, "image": self.image}


@dataclass(frozen=True)
class Boxed:
    """An engine's command wrapped in its container: what to run, and where it runs."""

    argv: list[str]
    #: Variables the client passes in by name (their values, for the client's environment).
    env: dict[str, str]
    where: InContainer


def mounts(spec: DeploymentSpec, env: Mapping[str, str]) -> list[Mount]:
    """What the engine reads from the host: the model file's folder or the model folder, and
    the hub cache the adapter pointed it at."""
    out: dict[Path, Mount] = {}
    model = Path(spec.model) if spec.model else None
    if model is not None and model.is_absolute() and model.exists():
        where = model if model.is_dir() else model.parent
        out[where] = Mount(where, where)
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        if (value := env.get(var)) and Path(value).is_dir():
            out[Path(value)] = Mount(Path(value), Path(value))
    return list(out.values())


def wrap(
    spec: DeploymentSpec,
    revision: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    lab: Path,
    port: int,
    host: str,
    gpu_uuids: Sequence[str],
    flags: Flags,
) -> Boxed:
    """``argv`` (built for ``0.0.0.0:port``) with ``env`` (the adapter's, the deployment's and
    the engine's key) run in ``spec.image``."""
    where = InContainer.of(spec, revision, flags)
    inner = {k: v for k, v in env.items() if k not in _HOST_ONLY}
    labels = {LAB: str(lab), DEPLOYMENT: spec.name, REVISION: str(revision)}
    boxed = where.runtime.run_argv(
        where.image, argv, name=where.name, labels=labels, env=dict.fromkeys(inner), port=port,
        host=host, gpu_uuids=gpu_uuids, mounts=mounts(spec, inner), stop_grace=spec.stop_grace,
    )  # fmt: skip
    return Boxed(boxed, inner, where)
