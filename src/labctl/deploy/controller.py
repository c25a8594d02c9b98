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
from collections.abc import Awaitable, Callable, Sequence
import contextlib
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import socket
import time
from typing import Any, Protocol, TypeVar

import aiohttp

from labctl.config import DeploymentSpec
from labctl.deploy.journal import Journal, Step
from labctl.deploy.preflight import Need, Planner
from labctl.deploy.revisions import Revisions
from labctl.engines.adapter import adapter
from labctl.errors import DeployError, EngineError, LabError
from labctl.gpu.sample import GpuBackend, GpuReading
from labctl.runtime.process import ENGINE_MARK, EngineProcess, startup_budget
from labctl.units import GiB

STATES = ("stopped", "starting", "ready", "draining", "stopping", "failed")
RELEASE_TIMEOUT_S = 30.0
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
class Engine:
    """A revision that is running."""

    revision: int
    spec: DeploymentSpec
    process: EngineProcess
    url: str
    #: Startup phase → seconds it took.
    phases: dict[str, float] = field(default_factory=dict)
    #: Flags the planner added to the command line.
    recommended: tuple[str, ...] = ()
    #: Bytes per GPU the planner said it takes (its startup time budget scales with them).
    need_bytes: int = 0
    #: The API key its /v1 takes (None: it takes none), sent by the gateway and the probes.
    key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


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
        self.release_timeout = release_timeout
        #: Each engine's own API key, from (deployment, revision): derived, so that a daemon
        #: that restarts knows the key of the engine it adopts without storing it.
        self.engine_key = engine_key
        self.deployments: dict[str, Deployment] = {}
        self._locks: dict[frozenset[int], asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None
        #: Durations of the last deploys' parts, for the daemon's metrics.
        self.observations: list[tuple[str, dict[str, Any]]] = []
        #: Revisions as journaled, their secret settings held apart.
        self.revisions = Revisions(journal)
        #: Set when the daemon shuts down: a deploy then stops where it is, without rollback.
        self.closing = False
        self.planner = Planner(backend, self.owned_pids)

    # -- helpers ---------------------------------------------------------------------

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

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

    def _read(self) -> GpuReading:
        return self.backend.read()

    # -- preflight ---------------------------------------------------------------------

    async def preflight(self, spec: DeploymentSpec, old: Engine | None) -> Need:
        return self.check_room(spec, old, await self.planner.plan_need(spec))

    def check_room(self, spec: DeploymentSpec, old: Engine | None, need: Need) -> Need:
        """Whether the GPUs have room for ``need`` once the old revision is gone."""
        if old is not None:
            old.process.track()  # workers it forked (or left behind) give memory back too
        old_pids = set(old.process.members) if old else set()
        return self.planner.check_room(spec, old_pids, need)

    # -- engines -----------------------------------------------------------------------

    async def start_engine(
        self,
        spec: DeploymentSpec,
        revision: int,
        on_spawn: Callable[[EngineProcess], None] = lambda process: None,
        recommended: Sequence[str] = (),
        need_bytes: int = 0,
    ) -> Engine:
        """Start a revision and wait until it is ready (health, its model listed).

        ``on_spawn`` hears of the process as soon as it exists, before it is ready.

        Raises:
            EngineError: it exited, stalled, timed out, or failed its probes (the log's tail).
        """
        port = spec.port or _free_port(self.host)
        settings = spec.to_dict() | {"recommended_args": list(recommended)}
        kind = adapter(spec.engine)
        launch = kind.launch(settings, self.host, port, spec.gpus)
        env = dict(os.environ) | launch.env | dict(spec.env) | {"LABCTL_HOME": str(self.home)}
        env |= {ENGINE_MARK: str(self.home), "LABCTL_DEPLOYMENT": spec.name}
        key = self.key_for(spec, revision)
        if key is not None and kind.key_env:
            env[kind.key_env] = key
        phases: dict[str, float] = {}
        tail: list[str] = []
        mark = [self.clock()]
        phase_of = adapter(spec.engine).phase

        def on_line(line: str) -> None:
            tail.append(line)
            del tail[:-20]
            if (name := phase_of(line)) is not None and name not in phases:
                now = self.clock()
                phases[name] = now - mark[0]
                mark[0] = now

        log = self.home / "logs" / f"{spec.name}-r{revision}.log"
        process = EngineProcess(launch.argv, log, env=env, on_line=on_line, clock=self.clock)
        await process.start()
        on_spawn(process)
        mark[0] = process.started_at
        url = f"http://{self.host}:{port}"
        engine = Engine(revision, spec, process, url, phases, tuple(recommended), need_bytes, key)
        try:
            await self._wait_ready(engine, launch.health_path, launch.served_model, tail)
        except BaseException:
            with contextlib.suppress(EngineError):
                await process.stop(grace=spec.stop_grace)
            # what comes next (a rollback) needs its memory back first
            await self.await_release(spec.name, spec.gpus, set(process.members), self.clock())
            raise
        return engine

    def _startup_timeout(self, engine: Engine) -> float:
        spec = engine.spec
        if spec.startup_timeout is not None:
            return spec.startup_timeout
        return startup_budget(engine.need_bytes * len(spec.gpus))

    async def _wait_ready(
        self, engine: Engine, health: str, served: str | None, tail: list[str]
    ) -> None:
        spec, process = engine.spec, engine.process
        budget = self._startup_timeout(engine)
        deadline = self.clock() + budget

        def failure(what: str) -> EngineError:
            last = " | ".join(tail[-3:]) or "no output"
            return EngineError(
                f"{spec.name} revision {engine.revision} {what}; last log lines: {last}"
            )

        while True:
            if (code := process.returncode) is not None:
                raise failure(f"exited with code {code} during startup")
            if process.silent_for() > spec.stall_timeout:
                raise failure(f"stalled: no log output for {spec.stall_timeout:g} s")
            if self.clock() > deadline:
                raise failure(f"did not become ready in {budget:g} s")
            if await self.probe(engine.url + health) and (
                served is None or served in await self.models(engine)
            ):
                return
            await asyncio.sleep(0.1)

    async def probe(self, url: str) -> bool:
        try:
            async with self.http().get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def key_for(self, spec: DeploymentSpec, revision: int) -> str | None:
        """The API key of ``spec``'s engine at ``revision`` (None: its engine takes none)."""
        if self.engine_key is None or adapter(spec.engine).key_env is None:
            return None
        return self.engine_key(spec.name, revision)

    async def models(self, engine: Engine) -> list[str]:
        """The model ids ``engine`` lists (empty when it does not answer, or refuses its key)."""
        try:
            async with self.http().get(
                engine.url + "/v1/models", headers=engine.headers(),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as r:  # fmt: skip
                doc = await r.json(content_type=None)
            return [str(m.get("id")) for m in doc.get("data", []) if isinstance(m, dict)]
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return []

    async def smoke(self, engine: Engine) -> None:
        """One real completion.

        Raises:
            EngineError: no 200 with a choice.
        """
        body = {"model": engine.spec.served, "prompt": "Hello", "max_tokens": 1}
        try:
            async with self.http().post(
                engine.url + "/v1/completions", json=body, headers=engine.headers()
            ) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"smoke test: no answer from {engine.url}: {exc}") from exc
        try:
            ok = status == 200 and bool(json.loads(text).get("choices"))
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise EngineError(
                f"smoke test: HTTP {status} from {engine.url}/v1/completions: {text[:200]}"
            )

    async def stop_engine(self, engine: Engine, deploy_id: int | None = None) -> tuple[float, int]:
        """Stop a revision and wait until the GPU has its memory back.

        Returns (seconds from the engine's exit to the release being seen, bytes freed).

        Raises:
            DeployError: memory still held after the release timeout (who holds it).
        """
        gpus = engine.spec.gpus
        pids = set(engine.process.members)
        before = self.planner.held_by(self._read(), gpus, pids)
        if deploy_id is not None:
            with self.journal.step(deploy_id, "stop", **_identity(engine.process)) as step:
                report = await engine.process.stop(grace=engine.spec.stop_grace)
                step.detail |= {"graceful": report.graceful, "exit_code": report.exit_code,
                                "orphans_killed": list(report.orphans_killed)}  # fmt: skip
        else:
            report = await engine.process.stop(grace=engine.spec.stop_grace)
        pids |= set(engine.process.members)
        exited = self.clock()
        step_cm = (
            self.journal.step(
                deploy_id,
                "verify_release",
                gpus=list(gpus),
                processes={str(p): engine.process.members.get(p, 0) for p in pids},
            )
            if deploy_id is not None
            else contextlib.nullcontext()
        )
        with step_cm as step:
            await self.await_release(engine.spec.name, gpus, pids, exited)
            lag = self.clock() - exited
            if step is not None:
                step.freed_bytes = before
                step.detail["release_seconds"] = lag
        self.observations.append(("release", {"seconds": lag, "bytes": before}))
        return lag, before

    async def await_release(
        self, name: str, gpus: Sequence[int], pids: set[int], since: float
    ) -> None:
        """Wait until no process of ``pids`` holds memory on ``gpus``.

        Raises:
            DeployError: still held ``release_timeout`` s after ``since``.
        """
        while True:
            held = self.planner.held_by(self._read(), gpus, pids)
            if held == 0:
                return
            if self.clock() - since > self.release_timeout:
                self.observations.append(("release_failed", {"bytes": held}))
                raise DeployError(
                    f"{name}: {held / GiB:.2f} GiB still held by the stopped revision's "
                    f"processes {sorted(pids)} after {self.release_timeout:g} s"
                )
            await asyncio.sleep(0.05)

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
            await asyncio.shield(self.stop_engine(old, deploy_id))
            self._checkpoint(d)
        self.set_state(d, "starting")
        with self.journal.step(deploy_id, "start", revision=revision) as step:
            engine = await self._interruptible(d, self.start_engine(
                spec, revision, self._spawned(step), need.recommended, need.bytes_per_gpu))  # fmt: skip
            step.detail |= {"url": engine.url, "phases": engine.phases}
        self.observations.append(("startup", dict(engine.phases)))
        try:
            with self.journal.step(deploy_id, "smoke_test", **_identity(engine.process)):
                await self._interruptible(d, self.smoke(engine))
        except (EngineError, DeployCancelled, asyncio.CancelledError):
            await asyncio.shield(self.stop_engine(engine, deploy_id))
            raise
        with self.journal.step(deploy_id, "switch", **_identity(engine.process)):
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
                engine = await self.start_engine(
                    old.spec, old.revision, self._spawned(step), old.recommended, old.need_bytes
                )
                step.detail |= {"url": engine.url, "phases": engine.phases}
                await self.smoke(engine)
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
                    await self.stop_engine(d.engine)
                d.engine = None
                self.journal.clear_current(d.name)
                self.set_state(d, "stopped")


def _identity(process: EngineProcess) -> dict[str, Any]:
    """What a step journals about an engine before acting on it: enough to finish the job."""
    return {"pid": process.pid, "start": process.start_time, "pgid": process.pid,
            "processes": {str(p): t for p, t in process.identity().items()}}  # fmt: skip


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
