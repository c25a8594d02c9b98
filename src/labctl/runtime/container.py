"""Engines in containers: the command line a container runtime (Podman or Docker) takes to run
an engine, and what the lab asks the runtime about its containers.

The lab runs a container engine attached (``run --rm`` without ``-d``): the runtime's client
is the engine process the lab starts, follows (its output is the container's log) and stops,
as it does a host process. What the client does not cover, this module does:

- **Identity.** Every container carries labels that name the lab (its home), the deployment
  and the revision (``labctl.lab``, ``labctl.deployment``, ``labctl.revision``), and a name
  of its own (``labctl-<deployment>-r<revision>``), so a daemon that was killed finds its
  containers again (:meth:`Runtime.containers`) and stops or adopts them.
- **Processes.** A container's processes are children of the runtime's monitor (conmon), not
  of the client: :meth:`Runtime.host_pids` finds them under their host pids, which is what
  NVML reports, so release verification waits for them as for any engine's tree.
- **Stop.** ``stop --time <grace>`` (SIGTERM, then SIGKILL after the grace), then ``rm
  --force``: a client killed outright leaves no container behind.
- **CUDA.** :func:`image_cuda` reads the CUDA an image needs from its environment
  (``NVIDIA_REQUIRE_CUDA``, else ``CUDA_VERSION``), which preflight compares with what the
  driver runs (the doctor's container check reads it the same way).

Every runtime call runs bounded in time (``runtime/command.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import json
from pathlib import Path
import re
import shutil

from labctl.config.values import RUNTIMES
from labctl.errors import EngineError
from labctl.gpu.procs import read_stat, tree
from labctl.runtime.command import CommandResult, run_command

#: Labels that say whose a container is.
LAB, DEPLOYMENT, REVISION = "labctl.lab", "labctl.deployment", "labctl.revision"
#: Seconds a runtime query (ps, inspect) may take; a stop adds the container's own grace.
QUERY_TIMEOUT_S = 30.0
_REQUIRE = re.compile(r"cuda>=(\d+)\.(\d+)")
_VERSION = re.compile(r"^(\d+)\.(\d+)")


def container_name(deployment: str, revision: int) -> str:
    return f"labctl-{deployment}-r{revision}"


def image_cuda(
    env: Sequence[str], labels: Mapping[str, str] | None = None
) -> tuple[tuple[int, int], str] | None:
    """The CUDA an image needs, and what says so: ``NVIDIA_REQUIRE_CUDA`` (what the NVIDIA
    container runtime checks), else ``CUDA_VERSION``, else a label naming its CUDA version
    (``com.nvidia.cuda.version``, …); None when none does, or the image turns the check off
    (``NVIDIA_DISABLE_REQUIRE``)."""
    values = dict(e.partition("=")[::2] for e in env if isinstance(e, str))
    if values.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true", "yes"):
        return None
    for key, pattern in (("NVIDIA_REQUIRE_CUDA", _REQUIRE), ("CUDA_VERSION", _VERSION)):
        m = pattern.search(values.get(key, ""))
        if m:
            return (int(m.group(1)), int(m.group(2))), f"{key}={values[key]}"[:120]
    for key, value in sorted((labels or {}).items()):
        m = _VERSION.search(str(value))
        if key.lower().replace("_", ".").endswith("cuda.version") and m:
            return (int(m.group(1)), int(m.group(2))), f"label {key}={value}"[:120]
    return None


@dataclass(frozen=True)
class Container:
    """A container of the lab's, as the runtime lists it."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = True

    @property
    def deployment(self) -> str | None:
        return self.labels.get(DEPLOYMENT)

    @property
    def revision(self) -> int | None:
        value = self.labels.get(REVISION, "")
        return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool = True


@dataclass
class Runtime:
    """One container runtime (``podman`` or ``docker``) and the flags this machine needs.

    Args:
        kind: ``podman`` or ``docker`` (the command run, found on PATH).
        global_flags: before the subcommand (``--runtime runc --cgroup-manager cgroupfs``).
        run_flags: after ``run`` (``--ulimit nofile=16384:16384``).
    """

    kind: str
    global_flags: tuple[str, ...] = ()
    run_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in RUNTIMES:
            raise EngineError(
                f"unknown container runtime {self.kind!r}; use one of {', '.join(RUNTIMES)}"
            )

    def base(self) -> list[str]:
        return [self.kind, *self.global_flags]

    def run_argv(
        self,
        image: str,
        argv: Sequence[str],
        *,
        name: str,
        labels: Mapping[str, str],
        env: Mapping[str, str | None],
        port: int,
        host: str = "127.0.0.1",
        gpu_uuids: Sequence[str] = (),
        shm_bytes: int | None = None,
        mounts: Sequence[Mount] = (),
        stop_grace: float = 10.0,
    ) -> list[str]:
        """The command that runs ``argv`` in ``image`` attached, its port published on ``host``.

        The engine inside listens on ``port`` on every interface of the container; GPUs go in
        by CDI device (Podman) or ``--gpus device=`` (Docker), by UUID; ``--ipc=host`` unless
        ``shm_bytes`` sizes ``/dev/shm``.
        """
        out = [*self.base(), "run", *self.run_flags, "--rm", "--name", name, "--init"]
        out += [f"--stop-timeout={max(1, round(stop_grace))}", "-p", f"{host}:{port}:{port}"]
        for key, value in sorted(labels.items()):
            out += ["--label", f"{key}={value}"]
        for key, val in sorted(env.items()):  # None: the client's own value, not shown
            out += ["--env", key if val is None else f"{key}={val}"]
        out += ["--ipc=host"] if shm_bytes is None else [f"--shm-size={shm_bytes}b"]
        if gpu_uuids and self.kind == "podman":
            out += [x for u in gpu_uuids for x in ("--device", f"nvidia.com/gpu={u}")]
        elif gpu_uuids:
            out += ["--gpus", '"device=' + ",".join(gpu_uuids) + '"']  # quoted: a CSV field
        for m in mounts:
            out += ["-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        return [*out, image, *argv]

    # -- queries (blocking: run them off the event loop) ---------------------------------

    def _run(self, *args: str, timeout: float = QUERY_TIMEOUT_S) -> CommandResult:
        if shutil.which(self.kind) is None:
            raise EngineError(f"{self.kind} is not installed (not on PATH); install it, or "
                              "remove `runtime` from the deployment to run the engine on the "
                              "host")  # fmt: skip
        res = run_command([*self.base(), *args], timeout)
        if res.returncode != 0:
            why = "timed out" if res.timed_out else (res.stderr.strip() or res.stdout.strip())
            raise EngineError(f"`{self.kind} {' '.join(args[:3])}` failed: {why[:300]}")
        return res

    def image_config(self, image: str) -> tuple[list[str], dict[str, str]]:
        """The image's environment (``KEY=value``) and labels, as its configuration sets them.

        Raises:
            EngineError: the image is not here (the runtime does not pull it for you).
        """
        try:
            res = self._run("image", "inspect", "--format", "{{json .Config}}", image)
        except EngineError as exc:
            raise EngineError(f"image {image} is not available here ({exc}); pull it first: "
                              f"`{self.kind} pull {image}`") from None  # fmt: skip
        try:
            config = json.loads(res.stdout.strip() or "null")
        except ValueError:
            config = None
        config = config if isinstance(config, dict) else {}
        env, labels = config.get("Env") or [], config.get("Labels") or {}
        return ([str(e) for e in env] if isinstance(env, list) else [],
                {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})  # fmt: skip

    def containers(self, lab: str) -> list[Container]:
        """Every container (running or not) labelled as ``lab``'s."""
        res = self._run("ps", "--all", "--no-trunc", "--filter", f"label={LAB}={lab}",
                        "--format", "{{json .}}")  # fmt: skip
        text = res.stdout.strip()
        rows = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
        out = []
        for row in rows if isinstance(rows, list) else []:
            labels = row.get("Labels") or {}
            if isinstance(labels, str):  # docker: "k=v,k=v"
                labels = dict(kv.partition("=")[::2] for kv in labels.split(",") if kv)
            names = row.get("Names") or row.get("Name") or ""
            name = names[0] if isinstance(names, list) and names else str(names)
            state = str(row.get("State") or row.get("Status") or "").lower()
            out.append(Container(str(row.get("Id") or row.get("ID") or ""), name.lstrip("/"),
                                 str(row.get("Image") or ""), dict(labels),
                                 state.startswith(("running", "up"))))  # fmt: skip
        return out

    def host_pids(self, name: str) -> tuple[str | None, dict[int, float]]:
        """The container's id, and its processes under their host pids (its init and what it
        forked) → their start times; (None, {}) when it is not there, no pids when it is not
        running."""
        try:
            res = self._run("inspect", "--format", "{{.Id}} {{.State.Pid}}", name)
        except EngineError:
            return None, {}
        cid, _, text = res.stdout.strip().partition(" ")
        pid = int(text) if text.isdigit() else 0
        st = read_stat(pid) if pid > 0 else None
        if st is None or not st.alive:
            return cid or None, {}
        return cid or None, {pid: st.start} | {s.pid: s.start for s in tree(pid)}

    def stop(self, name: str, grace: float) -> None:
        """Stop the container (SIGTERM, SIGKILL after ``grace`` s), then remove it; a container
        already gone is not an error."""
        seconds = max(1, round(grace))
        run_command([*self.base(), "stop", "--time", str(seconds), name], QUERY_TIMEOUT_S + seconds)
        self.remove(name)

    def remove(self, name: str) -> None:
        """Remove the container now, killing it if it runs; one already gone is not an error."""
        run_command([*self.base(), "rm", "--force", name], QUERY_TIMEOUT_S)

    async def astop(self, name: str, grace: float) -> None:
        await asyncio.to_thread(self.stop, name, grace)
