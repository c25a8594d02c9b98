"""Preflight: what a revision needs on its GPUs, and whether they have the room.

Each engine's adapter says what a revision needs (``engines/``: the planner, ``labctl
fit``, for vLLM and the twin; a GGUF model's size for llama.cpp; nothing for a command
engine); this module checks it against the GPUs as they are now. The
planner runs in a worker thread, at most two at once and bounded in time, so a model
file that would keep it busy never holds up the event loop (the gateway, probes,
``/healthz``). When the room is not there, the refusal names who holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence, Set

from labctl.config import DeploymentSpec
from labctl.deploy.containers import Flags, runtime_for
from labctl.engines import Estimate, adapter
from labctl.errors import ConfigError, DeployError, LabError
from labctl.gpu.identity import resolve, uuids
from labctl.gpu.procs import cmdline, read_stat
from labctl.gpu.sample import DeviceSample, GpuBackend, GpuReading
from labctl.runtime.container import image_cuda
from labctl.units import GiB

#: Seconds the planner may take for one preflight before the deploy is refused.
PLAN_TIMEOUT_S = 20.0


#: What preflight found: the adapter's estimate of what the revision needs per GPU, and why.
Need = Estimate


class Planner:
    """Sizes revisions against the GPUs as ``backend`` reads them now."""

    def __init__(
        self,
        backend: GpuBackend,
        owned: Callable[[], dict[int, str]],
        read: Callable[[], Awaitable[GpuReading]] | None = None,
        doctor: Callable[[DeploymentSpec], Awaitable[str]] | None = None,
        containers: Flags = ((), ()),
    ) -> None:
        self.backend = backend
        #: The container runtime's flags on this machine (``[lab] container_*_flags``).
        self.containers = containers
        #: The processes the lab runs (pid → deployment): the rest are named when in the way.
        self.owned = owned
        #: A fresh reading of the GPUs, off the event loop: the daemon's sampler, which is the
        #: backend's one reader (without one, a worker thread reads the backend).
        self.read = read or (lambda: asyncio.to_thread(backend.read))
        self._planning = asyncio.Semaphore(2)
        #: Why the lab's doctor says a revision's engine cannot start here ("": nothing it
        #: found stands in the way); the daemon composes it, this layer knows no doctor.
        self.doctor = doctor
        #: The GPUs as the backend first read them: their indices, UUIDs and bus ids, which
        #: do not change while it is open (what resolves GPUs named by UUID or bus id).
        self.devices: tuple[DeviceSample, ...] | None = None

    async def resolve(self, spec: DeploymentSpec) -> DeploymentSpec:
        """``spec`` with the GPUs it names by UUID or PCI bus id as the backend's indices.

        Raises:
            DeployError: a GPU it names is not here (the GPUs there are).
        """
        if not spec.gpu_names:
            return spec  # by index: nothing to read (no await: a deploy takes its locks first)
        if self.devices is None:
            self.devices = (await self.read()).devices
        try:
            return resolve(spec, self.devices)
        except ConfigError as exc:
            raise DeployError(str(exc)) from None

    def uuids(self, gpus: Sequence[int]) -> list[str]:
        """The UUIDs of the GPUs at ``gpus`` (empty before a resolve or a plan first read them)."""
        return uuids(self.devices or (), gpus)

    async def check_doctor(self, spec: DeploymentSpec) -> None:
        """Refuse ``spec`` when the doctor found a failure that keeps its engine from starting.

        Raises:
            DeployError: the failure's message and its remedy.
        """
        why = await self.doctor(spec) if self.doctor is not None else ""
        if why:
            raise DeployError(f"{spec.name}: {why}")
        await self.check_image(spec)

    async def check_image(self, spec: DeploymentSpec) -> None:
        """Refuse a container deployment whose image is not here, or needs a newer CUDA than
        the driver runs (``NVIDIA_REQUIRE_CUDA``, else ``CUDA_VERSION`` or a CUDA version
        label, against NVML's
        ``nvmlSystemGetCudaDriverVersion``): it would fail at its start, after the old
        revision had stopped.

        Raises:
            DeployError: naming the image's CUDA and the driver's, and the fix.
        """
        if not spec.runtime or spec.image is None:
            return
        try:
            config = await asyncio.to_thread(runtime_for(spec, self.containers).image_config,
                                             spec.image)  # fmt: skip
        except LabError as exc:
            raise DeployError(f"{spec.name}: {exc}") from None
        if (need := image_cuda(*config)) is None:
            return  # the image names no CUDA: no GPU reading needed
        if (have := (await self.read()).cuda_driver_version) is None:
            return  # simulated GPUs: no driver to ask
        driver = (have // 1000, have % 1000 // 10)
        if need[0] > driver:
            want, runs = "{}.{}".format(*need[0]), "{}.{}".format(*driver)
            raise DeployError(
                f"{spec.name}: image {spec.image} needs CUDA {want} ({need[1]}), but the "
                f"driver runs CUDA {runs} at most (nvmlSystemGetCudaDriverVersion = {have}); "
                f"upgrade the NVIDIA driver to one for CUDA {want}, or use a tag of the image "
                f"built for CUDA {runs} or older"
            )

    def need(self, spec: DeploymentSpec, reading: GpuReading) -> Need:
        """Bytes the revision takes on each GPU, from the planner where it can say.

        Raises:
            DeployError: the planner says it does not fit (its reasons and numbers), or a
                GPU it names does not exist.
        """
        devices = {d.index: d for d in reading.devices}
        for g in spec.gpus:
            if g not in devices:
                have = ", ".join(str(i) for i in sorted(devices)) or "none"
                raise DeployError(f"{spec.name}: GPU {g} does not exist (this machine has: {have})")
        try:
            return adapter(spec.engine).estimate(spec.to_dict(), devices[spec.gpus[0]])
        except LabError as exc:
            raise DeployError(str(exc)) from exc

    async def plan_need(self, spec: DeploymentSpec) -> Need:
        """:meth:`need` in a worker thread, bounded in time: a model file that would keep the
        planner busy never holds up the event loop (the gateway, probes, /healthz).

        Raises:
            DeployError: the planner refused, failed or ran out of time.
        """
        async with self._planning:  # at most two plans at once, whatever the API is sent
            try:
                reading = await self.read()
                self.devices = self.devices or reading.devices  # their identity, for uuids()
                return await asyncio.wait_for(
                    asyncio.to_thread(self.need, spec, reading), PLAN_TIMEOUT_S
                )
            except TimeoutError:
                raise DeployError(
                    f"{spec.name}: the planner took more than {PLAN_TIMEOUT_S:g} s on "
                    f"{spec.model!r}; check the model's files (config.json, headers)"
                ) from None
            except LabError:
                raise
            except Exception as exc:  # a reader bug (RecursionError, …) must not become a 500
                raise DeployError(
                    f"{spec.name}: the planner failed on {spec.model!r} "
                    f"({type(exc).__name__}: {exc}); check the model's files"
                ) from None

    def held_by(self, reading: GpuReading, gpus: Sequence[int], pids: set[int]) -> int:
        """Bytes that processes ``pids`` hold on ``gpus`` (the most on any one GPU)."""
        most = 0
        for dev in reading.devices:
            if dev.index in gpus:
                held = sum(p.used_bytes or 0 for p in dev.processes if p.pid in pids)
                most = max(most, held)
        return most

    def blockers(self, reading: GpuReading, gpus: Sequence[int]) -> str:
        """Processes labctl does not own holding memory on ``gpus``, for a refusal message."""
        owned = self.owned()
        parts = []
        for dev in reading.devices:
            if dev.index not in gpus:
                continue
            for p in dev.processes:
                if p.pid not in owned and p.used_bytes:
                    st = read_stat(p.pid)
                    cmd = cmdline(p.pid) or (st.name if st else "?")
                    parts.append(
                        f"pid {p.pid} ({cmd}) holds {p.used_bytes / GiB:.2f} GiB on GPU {dev.index}"
                    )
        return "; ".join(parts)

    async def check_room(
        self, spec: DeploymentSpec, old_pids: set[int], need: Need,
        asleep: Set[int] = frozenset(), own: Set[int] = frozenset(),
    ) -> Need:  # fmt: skip
        """``need`` if every GPU of ``spec`` has that room once ``old_pids`` are gone, and the
        sleeping revisions ``asleep`` if it must; ``own`` are the processes of a sleeping
        revision that is woken for it, whose memory counts as its own.

        Raises:
            DeployError: a GPU lacks the room (its free memory, what comes back, who holds it).
        """
        reading = await self.read()
        for dev in reading.devices:
            if dev.index not in spec.gpus or dev.memory_free_bytes is None:
                continue
            back = sum(p.used_bytes or 0 for p in dev.processes if p.pid in old_pids)
            sleeping = sum(p.used_bytes or 0 for p in dev.processes if p.pid in asleep)
            held = sum(p.used_bytes or 0 for p in dev.processes if p.pid in own)
            room = dev.memory_free_bytes + back + sleeping
            if need.bytes_per_gpu - held > room:
                who = self.blockers(reading, [dev.index])
                raise DeployError(
                    f"{spec.name}: needs {need.summary} but GPU {dev.index} has "
                    f"{dev.memory_free_bytes / GiB:.2f} GiB free"
                    + (f" + {back / GiB:.2f} GiB the old revision gives back" if back else "")
                    + (f" + {sleeping / GiB:.2f} GiB sleeping revisions give back"
                       if sleeping else "")
                    + (f" (its sleeping engine holds {held / GiB:.2f} GiB already)"
                       if held else "")
                    + (f"; {who}" if who else "")
                )  # fmt: skip
        return need
