"""Kubernetes manifests for a lab: one Deployment and Service per deployment of ``lab.toml``.

Each engine runs in its official image with the flags the lab would give it (its
adapter's argv, the planner's recommended flags, on port :data:`PORT` of every address):
vLLM's ``vllm/vllm-openai``, llama.cpp's and whisper.cpp's CUDA server images; the twin
(``sim``) runs ``labctl sim serve`` in the image ``Dockerfile`` builds, on no GPU, so the
whole lab can be tried on any cluster; ``command`` and ``openvla`` deployments run in the
``image`` lab.toml gives them. A pod asks for its GPUs as ``nvidia.com/gpu`` limits; vLLM
gets ``/dev/shm`` in memory, sized by its GPU count (NCCL's buffers between ranks), and
its Hugging Face cache on a volume (a PersistentVolumeClaim, or the host's cache as a
hostPath), offline (``HF_HUB_OFFLINE=1``) when the model is there already, with
``HF_TOKEN`` from a Secret otherwise. The rollout strategy is the planner's
(:mod:`labctl.export.k8splan`); the startup probe's budget covers twice the predicted
start (:func:`startup_budget`).

The builders are pure: what only the services know (the predicted start, the alert rules,
the dashboard) comes in as arguments. :mod:`labctl.export.k8smonitor` adds the monitoring
objects and the kustomization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path
import re
from typing import Any

from labctl.config import DeploymentSpec
from labctl.engines import adapter
from labctl.errors import ConfigError
from labctl.export.k8splan import Sizing, settings
from labctl.fit.vllm import LATEST
from labctl.secrets import looks_secret
from labctl.units import GiB

#: The port every engine listens on in its pod (vLLM's own default).
PORT = 8000
#: The Hugging Face home in vLLM's image (it runs as root).
HF_HOME = "/root/.cache/huggingface"
#: Each engine's official image, and the command that starts its server there.
IMAGES = {"llamacpp": "ghcr.io/ggml-org/llama.cpp:server-cuda",
          "whispercpp": "ghcr.io/ggml-org/whisper.cpp:main-cuda"}  # fmt: skip
COMMANDS = {"vllm": "vllm", "llamacpp": "/app/llama-server", "whispercpp": "whisper-server",
            "sim": "labctl"}  # fmt: skip
#: Engines that serve Prometheus metrics on ``/metrics`` (whisper-server has none).
METRICS = frozenset({"vllm", "sim", "llamacpp"})
#: Engines whose model comes from the Hugging Face hub when it is not a path.
HUB = frozenset({"vllm", "openvla"})
#: Engines that run PyTorch on their GPUs (and so want a real ``/dev/shm``).
SHM = frozenset({"vllm", "openvla", "command"})
PART_OF = {"app.kubernetes.io/part-of": "labctl"}
#: The startup probe's period, and the least budget it gets.
PROBE_PERIOD_S, MIN_STARTUP_S = 10, 300
_DNS = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Options:
    """How the manifests are written, from the command line."""

    namespace: str = "labctl"
    #: The Prometheus Operator's selector label (kube-prometheus-stack's Helm release).
    release: str = "kube-prometheus-stack"
    twin_image: str = "labctl-twin:latest"
    vllm_version: str = LATEST
    #: ``pvc`` (a claim per deployment) or ``hostpath`` (the host's cache directories).
    model_cache: str = "pvc"
    #: The host's Hugging Face hub cache (``hostpath``).
    hub_cache: str = HF_HOME + "/hub"
    storage_class: str | None = None
    #: The Secret (key ``token``) that holds a Hugging Face token.
    hf_token_secret: str = "hf-token"


@dataclass(frozen=True)
class Workload:
    """One deployment and what the services know of it."""

    spec: DeploymentSpec
    sizing: Sizing
    #: The predicted start, in seconds (``labctl.deploy.loadpath``).
    predicted_s: float
    #: Its model is on the cache volume already (the pod runs with ``HF_HUB_OFFLINE=1``).
    offline: bool = False


@dataclass(frozen=True)
class Manifest:
    """One object and the file it goes to."""

    file: str
    doc: dict[str, Any]


def object_name(name: str) -> str:
    """A deployment's name as a Kubernetes object's (an RFC 1035 label: lower case, digits
    and '-', starting with a letter)."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not text[:1].isalpha():
        text = "lab-" + text
    return text[:63].rstrip("-")


def check_names(specs: Sequence[DeploymentSpec]) -> None:
    """Raises:
    ConfigError: two deployments whose names map to the same object name.
    """
    seen: dict[str, str] = {}
    for spec in specs:
        obj = object_name(spec.name)
        if obj in seen:
            raise ConfigError(
                f"deployments.{seen[obj]} and deployments.{spec.name} both become Kubernetes "
                f"objects named {obj!r} (lower case, '-' for '_' and '.'); rename one"
            )
        seen[obj] = spec.name


def check_namespace(namespace: str) -> None:
    """Raises:
    ConfigError: a name Kubernetes refuses for a namespace.
    """
    if not _DNS.fullmatch(namespace):
        raise ConfigError(
            f"--namespace {namespace!r}: give a DNS label (lower case letters, digits and '-', "
            "starting with a letter, at most 63 characters), e.g. labctl"
        )


def startup_budget(predicted_s: float, startup_timeout: float | None = None) -> int:
    """Seconds the startup probe waits: twice the predicted start and a minute, at least
    :data:`MIN_STARTUP_S` and the deployment's own ``startup_timeout``; whole periods."""
    need = max(2 * predicted_s + 60, MIN_STARTUP_S, startup_timeout or 0)
    return PROBE_PERIOD_S * math.ceil(need / PROBE_PERIOD_S)


def labels(w: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": object_name(w.spec.name), **PART_OF,
            "app.kubernetes.io/component": "engine", "labctl.dev/engine": w.spec.engine}  # fmt: skip


def image(spec: DeploymentSpec, opts: Options) -> str:
    """Raises:
    ConfigError: a ``command`` or ``openvla`` deployment without ``image``.
    """
    if spec.image:
        return spec.image
    if spec.engine == "vllm":
        return f"vllm/vllm-openai:v{opts.vllm_version}"
    if spec.engine == "sim":
        return opts.twin_image
    if spec.engine in IMAGES:
        return IMAGES[spec.engine]
    raise ConfigError(
        f"deployments.{spec.name}: engine {spec.engine!r} has no official image; give "
        f'deployments.{spec.name}.image = "registry/name:tag" (an image whose server its '
        "command line starts)"
    )


def command_line(w: Workload) -> list[str]:
    """The container's command line: the adapter's argv for ``0.0.0.0:PORT``, its
    executable the one in the image (the twin runs as ``labctl sim serve``)."""
    spec = w.spec
    doc = settings(spec) | {"recommended_args": list(w.sizing.estimate.recommended)}
    argv = adapter(spec.engine).launch(doc, "0.0.0.0", PORT, spec.gpus).argv
    if spec.engine == "sim":  # [python, -m, labctl, sim, serve, …]
        return ["labctl", *argv[3:], "--gpu", w.sizing.gpu.id, "--no-gpu-ledger"]
    if spec.engine in COMMANDS and not spec.image:
        return [COMMANDS[spec.engine], *argv[1:]]
    return argv


def model_dir(spec: DeploymentSpec) -> str | None:
    """The directory of a model that is a path (mounted at the same path in the pod)."""
    model = spec.model or ""
    if spec.engine == "command" or not model.startswith(("/", "~")):
        return None
    return str(Path(model).expanduser().parent)


def _probe(w: Workload, period: int, threshold: int) -> dict[str, Any]:
    health = adapter(w.spec.engine).health_of(settings(w.spec))
    if health.payload is not None:  # a POST (OpenVLA's /act): the port is what is left
        check: dict[str, Any] = {"tcpSocket": {"port": "http"}}
    else:
        path = w.spec.health_path if w.spec.engine == "command" else health.path
        check = {"httpGet": {"path": path, "port": "http"}}
    return check | {"periodSeconds": period, "failureThreshold": threshold,
                    "timeoutSeconds": max(1, math.ceil(health.timeout))}  # fmt: skip


def _env(w: Workload, opts: Options) -> list[dict[str, Any]]:
    spec, obj = w.spec, object_name(w.spec.name)
    out: list[dict[str, Any]] = []
    if spec.engine in HUB and not model_dir(spec):
        out.append({"name": "HF_HOME", "value": HF_HOME})
        if w.offline:
            out.append({"name": "HF_HUB_OFFLINE", "value": "1"})
        else:
            out.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": opts.hf_token_secret, "key": "token", "optional": True}}})  # fmt: skip
    for var, value in spec.env.items():
        if looks_secret(var, value):  # never written out: a Secret the user makes holds it
            out.append({"name": var, "valueFrom": {"secretKeyRef": {"name": f"{obj}-env",
                                                                    "key": var}}})  # fmt: skip
        else:
            out.append({"name": var, "value": value})
    return out


def secret_env(spec: DeploymentSpec) -> list[str]:
    """The environment variables of ``spec`` that go in the Secret ``<name>-env``."""
    return [var for var, value in spec.env.items() if looks_secret(var, value)]


def shm_bytes(gpus: int) -> int:
    """``/dev/shm`` for a pod on ``gpus`` GPUs: 2 GiB for one, 8 GiB a GPU for several."""
    return 2 * GiB if gpus == 1 else 8 * GiB * gpus


def cache_bytes(w: Workload) -> int:
    """The cache claim: half again the weights on all its GPUs, at least 50 GiB."""
    weights = w.sizing.estimate.weight_bytes * len(w.spec.gpus)
    return max(50, math.ceil(1.5 * weights / GiB)) * GiB


def _volumes(w: Workload, opts: Options) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's mounts."""
    spec, obj = w.spec, object_name(w.spec.name)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.engine in SHM:
        size = f"{shm_bytes(len(spec.gpus)) // GiB}Gi"
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": size}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    where = model_dir(spec)
    if spec.engine in HUB and where is None:
        host, path = opts.hub_cache, HF_HOME + ("/hub" if opts.model_cache == "hostpath" else "")
    elif where is not None:
        host, path = where, where
    else:
        return volumes, mounts
    if opts.model_cache == "hostpath":
        source: dict[str, Any] = {"hostPath": {"path": host, "type": "Directory"}}
    else:
        source = {"persistentVolumeClaim": {"claimName": f"{obj}-models"}}
    volumes.append({"name": "models", **source})
    mounts.append({"name": "models", "mountPath": path})
    return volumes, mounts


def uses_claim(w: Workload, opts: Options) -> bool:
    return opts.model_cache == "pvc" and (
        (w.spec.engine in HUB and model_dir(w.spec) is None) or model_dir(w.spec) is not None
    )


def deployment(w: Workload, opts: Options) -> dict[str, Any]:
    """The Deployment that runs one engine."""
    spec, obj = w.spec, object_name(w.spec.name)
    volumes, mounts = _volumes(w, opts)
    container: dict[str, Any] = {
        "name": "engine",
        "image": image(spec, opts),
        "command": command_line(w),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
    }
    if env := _env(w, opts):
        container["env"] = env
    if spec.engine != "sim":
        container["resources"] = {"limits": {"nvidia.com/gpu": len(spec.gpus)}}
    if mounts:
        container["volumeMounts"] = mounts
    budget = startup_budget(w.predicted_s, spec.startup_timeout)
    container |= {
        "startupProbe": _probe(w, PROBE_PERIOD_S, budget // PROBE_PERIOD_S),
        "readinessProbe": _probe(w, 5, 3),
        "livenessProbe": _probe(w, 10, 3),
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": max(30, math.ceil(spec.stop_grace)),
        "containers": [container],
    }
    if volumes:
        pod["volumes"] = volumes
    strategy: dict[str, Any] = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if w.sizing.two_fit
        else {"type": "Recreate"}
    )
    notes = {"labctl.dev/strategy": w.sizing.why,
             "labctl.dev/predicted-start-seconds": f"{w.predicted_s:.0f}"}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": obj,
            "namespace": opts.namespace,
            "labels": labels(w),
            "annotations": notes,
        },
        "spec": {
            "replicas": 1,
            "strategy": strategy,
            "selector": {"matchLabels": {"app.kubernetes.io/name": obj, **PART_OF}},
            "template": {"metadata": {"labels": labels(w)}, "spec": pod},
        },
    }


def service(w: Workload, opts: Options) -> dict[str, Any]:
    """The Service in front of one engine (named ``http``, as the ServiceMonitor scrapes)."""
    obj = object_name(w.spec.name)
    tags = labels(w) | ({"labctl.dev/metrics": "true"} if w.spec.engine in METRICS else {})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": obj, "namespace": opts.namespace, "labels": tags},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": obj, **PART_OF},
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def claim(w: Workload, opts: Options) -> dict[str, Any]:
    """The PersistentVolumeClaim that holds one deployment's models."""
    obj = object_name(w.spec.name)
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{cache_bytes(w) // GiB}Gi"}},
    }
    if opts.storage_class:
        spec["storageClassName"] = opts.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{obj}-models", "namespace": opts.namespace,
                         "labels": labels(w)}, "spec": spec}  # fmt: skip


def engines(workloads: Sequence[Workload], opts: Options) -> list[Manifest]:
    """Every deployment's objects: its claim (if any), Deployment and Service."""
    check_names([w.spec for w in workloads])
    out: list[Manifest] = []
    for w in workloads:
        obj = object_name(w.spec.name)
        if uses_claim(w, opts):
            out.append(Manifest(f"{obj}-pvc.yaml", claim(w, opts)))
        out.append(Manifest(f"{obj}-deployment.yaml", deployment(w, opts)))
        out.append(Manifest(f"{obj}-service.yaml", service(w, opts)))
    return out


def namespace(opts: Options) -> list[Manifest]:
    """The Namespace, unless it is ``default``."""
    if opts.namespace == "default":
        return []
    doc = {"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": opts.namespace, "labels": dict(PART_OF)}}  # fmt: skip
    return [Manifest("namespace.yaml", doc)]
