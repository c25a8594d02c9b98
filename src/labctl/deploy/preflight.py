"""Preflight: what a revision needs on its GPUs, and whether they have the room.

The planner (``labctl fit``) sizes vLLM and twin revisions from their model's files;
a GGUF model's size stands in for llama.cpp; a command engine is not sized. The
planner runs in a worker thread, at most two at once and bounded in time, so a model
file that would keep it busy never holds up the event loop (the gateway, probes,
``/healthz``). When the room is not there, the refusal names who holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.catalog.gpus import gpu as catalog_gpu
from labctl.catalog.models import resolve
from labctl.config import DeploymentSpec
from labctl.errors import CatalogError, DeployError, LabError, ModelFormatError
from labctl.fit.plan import FitRequest, plan
from labctl.gpu.procs import cmdline, read_stat
from labctl.gpu.sample import GpuBackend, GpuReading
from labctl.units import GiB

#: Seconds the planner may take for one preflight before the deploy is refused.
PLAN_TIMEOUT_S = 20.0
#: vLLM flags the planner reads from a deployment's ``args``.
FIT_FLAGS = ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
             "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype",
             "quantization", "enforce_eager", "enable_prefix_caching")  # fmt: skip


@dataclass(frozen=True)
class Need:
    """What preflight found: bytes the revision needs on each of its GPUs, and why."""

    bytes_per_gpu: int
    summary: str
    #: The planner's flags that make the plan explicit (vLLM), added where the user set none.
    recommended: tuple[str, ...] = ()
    #: Sequences the engine runs at once (vLLM's max_num_seqs), where known.
    max_num_seqs: int | None = None


class Planner:
    """Sizes revisions against the GPUs as ``backend`` reads them now."""

    def __init__(self, backend: GpuBackend, owned: Callable[[], dict[int, str]]) -> None:
        self.backend = backend
        #: The processes the lab runs (pid → deployment): the rest are named when in the way.
        self.owned = owned
        self._planning = asyncio.Semaphore(2)

    def _read(self) -> GpuReading:
        return self.backend.read()

    def need(self, spec: DeploymentSpec) -> Need:
        """Bytes the revision takes on each GPU, from the planner where it can say.

        Raises:
            DeployError: the planner says it does not fit (its reasons and numbers), or a
                GPU it names does not exist.
        """
        devices = {d.index: d for d in self._read().devices}
        for g in spec.gpus:
            if g not in devices:
                have = ", ".join(str(i) for i in sorted(devices)) or "none"
                raise DeployError(f"{spec.name}: GPU {g} does not exist (this machine has: {have})")
        if spec.engine in ("vllm", "sim"):
            dev = devices[spec.gpus[0]]
            try:
                arch = resolve(str(spec.model))
                gpu_spec = catalog_gpu(dev.catalog_id) if dev.catalog_id else None
            except ModelFormatError as exc:  # the files are there and hostile or broken
                raise DeployError(f"{spec.name}: {exc}") from exc
            except CatalogError as exc:
                if spec.engine == "sim":
                    raise DeployError(f"{spec.name}: {exc}") from exc
                return Need(0, f"no plan ({exc}); the engine's own check decides")
            args = {k.replace("-", "_"): v for k, v in spec.args.items()}
            fields = {k: args[k] for k in FIT_FLAGS if k in args}
            fields.setdefault("tensor_parallel_size", len(spec.gpus))
            if gpu_spec is None and dev.memory_total_bytes:
                fields["gpu_total_bytes"] = dev.memory_total_bytes
            try:
                res = plan(arch, FitRequest.on_gpu(gpu_spec, **fields), suggest=False)
            except (LabError, TypeError, ValueError) as exc:
                raise DeployError(
                    f"{spec.name}: the planner cannot check these settings: {exc}"
                ) from exc
            if not res.fits:
                raise DeployError(
                    f"{spec.name}: {spec.model} does not fit on GPU {spec.gpus[0]} "
                    f"({dev.name}): " + "; ".join(res.reasons)
                )
            return Need(
                res.budget_bytes,
                f"{res.budget_bytes / GiB:.2f} GiB per GPU (weights {res.weights_bytes / GiB:.2f} GiB, "
                f"KV cache {res.kv_cache_bytes / GiB:.2f} GiB for {res.kv_cache_tokens:,} tokens)",
                tuple(res.recommended_args),
                res.max_num_seqs,
            )
        if spec.engine == "llamacpp" and spec.model:
            path = Path(spec.model).expanduser()
            if not path.is_file():
                raise DeployError(
                    f"{spec.name}: model {spec.model!r}: no such GGUF file; give the path of a .gguf model"
                )
            size = path.stat().st_size
            return Need(size, f"{size / GiB:.2f} GiB of GGUF weights (KV cache not counted)")
        return Need(0, "no estimate for a command engine")

    async def plan_need(self, spec: DeploymentSpec) -> Need:
        """:meth:`need` in a worker thread, bounded in time: a model file that would keep the
        planner busy never holds up the event loop (the gateway, probes, /healthz).

        Raises:
            DeployError: the planner refused, failed or ran out of time.
        """
        async with self._planning:  # at most two plans at once, whatever the API is sent
            try:
                return await asyncio.wait_for(asyncio.to_thread(self.need, spec), PLAN_TIMEOUT_S)
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

    def check_room(self, spec: DeploymentSpec, old_pids: set[int], need: Need) -> Need:
        """``need`` if every GPU of ``spec`` has that room once ``old_pids`` are gone.

        Raises:
            DeployError: a GPU lacks the room (its free memory, what comes back, who holds it).
        """
        reading = self._read()
        for dev in reading.devices:
            if dev.index not in spec.gpus or dev.memory_free_bytes is None:
                continue
            back = sum(p.used_bytes or 0 for p in dev.processes if p.pid in old_pids)
            room = dev.memory_free_bytes + back
            if need.bytes_per_gpu > room:
                who = self.blockers(reading, [dev.index])
                raise DeployError(
                    f"{spec.name}: needs {need.summary} but GPU {dev.index} has "
                    f"{dev.memory_free_bytes / GiB:.2f} GiB free"
                    + (f" + {back / GiB:.2f} GiB the old revision gives back" if back else "")
                    + (f"; {who}" if who else "")
                )
        return need
