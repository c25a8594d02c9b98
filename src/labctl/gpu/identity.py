"""Which physical GPU a deployment means, and whether its engine runs there.

NVML numbers GPUs in PCI bus order; the CUDA runtime numbers them fastest first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set, so on a machine with two different cards
``CUDA_VISIBLE_DEVICES=0`` alone can start an engine on the card the lab does not watch.
Engines get NVML's order from their adapters (:func:`labctl.engines.base.gpu_env`). Indices
also move when a card is added or removed, so lab.toml may name a GPU by what does not
move: its UUID (a unique prefix, as ``nvidia-smi -i`` takes) or its PCI bus id.
:func:`resolve` turns those into the backend's indices at the lab's start and at each
deploy, before anything starts; preflight, the release check and telemetry then work by
that index. Once an engine is ready, :func:`misplaced` checks that none of its processes
holds memory on a GPU it was not planned for.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
import dataclasses
import json

from labctl.config import DeploymentSpec, LabConfig, check_gpu_indices
from labctl.config.values import gpu_key
from labctl.errors import ConfigError
from labctl.gpu.sample import DeviceSample, GpuReading


def label(device: DeviceSample) -> str:
    """``1: NVIDIA GeForce RTX 4090 GPU-5c1e… (00000000:19:00.0)``: a GPU as messages name it."""
    return f"{device.index}: {device.name} {device.uuid} ({device.pci_bus_id})"


def seen(devices: Sequence[DeviceSample]) -> str:
    """The GPUs the backend sees, for a refusal that names what there is instead."""
    if not devices:
        return "this machine has no GPU"
    return "the GPUs here are " + ", ".join(label(d) for d in devices)


def resolve(spec: DeploymentSpec, devices: Sequence[DeviceSample]) -> DeploymentSpec:
    """``spec`` with each GPU it names by UUID or PCI bus id replaced by its index among
    ``devices`` (a spec named by indices alone comes back as it is).

    Raises:
        ConfigError: no GPU has that UUID or bus id, a UUID prefix that several GPUs
            share, or two entries that are one GPU; naming the GPUs there are.
    """
    if not spec.gpu_names:
        return spec
    shown = f"deployments.{spec.name}.gpus = {json.dumps(list(spec.gpu_names))}"
    indices: list[int] = []
    for entry in spec.gpu_names:
        if isinstance(entry, int):
            indices.append(entry)
            continue
        key = gpu_key(entry) or ""
        if key.startswith(("gpu-", "mig-")):
            hits = [d for d in devices if d.uuid.lower().startswith(key)]
            what = "that UUID (or one that begins so)"
        else:
            hits = [d for d in devices if gpu_key(d.pci_bus_id) == key]
            what = "that PCI bus id"
        if not hits:
            mig = "; MIG instances are not listed by the lab's GPU backend, only whole GPUs" if (
                key.startswith("mig-")) else ""  # fmt: skip
            raise ConfigError(f"{shown}: no GPU has {what}{mig}; {seen(devices)}")
        if len(hits) > 1:
            raise ConfigError(
                f"{shown}: {entry!r} begins the UUIDs of {len(hits)} GPUs "
                f"({', '.join(label(d) for d in hits)}); give more of it"
            )
        indices.append(hits[0].index)
    for i, index in enumerate(indices):
        if index in indices[:i]:
            first = spec.gpu_names[indices.index(index)]
            raise ConfigError(
                f"{shown}: {first!r} and {spec.gpu_names[i]!r} are one GPU "
                f"({', '.join(label(d) for d in devices if d.index == index) or index}); "
                "list each GPU once"
            )
    return dataclasses.replace(spec, gpus=tuple(indices))


def resolve_lab(config: LabConfig, devices: Sequence[DeviceSample]) -> LabConfig:
    """``config`` with every deployment's GPUs resolved against ``devices``, each of which
    must exist (the lab's start).

    Raises:
        ConfigError: as :func:`resolve`, or an index beyond the GPUs there are.
    """
    resolved = [resolve(d, devices) for d in config.deployments]
    out = dataclasses.replace(config, deployments=tuple(resolved))
    check_gpu_indices(out, len(devices))
    return out


def uuids(devices: Sequence[DeviceSample], gpus: Sequence[int]) -> list[str]:
    """The UUIDs of the GPUs at ``gpus`` (what the journal records a revision ran on)."""
    by_index = {d.index: d.uuid for d in devices}
    return [by_index[g] for g in gpus if g in by_index]


def misplaced(reading: GpuReading, planned: Sequence[int], pids: Set[int]) -> str | None:
    """Why an engine whose processes are ``pids`` does not run where it was planned: one of
    them holds memory on another GPU (None: none does; a backend that lists no processes, or
    an engine that has not allocated yet, is no mismatch)."""
    for dev in reading.devices:
        pid = next((p.pid for p in dev.processes if p.pid in pids), None)
        if dev.index in planned or pid is None:
            continue
        want = [label(d) for d in reading.devices if d.index in planned] or [str(planned)]
        return (
            f"its process {pid} holds memory on GPU {label(dev)}, not on the GPU it was "
            f"planned for ({', '.join(want)})"
        )
    return None
