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

Revisions are journaled without their secrets (see ``deploy/revisions.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass
from pathlib import Path
import time
from typing import Any, Protocol, TypeVar

from labctl.config import DeploymentSpec
from labctl.deploy.engines import RELEASE_TIMEOUT_S, Engine, Engines, identity
from labctl.deploy.journal import Journal, Step
from labctl.deploy.preflight import Need, Planner
from labctl.deploy.revisions import Revisions
from labctl.errors import DeployError, EngineError, LabError
from labctl.gpu.sample import GpuBackend
from labctl.runtime.process import EngineProcess

STATES = ("stopped", "starting", "ready", "draining", "stopping", "failed")
T = TypeVar("T")


class Hooks(Protocol):
    """What the gateway does around a swap: hold new requests, let in-flight ones finish."""

    async def drain(self, name: str) -> None: ...

    async def resume(self, name: str, url: str | None) -> None: ...


class NoHooks:
    async def drain(self, name: str) -> None:
        return None

    async def resume(self, name: str, url: str | None) -> None:
        return None


@dataclass
class Deployment:
    name: str
    spec: DeploymentSpec
    state: str = "stopped"
    revision: int | None = None
    engine: Engine | None = None
    error: str | None = None
    restarts: int = 0
    #: Sequences its engine runs at once, as planned (the gateway's default limit).
    max_num_seqs: int | None = None
    #: The deploy in progress, if any, and whether a cancel was asked for.
    deploying: asyncio.Task[dict[str, Any]] | None = None
    cancel_requested: bool = False
    #: The part of the deploy a cancel may interrupt right now (drain, start, smoke test).
    interruptible: asyncio.Task[Any] | None = None

    def status(self) -> dict[str, Any]:
        e = self.engine
        return {
            "name": self.name, "state": self.state, "model": self.spec.model,
            "served_model": self.spec.served, "engine": self.spec.engine,
            "revision": self.revision, "gpus": list(self.spec.gpus),
            "url": e.url if e else None, "pid": e.process.pid if e else None,
            "error": self.error, "restarts": self.restarts,
            "startup_phases": dict(e.phases) if e else {},
        }  # fmt: skip


class DeployCancelled(DeployError):
    """A deploy stopped on request (``labctl cancel``) or by the daemon's shutdown."""


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
    ) -> None:
        self.journal = journal
        self.backend = backend
        self.home = home
        self.host = host
        self.hooks = hooks or NoHooks()
        self.clock = clock
        self.on_event = on_event
        self.deployments: dict[str, Deployment] = {}
        self._locks: dict[frozenset[int], asyncio.Lock] = {}
        #: Durations of the last deploys' parts, for the daemon's metrics.
        self.observations: list[tuple[str, dict[str, Any]]] = []
        #: Revisions as journaled, their secret settings held apart.
        self.revisions = Revisions(journal)
        #: Set when the daemon shuts down: a deploy then stops where it is, without rollback.
        self.closing = False
        self.planner = Planner(backend, self.owned_pids)
        #: Starting, probing and stopping engine processes.
        self.engines = Engines(journal, self.planner, home, host, clock, release_timeout,
                               engine_key, self.observations)  # fmt: skip

    # -- helpers ---------------------------------------------------------------------

    async def close(self) -> None:
        await self.engines.close()

    def _lock(self, gpu: int) -> asyncio.Lock:
        return self._locks.setdefault(frozenset((gpu,)), asyncio.Lock())

    def owned_pids(self) -> dict[int, str]:
        """Every process of every running engine → its deployment."""
        out: dict[int, str] = {}
        for d in self.deployments.values():
            if d.engine is not None:
                for pid in d.engine.process.members:
                    out[pid] = d.name
        return out

    def _emit(self, event: str, name: str, **data: Any) -> None:
        self.on_event({"type": event, "deployment": name, "time": time.time(), **data})

    def set_state(self, d: Deployment, state: str, error: str | None = None) -> None:
        d.state, d.error = state, error
        self._emit("state", d.name, state=state, revision=d.revision, error=error)

    # -- preflight ---------------------------------------------------------------------

    async def preflight(self, spec: DeploymentSpec, old: Engine | None) -> Need:
        return self.check_room(spec, old, await self.planner.plan_need(spec))

    def check_room(self, spec: DeploymentSpec, old: Engine | None, need: Need) -> Need:
        """Whether the GPUs have room for ``need`` once the old revision is gone."""
        if old is not None:
            old.process.track()  # workers it forked (or left behind) give memory back too
        old_pids = set(old.process.members) if old else set()
        return self.planner.check_room(spec, old_pids, need)

    # -- deploys -----------------------------------------------------------------------

    def add(self, spec: DeploymentSpec) -> Deployment:
        d = self.deployments.get(spec.name) or Deployment(spec.name, spec)
        self.deployments[spec.name] = d
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
        d = self.add(spec)
        self.revisions.remember(spec)
        if dry_run:
            need = self.check_room(spec, d.engine, await self.planner.plan_need(spec))
            return {"deployment": spec.name, "dry_run": True, "fits": True, "need": need.summary,
                    "bytes_per_gpu": need.bytes_per_gpu}  # fmt: skip
        task = asyncio.create_task(self._deploy(d, spec, kind, revision))
        # its outcome is journaled; a caller that went away must not leave it unretrieved
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

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
        running = [d.deploying for d in self.deployments.values() if d.deploying is not None]
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
        self, d: Deployment, spec: DeploymentSpec, kind: str, revision: int | None
    ) -> dict[str, Any]:
        gpus = sorted(set(spec.gpus) | set(d.spec.gpus))
        async with contextlib.AsyncExitStack() as locks:
            for g in gpus:  # one deploy at a time on any GPU, taken in order (no deadlock)
                await locks.enter_async_context(self._lock(g))
            if self.closing:
                raise DeployCancelled(f"{spec.name}: the lab is shutting down")
            d.deploying, d.cancel_requested = asyncio.current_task(), False
            try:
                return await self._deploy_locked(d, spec, kind, revision)
            finally:
                d.deploying, d.cancel_requested = None, False

    async def _deploy_locked(
        self, d: Deployment, spec: DeploymentSpec, kind: str, revision: int | None
    ) -> dict[str, Any]:
        old = d.engine  # read under the locks: a deploy before this one may have changed it
        if revision is None:
            revision = self.revisions.add(spec)
        deploy_id = self.journal.begin(spec.name, kind, d.revision, revision)
        begun = self.clock()
        self._emit("deploy", spec.name, phase="begin", kind=kind, revision=revision)
        try:
            with self.journal.step(deploy_id, "preflight") as step:
                need = await self._interruptible(d, self.preflight(spec, old))
                step.detail["need"] = need.summary
            d.max_num_seqs = need.max_num_seqs
        except DeployError as exc:
            self.journal.finish(deploy_id, "refused", str(exc))
            self._emit("deploy", spec.name, phase="refused", error=str(exc))
            self.observations.append(
                ("deploy", {"outcome": "refused", "seconds": self.clock() - begun})
            )
            raise
        outcome, error = "committed", None
        try:
            await self._replace(d, old, spec, revision, deploy_id, need)
        except (Exception, asyncio.CancelledError) as exc:  # anything: the old revision comes back
            error = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):  # the daemon itself is going away
                error = "the daemon stopped during the deploy"
            if self.closing or isinstance(exc, asyncio.CancelledError):
                outcome = "interrupted"
                await self._leave(d, old)
            else:
                outcome = "rolled_back" if await self._roll_back(d, old, deploy_id) else "failed"
        self.journal.finish(deploy_id, outcome, error)
        self.observations.append(("deploy", {"outcome": outcome, "seconds": self.clock() - begun}))
        self._emit("deploy", spec.name, phase=outcome, revision=d.revision, error=error)
        record = self.journal.history(spec.name, limit=1)[0]
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
        old: Engine | None,
        spec: DeploymentSpec,
        revision: int,
        deploy_id: int,
        need: Need,
    ) -> None:
        if old is not None:
            with self.journal.step(deploy_id, "drain"):
                self.set_state(d, "draining")
                await self._interruptible(d, self.hooks.drain(d.name))
            self.set_state(d, "stopping")
            d.engine = None  # from here on, the old revision is not serving
            self.journal.clear_current(d.name)
            # a stop is finished once begun, whatever is asked meanwhile (never half-stopped)
            await asyncio.shield(self.engines.stop(old, deploy_id))
            self._checkpoint(d)
        self.set_state(d, "starting")
        with self.journal.step(deploy_id, "start", revision=revision) as step:
            engine = await self._interruptible(d, self.engines.start(
                spec, revision, self._spawned(step), need.recommended, need.bytes_per_gpu))  # fmt: skip
            step.detail |= {"url": engine.url, "phases": engine.phases}
        self.observations.append(("startup", dict(engine.phases)))
        try:
            with self.journal.step(deploy_id, "smoke_test", **identity(engine.process)):
                await self._interruptible(d, self.engines.smoke(engine))
        except (EngineError, DeployCancelled, asyncio.CancelledError):
            await asyncio.shield(self.engines.stop(engine, deploy_id))
            raise
        with self.journal.step(deploy_id, "switch", **identity(engine.process)):
            d.engine, d.revision, d.spec = engine, revision, spec
            self.journal.set_current(d.name, revision, engine.process.pid,
                                     engine.process.start_time, engine.url)  # fmt: skip
            self.set_state(d, "ready")
            await self.hooks.resume(d.name, engine.url)

    async def _leave(self, d: Deployment, old: Engine | None) -> None:
        """A deploy stopped by the shutdown: nothing new serves; what still runs is stopped by
        the shutdown that follows (the old revision, if it was never stopped)."""
        if d.engine is not None and d.engine is old:
            self.set_state(d, "ready")
            await self.hooks.resume(d.name, old.url)
            return
        self.set_state(d, "stopped", "the lab shut down during a deploy")
        await self.hooks.resume(d.name, None)

    async def _roll_back(self, d: Deployment, old: Engine | None, deploy_id: int) -> bool:
        """Bring the old revision back after a failed deploy; True if it serves again."""
        if d.engine is not None and d.engine is old:
            self.set_state(d, "ready")  # never stopped: it kept serving
            await self.hooks.resume(d.name, old.url)
            return True
        if old is None:
            self.set_state(d, "failed", "the deploy failed and there is no earlier revision")
            await self.hooks.resume(d.name, None)
            return False
        try:
            with self.journal.step(deploy_id, "rollback", revision=old.revision) as step:
                engine = await self.engines.start(
                    old.spec, old.revision, self._spawned(step), old.recommended, old.need_bytes
                )
                step.detail |= {"url": engine.url, "phases": engine.phases}
                await self.engines.smoke(engine)
        except Exception as exc:
            self.set_state(d, "failed", f"rollback failed too: {exc}")
            await self.hooks.resume(d.name, None)
            return False
        d.engine, d.revision, d.spec = engine, old.revision, old.spec
        self.journal.set_current(d.name, old.revision, engine.process.pid,
                                 engine.process.start_time, engine.url)  # fmt: skip
        self.set_state(d, "ready")
        await self.hooks.resume(d.name, engine.url)
        return True

    def _spawned(self, step: Step) -> Callable[[EngineProcess], None]:
        """Journal a new engine's pid at once, so a daemon killed now can find it later."""

        def note(process: EngineProcess) -> None:
            step.detail |= {"pid": process.pid, "start": process.start_time,
                            "pgid": process.pid}  # fmt: skip
            self.journal.note(step)

        return note

    async def rollback(
        self,
        name: str,
        check: Callable[[DeploymentSpec, DeploymentSpec], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Deploy the revision before the one serving (a new deploy of an old revision).

        ``check(current, earlier)`` may refuse it (raising), as it would refuse the same
        change asked for directly.

        Raises:
            DeployError: unknown deployment, or no earlier revision.
        """
        d = self.deployments.get(name)
        if d is None or d.revision is None:
            raise DeployError(f"{name!r} is not serving a revision; see `labctl status`")
        earlier = [r for r in self.journal.history(name, limit=200)
                   if r["outcome"] == "committed" and r["to_revision"] != d.revision]  # fmt: skip
        if not earlier:
            raise DeployError(f"{name} has no earlier committed revision to roll back to")
        target = int(earlier[0]["to_revision"])
        spec = self.revisions.restore(name, target)
        if check is not None:
            await check(d.spec, spec)
        return await self.deploy(spec, kind="rollback", revision=target)

    async def stop_all(self) -> None:
        """Stop every engine and wait for its memory (the daemon's shutdown)."""
        for d in self.deployments.values():
            if d.engine is not None:
                self.set_state(d, "stopping")
                with contextlib.suppress(LabError, OSError):
                    await self.engines.stop(d.engine)
                d.engine = None
                self.journal.clear_current(d.name)
                self.set_state(d, "stopped")
