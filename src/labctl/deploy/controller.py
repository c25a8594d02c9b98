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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
import contextlib
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import socket
import time
from typing import Any, Protocol

import aiohttp

from labctl.catalog.gpus import gpu as catalog_gpu
from labctl.catalog.models import resolve
from labctl.config import DeploymentSpec
from labctl.deploy.journal import Journal, Step
from labctl.engines.adapter import adapter
from labctl.errors import CatalogError, DeployError, EngineError, LabError
from labctl.fit.plan import FitRequest, plan
from labctl.gpu.procs import cmdline, read_stat
from labctl.gpu.sample import GpuBackend, GpuReading
from labctl.runtime.process import EngineProcess, startup_budget
from labctl.units import GiB

STATES = ("stopped", "starting", "ready", "draining", "stopping", "failed")
#: vLLM flags the planner reads from a deployment's ``args``.
FIT_FLAGS = ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
             "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype",
             "quantization", "enforce_eager", "enable_prefix_caching")  # fmt: skip
RELEASE_TIMEOUT_S = 30.0


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


@dataclass(frozen=True)
class Need:
    """What preflight found: bytes the revision needs on each of its GPUs, and why."""

    bytes_per_gpu: int
    summary: str
    #: The planner's flags that make the plan explicit (vLLM), added where the user set none.
    recommended: tuple[str, ...] = ()
    #: Sequences the engine runs at once (vLLM's max_num_seqs), where known.
    max_num_seqs: int | None = None


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
    ) -> None:
        self.journal = journal
        self.backend = backend
        self.home = home
        self.host = host
        self.hooks = hooks or NoHooks()
        self.clock = clock
        self.on_event = on_event
        self.release_timeout = release_timeout
        self.deployments: dict[str, Deployment] = {}
        self._locks: dict[frozenset[int], asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None
        #: Durations of the last deploys' parts, for the daemon's metrics.
        self.observations: list[tuple[str, dict[str, Any]]] = []

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
        owned = self.owned_pids()
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

    def preflight(self, spec: DeploymentSpec, old: Engine | None) -> Need:
        need = self.need(spec)
        if old is not None:
            old.process.track()  # workers it forked (or left behind) give memory back too
        reading = self._read()
        old_pids = set(old.process.members) if old else set()
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

    # -- engines -----------------------------------------------------------------------

    async def start_engine(
        self,
        spec: DeploymentSpec,
        revision: int,
        on_spawn: Callable[[EngineProcess], None] = lambda process: None,
        recommended: Sequence[str] = (),
    ) -> Engine:
        """Start a revision and wait until it is ready (health, its model listed).

        ``on_spawn`` hears of the process as soon as it exists, before it is ready.

        Raises:
            EngineError: it exited, stalled, timed out, or failed its probes (the log's tail).
        """
        port = spec.port or _free_port(self.host)
        settings = spec.to_dict() | {"recommended_args": list(recommended)}
        launch = adapter(spec.engine).launch(settings, self.host, port, spec.gpus)
        env = dict(os.environ) | launch.env | dict(spec.env) | {"LABCTL_HOME": str(self.home)}
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
        engine = Engine(revision, spec, process, url, phases, tuple(recommended))
        try:
            await self._wait_ready(engine, launch.health_path, launch.served_model, tail)
        except BaseException:
            with contextlib.suppress(EngineError):
                await process.stop(grace=spec.stop_grace)
            # what comes next (a rollback) needs its memory back first
            await self.await_release(spec.name, spec.gpus, set(process.members), self.clock())
            raise
        return engine

    def _startup_timeout(self, spec: DeploymentSpec) -> float:
        if spec.startup_timeout is not None:
            return spec.startup_timeout
        try:
            need = self.need(spec)
        except LabError:
            return startup_budget(0)
        return startup_budget(need.bytes_per_gpu * len(spec.gpus))

    async def _wait_ready(
        self, engine: Engine, health: str, served: str | None, tail: list[str]
    ) -> None:
        spec, process = engine.spec, engine.process
        deadline = self.clock() + self._startup_timeout(spec)

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
                raise failure(f"did not become ready in {self._startup_timeout(spec):g} s")
            if await self.probe(engine.url + health) and (
                served is None or served in await self._models(engine.url)
            ):
                return
            await asyncio.sleep(0.1)

    async def probe(self, url: str) -> bool:
        try:
            async with self.http().get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _models(self, base: str) -> list[str]:
        try:
            async with self.http().get(
                base + "/v1/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
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
            async with self.http().post(engine.url + "/v1/completions", json=body) as r:
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
        before = self.held_by(self._read(), gpus, pids)
        if deploy_id is not None:
            alive = engine.process.alive_members()
            with self.journal.step(
                deploy_id, "stop", pid=engine.process.pid, processes=alive
            ) as step:
                report = await engine.process.stop(grace=engine.spec.stop_grace)
                step.detail |= {"graceful": report.graceful, "exit_code": report.exit_code,
                                "orphans_killed": list(report.orphans_killed)}  # fmt: skip
        else:
            report = await engine.process.stop(grace=engine.spec.stop_grace)
        pids |= set(engine.process.members)
        exited = self.clock()
        step_cm = (
            self.journal.step(deploy_id, "verify_release", gpus=list(gpus))
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
            held = self.held_by(self._read(), gpus, pids)
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
        serving; a failure after it stopped rolls back to it.

        Raises:
            DeployError: refused at preflight, or failed and rolled back (or could not).
        """
        d = self.add(spec)
        if dry_run:
            need = self.preflight(spec, d.engine)
            return {"deployment": spec.name, "dry_run": True, "fits": True, "need": need.summary,
                    "bytes_per_gpu": need.bytes_per_gpu}  # fmt: skip
        gpus = sorted(set(spec.gpus) | set(d.spec.gpus))
        async with contextlib.AsyncExitStack() as locks:
            for g in gpus:  # one deploy at a time on any GPU, taken in order (no deadlock)
                await locks.enter_async_context(self._lock(g))
            old = d.engine  # read under the locks: a deploy before this one may have changed it
            if revision is None:
                revision = self.journal.add_revision(spec.name, spec.to_dict())
            deploy_id = self.journal.begin(spec.name, kind, d.revision, revision)
            begun = self.clock()
            self._emit("deploy", spec.name, phase="begin", kind=kind, revision=revision)
            try:
                with self.journal.step(deploy_id, "preflight") as step:
                    need = self.preflight(spec, old)
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
                await self._replace(d, old, spec, revision, deploy_id, need.recommended)
            except Exception as exc:  # anything: the old revision must come back
                error = str(exc)
                outcome = "rolled_back" if await self._roll_back(d, old, deploy_id) else "failed"
            self.journal.finish(deploy_id, outcome, error)
            self.observations.append(
                ("deploy", {"outcome": outcome, "seconds": self.clock() - begun})
            )
            self._emit("deploy", spec.name, phase=outcome, revision=d.revision, error=error)
            record = self.journal.history(spec.name, limit=1)[0]
            if error is not None:
                raise DeployError(
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
        recommended: Sequence[str] = (),
    ) -> None:
        if old is not None:
            with self.journal.step(deploy_id, "drain"):
                self.set_state(d, "draining")
                await self.hooks.drain(d.name)
            self.set_state(d, "stopping")
            d.engine = None  # from here on, the old revision is not serving
            self.journal.clear_current(d.name)
            await self.stop_engine(old, deploy_id)
        self.set_state(d, "starting")
        with self.journal.step(deploy_id, "start", revision=revision) as step:
            engine = await self.start_engine(spec, revision, self._spawned(step), recommended)
            step.detail |= {"url": engine.url, "phases": engine.phases}
        self.observations.append(("startup", dict(engine.phases)))
        try:
            with self.journal.step(deploy_id, "smoke_test"):
                await self.smoke(engine)
        except EngineError:
            await self.stop_engine(engine, deploy_id)
            raise
        with self.journal.step(deploy_id, "switch"):
            d.engine, d.revision, d.spec = engine, revision, spec
            self.journal.set_current(d.name, revision, engine.process.pid,
                                     engine.process.start_time, engine.url)  # fmt: skip
            self.set_state(d, "ready")
            await self.hooks.resume(d.name, engine.url)

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
                    old.spec, old.revision, self._spawned(step), old.recommended
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
            step.detail |= {"pid": process.pid, "start": process.start_time}
            self.journal.note(step)

        return note

    async def rollback(self, name: str) -> dict[str, Any]:
        """Deploy the revision before the one serving (a new deploy of an old revision).

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
        spec = DeploymentSpec.from_dict(name, self.journal.revision(name, target))
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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
