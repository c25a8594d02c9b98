"""Full-replace deploys: preflight → drain → stop → verify release → start → smoke → switch → commit.

When the GPU cannot hold two copies, the old revision must be gone, and its
memory really released, before the new one can start. Every step is journaled
with its duration (and the memory it released); any failure after the old
revision stopped rolls back to it through the same stop/verify/start checks, so
the lab ends serving one of the two revisions whenever either can serve.

One deploy at a time per GPU set. Preflight asks the planner (``labctl fit``)
whether the new revision fits the GPU as it is now: its free memory plus what
the old revision will give back. Release verification asks the GPU backend
until no process of the old engine's tree holds memory and the device has the
room the new revision needs; memory held by a process labctl does not own is
named (pid, command, bytes) when it is what stands in the way.

A deploy belongs to the lab, not to the client that asked for it: it runs as a
task of its own and goes on to its commit or rollback whatever the client does.
A cancel is an explicit request; it takes effect where it is safe (while
draining, starting or smoke-testing; a stop in progress is finished first) and
rolls back like any failure. Every step that acts on an engine process journals
the process (pid, start time, process group, the tree's members) before it
acts, so that a daemon killed at any point leaves enough for the next one to
finish the job. The planner runs off the event loop, bounded in time.

Each engine process has an owner (``deploy/owner.py``) with a typed state machine; the
controller asks owners to start, drain and stop, and never sets a state itself. Whenever a
deployment's state changes, the controller publishes its :class:`~labctl.engines.Route`
to the gateway (where it serves, what it serves, its limits, whether its requests are
held), so the gateway never calls back. A deploy is submitted and gets a ticket at once;
its events (``deploy``, ``step``, ``startup``, ``state``) carry the ticket, so a client can
follow it, go away, and come back.

Revisions are journaled without their secrets (see ``deploy/revisions.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
import json
from pathlib import Path
import time
from typing import Any, TypeVar
import uuid
import weakref

from labctl.config import DeploymentSpec, ModelsConfig
from labctl.deploy import loadpath
from labctl.deploy import rollback as rollbacks
from labctl.deploy.containers import Flags
from labctl.deploy.deployment import DeployCancelled, Deployment, Hooks, NoHooks
from labctl.deploy.engines import RELEASE_TIMEOUT_S, Engine, Engines, identity
from labctl.deploy.journal import Journal, Step
from labctl.deploy.modelfiles import ModelFiles
from labctl.deploy.owner import EngineOwner, State
from labctl.deploy.preflight import Need, Planner
from labctl.deploy.revisions import Revisions
from labctl.deploy.sleep import Sleeper
from labctl.engines import Route, adapter
from labctl.errors import DeployError
from labctl.gpu.sample import GpuBackend, GpuReading
from labctl.home import write_private
from labctl.runtime.process import EngineProcess

T = TypeVar("T")


class Controller:
    def __init__(
        self,
        journal: Journal,
        backend: GpuBackend,
        home: Path,
        host: str = "127.0.0.1",
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[dict[str, Any]], None] = lambda event: None,
        release_timeout: float = RELEASE_TIMEOUT_S,
        engine_key: Callable[[str, int], str] | None = None,
        read_gpus: Callable[[], Awaitable[GpuReading]] | None = None,
        read_rate: float | None = None,
        models: ModelsConfig | None = None,
        doctor: Callable[[DeploymentSpec], Awaitable[str]] | None = None,
        containers: Flags = ((), ()),
    ) -> None:
        self.journal = journal
        self.home = home
        self.host = host
        self.hooks = hooks or NoHooks()
        self.clock = clock
        self.on_event = on_event
        self.deployments: dict[str, Deployment] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        #: Durations of the last deploys' parts, for the daemon's metrics.
        self.observations: list[tuple[str, dict[str, Any]]] = []
        #: Revisions as journaled, their secret settings held apart.
        self.revisions = Revisions(journal)
        #: Set when the daemon shuts down: a deploy then stops where it is, without rollback.
        self.closing = False
        #: Told when a serving engine exits unasked (the supervisor restarts it).
        self.on_exit: Callable[[Deployment, EngineOwner], None] = lambda d, owner: None
        self.planner = Planner(backend, self.owned_pids, read_gpus, doctor, containers)
        #: Starting, probing and stopping engine processes.
        self.engines = Engines(journal, self.planner, home, host, clock, release_timeout,
                               engine_key, self.observations, self._progress,
                               read_rate, containers)  # fmt: skip
        #: Revisions kept asleep and woken (warm swaps; ``deploy/sleep.py``).
        self.sleep = Sleeper(journal, self.engines, self.planner, self.deployments, clock)
        #: A deploy's model files: whole in the hub cache, or pulled (``deploy/modelfiles.py``).
        self.model_files = ModelFiles(journal, self._progress, models)
        #: Deploys by ticket: (deployment, deploy id once begun, its record once done).
        self.tickets: dict[str, dict[str, Any]] = {}
        self._steps: dict[int, tuple[str, str]] = {}
        #: Every engine process started (a forced shutdown kills those still starting too).
        self.spawned: weakref.WeakSet[EngineProcess] = weakref.WeakSet()
        journal.watchers.append(self._on_step)

    # -- helpers ---------------------------------------------------------------------

    async def close(self) -> None:
        owners = [d.owner for d in self.deployments.values()] + [p.owner for p in self.sleep.all()]
        for owner in owners:
            if owner is not None:
                await owner.close()
        await self.engines.close()

    def owned_pids(self) -> dict[int, str]:
        """Every process of every engine the lab runs (starting and stopping too) → its
        deployment."""
        out: dict[int, str] = {}
        for d in self.deployments.values():
            if d.owner is not None and d.owner.engine is not None:
                for pid in d.owner.engine.process.members:
                    out[pid] = d.name
        return out | self.sleep.owned()  # asleep: the GPU memory they keep is the lab's

    def write_owners(self) -> None:
        """``owners.json``: which process is whose, for `labctl gpus` and `labctl exporter`."""
        doc = {"pids": {str(pid): name for pid, name in self.owned_pids().items()}}
        write_private(self.home / "owners.json", json.dumps(doc))

    def route(self, d: Deployment) -> Route:
        """``d`` as the gateway routes it now."""
        spec, kind = d.spec, adapter(d.spec.engine)
        settings = spec.to_dict()
        limit = spec.max_concurrency or kind.default_concurrency(settings, d.max_num_seqs)
        e = d.engine if d.state == State.READY else None
        serves = kind.serves(settings)
        speech, actions = bool(serves & {"transcriptions", "translations"}), "actions" in serves
        return Route(d.name, spec.served, spec.aliases, e.url if e else None, limit,
                     spec.queue_size, e.key if e else None, serves,
                     d.swapping or d.restart_pending, tuple(kind.upstream.items()),
                     (spec.rtfx_floor if spec.rtfx_floor is not None else 1.0) if speech
                     else None, (spec.control_hz or 5.0) if actions else None,
                     kind.unnorm_keys(settings) if actions else ())  # fmt: skip

    def publish(self, d: Deployment) -> None:
        """Tell the gateway where ``d`` serves now (and release what it held for it)."""
        self.hooks.publish(self.route(d))

    def _emit(self, event: str, name: str, **data: Any) -> None:
        self.on_event({"type": event, "deployment": name, "time": time.time(), **data})

    def _shown(self, d: Deployment) -> None:
        """``d``'s state changed: an event, and its route to the gateway."""
        self._emit("state", d.name, state=d.state, error=d.error, ticket=d.ticket,
                   revision=d.owner.revision if d.owner else None)  # fmt: skip
        self.publish(d)

    def new_owner(self, d: Deployment, revision: int) -> EngineOwner:
        """An owner for ``d``'s ``revision`` whose changes of state show as ``d``'s while it
        is ``d``'s owner (a deploy's and a rollback's)."""

        def on_state(owner: EngineOwner, state: State, error: str | None) -> None:
            if owner is d.owner:
                self._shown(d)

        def on_exit(owner: EngineOwner) -> None:
            if owner is d.owner:
                self.on_exit(d, owner)

        return EngineOwner(d.name, revision, on_state, on_exit)

    def show_owner(self, d: Deployment, owner: EngineOwner, settled: bool = True) -> None:
        """``owner`` is now the one whose state ``d`` shows; ``settled``: the swap is over, and
        the gateway lets go of the requests it held."""
        shown = d.state
        d.owner = owner
        d.replaced.set()
        if settled:
            d.swapping = False
        if d.state != shown:
            self._shown(d)
        else:
            self.publish(d)

    def adopt(self, spec: DeploymentSpec, engine: Engine) -> Deployment:
        """Serve ``spec`` with an engine an earlier daemon left running (``reconcile``)."""
        d = self.add(spec)
        d.spec, d.revision = spec, engine.revision
        owner = self.new_owner(d, engine.revision)
        d.owner = owner
        owner.adopt(engine)
        return d

    def _on_step(self, step: Step, status: str, error: str | None) -> None:
        name, ticket = self._steps.get(step.deploy_id, (None, None))
        if name is not None:
            self._emit("step", name, ticket=ticket, deploy_id=step.deploy_id, step=step.name,
                       status=status, error=error)  # fmt: skip

    def _progress(self, name: str, doc: dict[str, Any]) -> None:
        d = self.deployments.get(name)
        self._emit("startup", name, ticket=d.ticket if d else None, **doc)

    # -- preflight ---------------------------------------------------------------------

    async def preflight(self, spec: DeploymentSpec, old: Engine | None) -> Need:
        await self.planner.check_doctor(spec)
        return await self.check_room(spec, old, await self.planner.plan_need(spec))

    async def check_room(self, spec: DeploymentSpec, old: Engine | None, need: Need) -> Need:
        """Whether the GPUs have room for ``need`` once the old revision is gone (and the
        sleeping ones but a revision of ``spec`` itself, which is woken instead)."""
        if old is not None:
            old.process.track()  # workers it forked (or left behind) give memory back too
        old_pids = set(old.process.members) if old else set()
        asleep, own = self.sleep.room(self.deployments.get(spec.name), spec)
        return await self.planner.check_room(spec, old_pids, need, asleep, own)

    # -- deploys -----------------------------------------------------------------------

    def add(self, spec: DeploymentSpec) -> Deployment:
        d = self.deployments.get(spec.name)
        if d is None:
            d = self.deployments[spec.name] = Deployment(spec.name, spec)
            self.publish(d)
        return d

    async def deploy(
        self, spec: DeploymentSpec, kind: str = "deploy", revision: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Replace ``spec.name``'s running revision with ``spec`` (a new revision unless given).

        Returns the journal's record of the deploy. A refusal leaves the old revision
        serving; a failure after it stopped rolls back to it. The deploy runs as a task of
        its own: the caller going away (a client that disconnects) does not stop it; only
        :meth:`cancel` does.

        Raises:
            DeployError: refused at preflight, or failed and rolled back (or could not).
        """
        if dry_run:
            d = self.add(spec := await self.planner.resolve(spec))
            self.revisions.remember(spec)
            need = await self.preflight(spec, d.engine)
            return {"deployment": spec.name, "dry_run": True, "fits": True, "need": need.summary,
                    "bytes_per_gpu": need.bytes_per_gpu,
                    "predicted": self._predict(spec, need).doc()}  # fmt: skip
        ticket = self.submit(spec, kind, revision)
        return await asyncio.shield(self.tickets[ticket]["task"])

    def submit(
        self, spec: DeploymentSpec, kind: str = "deploy", revision: int | None = None
    ) -> str:
        """Start a deploy and return its ticket at once; its events carry the ticket, and
        :attr:`tickets` holds its record when it ends."""
        d = self.add(spec)
        self.revisions.remember(spec)
        ticket = uuid.uuid4().hex[:12]
        task = asyncio.create_task(self._deploy(d, spec, kind, revision, ticket))
        entry: dict[str, Any] = {"ticket": ticket, "deployment": spec.name, "kind": kind,
                                 "state": "queued", "task": task}  # fmt: skip
        self.tickets[ticket] = entry
        while len(self.tickets) > 200:  # the oldest finished ones go
            old = next((t for t, e in self.tickets.items() if e["task"].done()), None)
            if old is None:
                break
            del self.tickets[old]

        def done(t: asyncio.Task[dict[str, Any]]) -> None:
            entry["state"] = "done"
            if not t.cancelled() and t.exception() is not None:  # journaled; retrieved here
                entry["error"] = str(t.exception())

        task.add_done_callback(done)
        self._emit("deploy", spec.name, phase="queued", kind=kind, ticket=ticket)
        return ticket

    def ticket(self, ticket: str) -> dict[str, Any] | None:
        """A deploy by ticket: its state (queued, running, done) and record once begun."""
        entry = self.tickets.get(ticket)
        if entry is None:
            return None
        out = {k: v for k, v in entry.items() if k != "task"}
        if "deploy_id" in entry:
            out["record"] = self.journal.record(entry["deploy_id"])
        return out

    def cancel(self, name: str) -> None:
        """Ask the deploy of ``name`` in progress to stop and roll back.

        Raises:
            DeployError: no deploy of ``name`` is running.
        """
        d = self.deployments.get(name)
        if d is None or d.deploying is None or d.deploying.done():
            raise DeployError(f"no deploy of {name} is running; see `labctl history {name}`")
        if d.cancel_requested:
            return  # asked already: a second cancel must not cut the first one's cleanup short
        d.cancel_requested = True
        if d.interruptible is not None:
            d.interruptible.cancel()

    async def close_deploys(self) -> None:
        """Shutdown: every deploy in progress stops where it safely can, without a rollback."""
        self.closing = True
        running = [e["task"] for e in self.tickets.values() if not e["task"].done()]
        for d in self.deployments.values():
            if d.deploying is not None:
                with contextlib.suppress(DeployError):
                    self.cancel(d.name)
        for task in running:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _interruptible(self, d: Deployment, work: Awaitable[T]) -> T:
        """Run ``work`` so that a cancel may interrupt it (it cleans up after itself)."""
        if d.cancel_requested:
            if asyncio.iscoroutine(work):
                work.close()
            raise DeployCancelled(self._cancel_reason())
        task = asyncio.ensure_future(work)
        d.interruptible = task
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and d.cancel_requested:
                raise DeployCancelled(self._cancel_reason()) from None
            raise
        finally:
            d.interruptible = None

    def _checkpoint(self, d: Deployment) -> None:
        """After a part that must not be interrupted (a stop): honour a cancel asked meanwhile."""
        if d.cancel_requested:
            raise DeployCancelled(self._cancel_reason())

    def _cancel_reason(self) -> str:
        return "the lab is shutting down" if self.closing else "cancelled by request"

    async def _deploy(
        self, d: Deployment, spec: DeploymentSpec, kind: str, revision: int | None, ticket: str
    ) -> dict[str, Any]:
        spec = await self.planner.resolve(spec)  # GPUs named by UUID or bus id: their indices
        gpus = sorted(set(spec.gpus) | set(d.spec.gpus))
        async with contextlib.AsyncExitStack() as locks:
            for g in gpus:  # one deploy at a time on any GPU, taken in order (no deadlock)
                await locks.enter_async_context(self._locks.setdefault(g, asyncio.Lock()))
            if self.closing:
                raise DeployCancelled(f"{spec.name}: the lab is shutting down")
            if kind == "restart" and (d.revision != revision or d.state == State.READY):
                raise DeployCancelled(f"{spec.name}: a deploy replaced it before its restart")
            d.deploying, d.cancel_requested, d.ticket = asyncio.current_task(), False, ticket
            self.tickets[ticket]["state"] = "running"
            try:
                return await self._deploy_locked(d, spec, kind, revision, ticket)
            finally:
                d.deploying, d.cancel_requested, d.ticket = None, False, None
                if d.swapping:
                    d.swapping = False
                    self.publish(d)

    async def _deploy_locked(
        self, d: Deployment, spec: DeploymentSpec, kind: str, revision: int | None, ticket: str
    ) -> dict[str, Any]:
        old = d.owner  # read under the locks: a deploy before this one may have changed it
        if revision is None:  # the settings of a sleeping revision are that revision
            revision = self.sleep.revision(d, spec) or self.revisions.add(spec)
        deploy_id = self.journal.begin(spec.name, kind, d.revision, revision)
        self._steps[deploy_id] = (spec.name, ticket)
        self.tickets[ticket]["deploy_id"] = deploy_id
        begun = self.clock()
        self._emit("deploy", spec.name, phase="begin", kind=kind, revision=revision,
                   ticket=ticket, deploy_id=deploy_id)  # fmt: skip
        try:
            try:
                await self._interruptible(d, self.model_files.prepare(spec, deploy_id))
                with self.journal.step(deploy_id, "preflight") as step:
                    serving = old.engine if old is not None else None
                    need = await self._interruptible(d, self.preflight(spec, serving))
                    step.detail["need"] = need.summary
                d.max_num_seqs = need.max_num_seqs
            except DeployError as exc:
                self.journal.finish(deploy_id, "refused", str(exc))
                self.observations.append(
                    ("deploy", {"outcome": "refused", "seconds": self.clock() - begun})
                )
                self._emit("deploy", spec.name, phase="refused", error=str(exc), ticket=ticket,
                           deploy_id=deploy_id)  # fmt: skip
                raise
            return await self._run_deploy(d, old, spec, kind, revision, deploy_id, need, begun)
        finally:
            self._steps.pop(deploy_id, None)

    async def _run_deploy(
        self, d: Deployment, old: EngineOwner | None, spec: DeploymentSpec, kind: str,
        revision: int, deploy_id: int, need: Need, begun: float,
    ) -> dict[str, Any]:  # fmt: skip
        outcome, error, d.warm = "committed", None, False
        try:
            await self._replace(d, old, spec, revision, deploy_id, need)
        except (Exception, asyncio.CancelledError) as exc:  # anything: the old revision comes back
            error = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):  # the daemon itself is going away
                error = "the daemon stopped during the deploy"
            if self.closing or isinstance(exc, asyncio.CancelledError):
                outcome = "interrupted"
                self._leave(d, old)
            else:
                back = await rollbacks.roll_back(self, d, old, deploy_id)
                outcome = "rolled_back" if back else "failed"
        self.journal.finish(deploy_id, outcome, error)
        self.observations.append(("deploy", {"outcome": outcome, "seconds": self.clock() - begun,
                                             "swap": "warm" if d.warm else "cold"}))  # fmt: skip
        self._emit("deploy", spec.name, phase=outcome, revision=d.revision, error=error,
                   ticket=d.ticket, deploy_id=deploy_id)  # fmt: skip
        record = self.journal.record(deploy_id)
        assert record is not None  # begun and finished above
        if error is not None:
            cls = (
                DeployCancelled if outcome == "interrupted" or "cancelled" in error else DeployError
            )
            raise cls(
                f"{spec.name} revision {revision} failed: {error}; "
                + (f"rolled back to revision {d.revision}, which serves again"
                   if outcome == "rolled_back" else "nothing serves it now")
            )  # fmt: skip
        return record

    async def _replace(
        self,
        d: Deployment,
        old: EngineOwner | None,
        spec: DeploymentSpec,
        revision: int,
        deploy_id: int,
        need: Need,
    ) -> None:
        parked = self.sleep.match(d, spec)  # asleep with these settings: woken, not started
        if old is not None and old.engine is not None:
            d.swapping = True
            if old.state == State.READY:
                with self.journal.step(deploy_id, "drain"):
                    await self._interruptible(d, old.drain(lambda: self.hooks.drain(d.name)))
            self.journal.clear_current(d.name)  # from here on, the old revision is not serving
            # a stop (or sleep) is finished once begun, whatever is asked meanwhile
            await self.sleep.retire(d, old, spec, need, deploy_id, parked)
            self._checkpoint(d)
        engine = None
        if parked is not None:
            await self.sleep.make_room(spec, need.bytes_per_gpu - parked.gpu_bytes, deploy_id,
                                       parked)  # fmt: skip
            self.show_owner(d, new := parked.owner, settled=False)
            if (engine := await self.sleep.wake(d, parked, deploy_id)) is not None:
                d.warm, revision = True, parked.revision
                with self.journal.step(deploy_id, "smoke_test", **identity(engine.process)):
                    await self.sleep.smoke(
                        new, engine, deploy_id, lambda w: self._interruptible(d, w)
                    )
        if engine is None:  # a cold start (a wake that failed falls back to one)
            await self.sleep.make_room(spec, need.bytes_per_gpu, deploy_id)
            new = self.new_owner(d, revision)
            self.show_owner(d, new, settled=False)  # the old revision is gone: d shows the new one
            engine = await self._interruptible(d, new.start(
                lambda: self.bring_up(spec, revision, need, deploy_id, "start")))  # fmt: skip
            self.observations.append(("startup", dict(engine.phases)))
        with self.journal.step(deploy_id, "switch", **identity(engine.process)):
            d.revision, d.spec = revision, spec
            self.journal.ran_on(deploy_id, self.planner.uuids(spec.gpus))
            self.journal.set_current(d.name, revision, engine.process.pid,
                                     engine.process.start_time, engine.url)  # fmt: skip
            if old is not None and old is not new and old.state != State.SLEEPING:
                await old.close()
            self.show_owner(d, new)

    def _predict(self, spec: DeploymentSpec, need: Need) -> loadpath.Prediction:
        """How long a start of ``spec`` should take, phase by phase (``deploy/loadpath.py``)."""
        return loadpath.plan(
            spec,
            need.weight_bytes,
            self.journal.history(limit=100),
            self.engines.configured_rate,
            self.engines.last_rate,
            self.home,
        )

    async def bring_up(
        self, spec: DeploymentSpec, revision: int, need: Need, deploy_id: int, step_name: str
    ) -> Engine:
        """Start a revision (journaled as ``step_name``), smoke-test it (as a step of its own
        in a deploy; within the step in a rollback), and stop it again if the test fails."""
        with self.journal.step(deploy_id, step_name, revision=revision) as step:
            predicted = self._predict(spec, need)
            step.detail["predicted"] = predicted.doc()  # journaled with the pid, at the spawn
            engine = await self.engines.start(spec, revision, self._spawned(step),
                                              need.recommended, need.bytes_per_gpu,
                                              need.weight_bytes)  # fmt: skip
            engine.load_path = loadpath.verdict(predicted, engine.phases, engine.weights_from)
            step.detail |= {"url": engine.url, "phases": engine.phases,
                            "load_path": engine.load_path}  # fmt: skip
            if step_name == "rollback":
                await self._smoke_or_stop(engine, deploy_id)
                return engine
        with self.journal.step(deploy_id, "smoke_test", **identity(engine.process)):
            await self._smoke_or_stop(engine, deploy_id)
        return engine

    async def _smoke_or_stop(self, engine: Engine, deploy_id: int) -> None:
        try:
            await self.engines.smoke(engine)
        except BaseException:
            await asyncio.shield(self.engines.stop(engine, deploy_id))
            raise

    def _leave(self, d: Deployment, old: EngineOwner | None) -> None:
        """A deploy stopped by the shutdown: nothing new serves; what still runs is stopped by
        the shutdown that follows (the old revision, if it was never stopped)."""
        if old is not None and old.engine is not None:
            old.undrain()
            self.show_owner(d, old)

    def _spawned(self, step: Step) -> Callable[[EngineProcess], None]:
        """Journal a new engine's pid at once, so a daemon killed now can find it later."""

        def note(process: EngineProcess) -> None:
            self.spawned.add(process)
            step.detail |= {"pid": process.pid, "start": process.start_time,
                            "pgid": process.pid}  # fmt: skip
            self.journal.note(step)

        return note

    async def rollback(
        self,
        name: str,
        check: Callable[[DeploymentSpec, DeploymentSpec], Awaitable[None]] | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Deploy the revision before the one serving (``deploy/rollback.py``)."""
        return await rollbacks.rollback(self, name, check, wait)
