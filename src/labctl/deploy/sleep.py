"""Warm swaps: a replaced revision kept asleep instead of stopped, and woken instead of started.

A deployment with ``sleep`` (``"auto"``, 1 or 2; engines with a sleep mode) keeps its
outgoing revision's engine when a deploy replaces it: drained, then put to sleep
(``POST /sleep?level=N``), which gives back its weights and KV cache and keeps the process,
its CUDA context and graph pool. A later deploy of the same settings (a ``labctl deploy``
back to that model, a rollback) wakes it instead of starting one: drain → sleep → wake →
smoke test → switch, the gateway holding new requests from the drain to the switch as
it does through any swap. Level 1 keeps the weights in host RAM (a wake copies them back
over PCIe); level 2 drops them (a wake reads them from disk again, still without the
profile, graph capture and process start of a cold start); ``auto`` takes level 1 when the
host's available RAM holds the weights with a margin (:func:`labctl.fit.sleep.choose_level`).

Sleeping engines hold memory: preflight counts what they would give back, a cold start
that finds too little room stops them, oldest first (an ``evict`` step), and an outgoing
revision is stopped rather than put to sleep when the incoming one would not fit beside it.
A sleep that fails stops the engine as a replace would have; a wake that fails (an error,
no answer, the engine gone) stops it and the deploy starts the revision cold. Each is a
journal step (``sleep``: level, seconds, bytes released, bytes kept; ``wake``: level,
seconds), and deploys are counted as cold or warm (``labctl_deploy_duration_seconds{swap}``).

Sleeping engines are the lab's: they are stopped at shutdown, never restarted when they
exit, and never adopted by a daemon that starts after a crash (it stops them, as it stops
any engine of the lab that serves nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
import contextlib
from dataclasses import dataclass
import time
from typing import TYPE_CHECKING, Any

import psutil

from labctl.config import DeploymentSpec
from labctl.deploy.engines import Engine, Engines, identity
from labctl.deploy.journal import Journal
from labctl.deploy.owner import EngineOwner, State
from labctl.deploy.preflight import Need, Planner
from labctl.engines import adapter
from labctl.errors import EngineError, LabError
from labctl.fit.sleep import CONTEXT_SLACK_BYTES, choose_level, host_bytes
from labctl.units import GiB

if TYPE_CHECKING:
    from labctl.deploy.deployment import Deployment


@dataclass
class Parked:
    """A revision asleep: its owner (state ``sleeping``) and what it keeps."""

    deployment: str
    owner: EngineOwner
    level: int
    #: Bytes its processes hold on each of its GPUs (the most on one), measured once asleep.
    gpu_bytes: int
    #: Host RAM its offloaded weights take (level 1).
    host_bytes: int
    #: When it fell asleep (wall clock): the oldest goes first when room is short.
    since: float

    @property
    def engine(self) -> Engine:
        assert self.owner.engine is not None, self.owner
        return self.owner.engine

    @property
    def revision(self) -> int:
        return self.owner.revision

    def status(self) -> dict[str, Any]:
        e = self.engine
        return {"revision": self.revision, "model": e.spec.model, "level": self.level,
                "gpu_bytes": self.gpu_bytes, "host_bytes": self.host_bytes,
                "pid": e.process.pid, "since": self.since}  # fmt: skip


def wanted(spec: DeploymentSpec) -> bool:
    """Whether a revision of ``spec`` sleeps when replaced."""
    return spec.sleep is not None and adapter(spec.engine).sleeps


def host_memory() -> tuple[int, int]:
    """The host's available and total RAM."""
    mem = psutil.virtual_memory()
    return int(mem.available), int(mem.total)


class Sleeper:
    """Puts outgoing revisions to sleep, wakes them, and makes room by stopping them.

    Args:
        deployments: the controller's deployments (each keeps its own sleeping revisions).
        host: the host's available and total RAM, for the ``auto`` level.
    """

    def __init__(
        self, journal: Journal, engines: Engines, planner: Planner,
        deployments: Mapping[str, Deployment], clock: Callable[[], float] = time.monotonic,
        host: Callable[[], tuple[int, int]] = host_memory,
    ) -> None:  # fmt: skip
        self.journal, self.engines, self.planner = journal, engines, planner
        self.deployments, self.clock, self.host = deployments, clock, host

    # -- what sleeps ---------------------------------------------------------------------

    def all(self, gpus: Iterable[int] | None = None) -> list[Parked]:
        """Every sleeping revision (on any of ``gpus``), oldest first. Copies as it reads: the
        sampler's thread asks too (:meth:`owned`)."""
        want = None if gpus is None else set(gpus)
        found = [p for d in list(self.deployments.values()) for p in list(d.sleeping.values())
                 if want is None or want & set(p.engine.spec.gpus)]  # fmt: skip
        return sorted(found, key=lambda p: p.since)

    def match(self, d: Deployment, spec: DeploymentSpec) -> Parked | None:
        """The sleeping revision of ``d`` with exactly ``spec``'s settings, if any."""
        return next((p for p in d.sleeping.values()
                     if p.owner.state == State.SLEEPING and p.engine.spec == spec), None)  # fmt: skip

    def revision(self, d: Deployment, spec: DeploymentSpec) -> int | None:
        """The revision a deploy of ``spec`` is: a sleeping one's with these settings, if any."""
        parked = self.match(d, spec)
        return parked.revision if parked is not None else None

    def pids(self, parked: Iterable[Parked]) -> set[int]:
        """Every process of these sleeping revisions (workers they forked included)."""
        out: set[int] = set()
        for p in parked:
            p.engine.process.track()
            out |= set(p.engine.process.members)
        return out

    def owned(self) -> dict[int, str]:
        """The processes of every sleeping revision → its deployment."""
        out: dict[int, str] = {}
        for p in self.all():
            if (e := p.owner.engine) is not None:
                out |= dict.fromkeys(e.process.members, p.deployment)
        return out

    def room(self, d: Deployment | None, spec: DeploymentSpec) -> tuple[set[int], set[int]]:
        """For preflight: the processes of sleeping revisions on ``spec``'s GPUs that would be
        stopped to make room, and those of the one a deploy of ``spec`` wakes (its memory is
        its own already)."""
        keep = self.match(d, spec) if d is not None else None
        others = self.pids(p for p in self.all(spec.gpus) if p is not keep)
        return others, self.pids([keep] if keep is not None else [])

    # -- the outgoing revision -----------------------------------------------------------

    async def retire(
        self, d: Deployment, old: EngineOwner, spec: DeploymentSpec, need: Need, deploy_id: int,
        keep: Parked | None,
    ) -> None:  # fmt: skip
        """Put the drained ``old`` to sleep where its settings ask and the room allows (the
        incoming ``spec``, which ``need`` sizes, must fit beside it once other sleeping
        revisions but ``keep``, which is woken for it, are stopped); else stop it."""
        engine = old.engine
        assert engine is not None
        await self.prune()
        why = None
        if wanted(engine.spec) and old.state == State.DRAINING:
            try:
                why = await self._try_sleep(d, old, spec, need, deploy_id, keep)
            except (LabError, OSError) as exc:  # journaled in its sleep step
                why = f"sleep failed: {exc}"
            if why is None:
                return
        await old.stop(lambda e: self.engines.stop(e, deploy_id, why))

    async def _try_sleep(
        self, d: Deployment, old: EngineOwner, spec: DeploymentSpec, need: Need, deploy_id: int,
        keep: Parked | None,
    ) -> str | None:  # fmt: skip
        """Sleep ``old``; or why not (None: it sleeps)."""
        engine = old.engine
        assert engine is not None
        mine = await self.planner.plan_need(engine.spec)
        engine.process.track()
        pids = set(engine.process.members)
        reading = await self.planner.read()
        keeps = (mine.asleep_bytes or 0) + CONTEXT_SLACK_BYTES
        others = self.pids(p for p in self.all() if p is not keep)
        wanted_bytes = need.bytes_per_gpu - (keep.gpu_bytes if keep else 0)
        for dev in reading.devices:
            if dev.index not in spec.gpus or dev.memory_free_bytes is None:
                continue
            mine_here = sum(p.used_bytes or 0 for p in dev.processes if p.pid in pids)
            back = sum(p.used_bytes or 0 for p in dev.processes if p.pid in others)
            room = dev.memory_free_bytes + max(0, mine_here - keeps) + back
            if wanted_bytes > room:
                return (f"not put to sleep: the new revision needs {wanted_bytes / GiB:.2f} GiB "
                        f"on GPU {dev.index} and would have {room / GiB:.2f} GiB beside it")  # fmt: skip
        available, total = self.host()
        weights = mine.weight_bytes * len(engine.spec.gpus)
        assert engine.spec.sleep is not None
        level = choose_level(engine.spec.sleep, weights, available, total)
        floor = None if mine.asleep_bytes is None else keeps
        before = self.planner.held_by(reading, engine.spec.gpus, pids)
        with self.journal.step(deploy_id, "sleep", level=level, setting=engine.spec.sleep,
                               host_available_bytes=available,
                               **identity(engine.process)) as step:  # fmt: skip
            begun = self.clock()

            async def put_to_sleep(e: Engine) -> int:
                await self.engines.sleep(e, level)
                return await self.engines.await_release(
                    e.spec.name, e.spec.gpus, pids, self.clock(), before if floor is None else floor
                )

            held = await old.sleep(put_to_sleep)
            kept_host = host_bytes(weights, level)
            step.freed_bytes = max(0, before - held)
            step.detail |= {"seconds": self.clock() - begun, "held_bytes": held,
                            "host_bytes": kept_host}  # fmt: skip
        d.sleeping[old.revision] = Parked(d.name, old, level, held, kept_host, time.time())
        return None

    # -- the incoming revision -----------------------------------------------------------

    async def wake(self, d: Deployment, parked: Parked, deploy_id: int) -> Engine | None:
        """Wake ``parked`` until it is ready; None when the wake failed (it is stopped, and
        the deploy starts the revision cold)."""
        d.sleeping.pop(parked.revision, None)
        owner, engine = parked.owner, parked.engine
        try:
            with self.journal.step(deploy_id, "wake", level=parked.level,
                                   revision=parked.revision, **identity(engine.process)) as step:  # fmt: skip
                begun = self.clock()
                try:
                    if owner.state != State.SLEEPING:
                        raise EngineError(owner.error or f"it is {owner.state}, not asleep")
                    await owner.wake(lambda e: self.engines.wake(e, parked.level))
                except (LabError, OSError) as exc:
                    raise EngineError(f"wake failed, cold start: {exc}") from exc
                step.detail["seconds"] = self.clock() - begun
        except EngineError:
            await owner.stop(lambda e: self.engines.stop(e, deploy_id))
            await owner.close()
            return None
        return engine

    async def smoke(
        self, owner: EngineOwner, engine: Engine, deploy_id: int,
        run: Callable[[Awaitable[None]], Awaitable[None]] = lambda work: work,
    ) -> None:  # fmt: skip
        """The woken revision's smoke test (through ``run``: a cancel may interrupt it); a
        failure or a cancel stops it (through its owner)."""
        try:
            await run(self.engines.smoke(engine))
        except BaseException:
            await asyncio.shield(owner.stop(lambda e: self.engines.stop(e, deploy_id)))
            raise

    async def wake_back(self, d: Deployment, old: EngineOwner, deploy_id: int) -> Engine | None:
        """A rollback to a revision this deploy put to sleep: wake and smoke-test it (None:
        it did not come back, and is stopped)."""
        parked = d.sleeping.get(old.revision)
        if parked is None or parked.owner is not old:
            return None
        engine = await self.wake(d, parked, deploy_id)
        if engine is None:
            return None
        try:
            await self.smoke(old, engine, deploy_id)
        except (LabError, OSError):
            return None
        return engine

    # -- room ----------------------------------------------------------------------------

    async def make_room(
        self, spec: DeploymentSpec, nbytes: int, deploy_id: int, keep: Parked | None = None
    ) -> None:
        """Stop sleeping revisions on ``spec``'s GPUs, oldest first (never ``keep``), until
        each has ``nbytes`` free or none is left."""
        await self.prune()
        for parked in [p for p in self.all(spec.gpus) if p is not keep]:
            reading = await self.planner.read()
            short = [d.index for d in reading.devices if d.index in spec.gpus
                     and d.memory_free_bytes is not None and d.memory_free_bytes < nbytes]  # fmt: skip
            if not short:
                return
            await self.evict(parked, deploy_id, f"room for {spec.name}: it needs "
                             f"{nbytes / GiB:.2f} GiB on GPU {short[0]}")  # fmt: skip

    async def evict(self, parked: Parked, deploy_id: int | None, why: str) -> None:
        """Stop a sleeping revision (journaled as ``evict`` in ``deploy_id``)."""
        d = self.deployments.get(parked.deployment)
        if d is not None:
            d.sleeping.pop(parked.revision, None)
        owner = parked.owner
        step = (self.journal.step(deploy_id, "evict", revision=parked.revision, why=why,
                                  **identity(parked.engine.process))
                if deploy_id is not None else contextlib.nullcontext())  # fmt: skip
        with step as s:
            result = await owner.stop(self.engines.stop)
            if s is not None and result is not None:
                s.freed_bytes = result[1]
        await owner.close()

    async def prune(self) -> None:
        """Forget sleeping revisions whose engine exited (its owner failed): stop what is left
        of them."""
        for parked in self.all():
            if parked.owner.state != State.SLEEPING:
                with contextlib.suppress(LabError, OSError):
                    await self.evict(parked, None, "exited asleep")

    async def stop_all(self) -> None:
        """Shutdown: stop every sleeping revision."""
        await asyncio.gather(*(self._stop_quietly(p) for p in self.all()))

    async def _stop_quietly(self, parked: Parked) -> None:
        with contextlib.suppress(LabError, OSError):
            await self.evict(parked, None, "the lab is shutting down")
