"""Engine processes as a deploy sees them: started until ready, probed, smoke-tested, stopped
until the GPU has their memory back.

A start spawns the engine with its environment (the lab's mark, its own API key), tails
its log for startup phases, and waits for health and its model listed, failing early if
it exits or stops logging; a start that fails stops what it spawned and waits for its
memory, so a rollback can follow. A stop (journaled with the processes it acts on, before
it acts) ends the whole tree and then waits until no process of it holds GPU memory.

An engine with a sleep mode (vLLM's development endpoints) can also be put to sleep, which
keeps its process and gives back most of its memory, and woken again; a level-2 wake reads
the weights again (``collective_rpc`` ``reload_weights``) before it takes its KV cache back.
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
from typing import Any

import aiohttp

from labctl.config import DeploymentSpec
from labctl.deploy import containers
from labctl.deploy.journal import Journal
from labctl.deploy.loadpath import WEIGHTS_BEGIN, weights_seconds
from labctl.deploy.preflight import Planner
from labctl.engines import Health, adapter
from labctl.errors import DeployError, EngineError, LabError
from labctl.gpu.identity import misplaced
from labctl.runtime.process import ENGINE_MARK, EngineProcess, startup_budget
from labctl.units import GiB

RELEASE_TIMEOUT_S = 30.0
#: How often the engine's log is read (``runtime/process.py``).
LOG_POLL_S = 0.05


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
    #: Bytes of weights it reads at startup (0: not known).
    weight_bytes: int = 0
    #: Seconds from its spawn to the log line that says weights begin (None: none seen).
    weights_from: float | None = None
    #: Its start against the prediction (``deploy/loadpath.py``): phases, dominant, bound.
    load_path: dict[str, Any] = field(default_factory=dict)
    #: In a container: which, its image and runtime (None: a host process).
    container: containers.InContainer | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


class Engines:
    def __init__(
        self,
        journal: Journal,
        planner: Planner,
        home: Path,
        host: str,
        clock: Callable[[], float],
        release_timeout: float = RELEASE_TIMEOUT_S,
        engine_key: Callable[[str, int], str] | None = None,
        observations: list[tuple[str, dict[str, Any]]] | None = None,
        progress: Callable[[str, dict[str, Any]], None] = lambda name, doc: None,
        read_rate: float | None = None,
        containers: containers.Flags = ((), ()),
    ) -> None:
        self.journal = journal
        #: The container runtime's flags on this machine (``[lab] container_*_flags``).
        self.containers = containers
        self.planner = planner
        self.home = home
        self.host = host
        self.clock = clock
        self.release_timeout = release_timeout
        #: Each engine's own API key, from (deployment, revision): derived, so that a daemon
        #: that restarts knows the key of the engine it adopts without storing it.
        self.engine_key = engine_key
        #: Release times (and failures) for the daemon's metrics.
        self.observations = observations if observations is not None else []
        #: Told how a start goes (its phase, last log line, weights loaded), a few times a second.
        self.progress = progress
        #: Bytes per second weights are read at: as lab.disk_read_mbps says, then as the last
        #: start measured (its weights over the time they took to read).
        self.read_rate = read_rate
        #: The rate lab.disk_read_mbps gives, and the rate the last start read at.
        self.configured_rate: float | None = read_rate
        self.last_rate: float | None = None
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def start(
        self,
        spec: DeploymentSpec,
        revision: int,
        on_spawn: Callable[[EngineProcess], None] = lambda process: None,
        recommended: Sequence[str] = (),
        need_bytes: int = 0,
        weight_bytes: int = 0,
    ) -> Engine:
        """Start a revision and wait until it is ready (health, its model listed).

        ``on_spawn`` hears of the process as soon as it exists, before it is ready.

        Raises:
            EngineError: it exited, stalled, timed out, or failed its probes (the log's tail).
        """
        port = spec.port or free_port(self.host)
        settings = spec.to_dict() | {"recommended_args": list(recommended)}
        kind = adapter(spec.engine)
        inside = "0.0.0.0" if spec.runtime else self.host  # in a container: its own interfaces
        launch = kind.launch(settings, inside, port, spec.gpus)
        own = launch.env | dict(spec.env)
        key = self.key_for(spec, revision)
        if key is not None and kind.key_env:
            own[kind.key_env] = key
        argv, box = launch.argv, None
        if spec.runtime:
            box = await self._box(spec, revision, launch.argv, own, port)
            argv, own = box.argv, box.env
        env = dict(os.environ) | own | {"LABCTL_HOME": str(self.home)}
        env |= {ENGINE_MARK: str(self.home), "LABCTL_DEPLOYMENT": spec.name}
        phases: dict[str, float] = {}
        tail: list[str] = []
        mark = [self.clock()]
        told = [0.0]
        loaded: list[float | None] = [None]
        weights_from: list[float | None] = [None]
        last, logged = (kind.phases or (None,))[-1], asyncio.Event()

        def on_line(line: str) -> None:
            tail.append(line)
            del tail[:-20]
            now = self.clock()
            new_phase = (name := kind.phase(line)) is not None and name not in phases
            if new_phase and name is not None:
                phases[name] = now - mark[0]
                mark[0] = now
                if name == last:
                    logged.set()
            if (fraction := kind.progress(line)) is not None:
                loaded[0] = fraction
            if weights_from[0] is None and not phases and WEIGHTS_BEGIN.search(line):
                weights_from[0] = now - process.started_at
            if told[0] >= 0 and (new_phase or now - told[0] >= 0.25):
                told[0] = now
                self.progress(spec.name, {
                    "revision": revision, "phase": next(reversed(phases), None),
                    "line": line[:200], "elapsed": now - process.started_at,
                    "loaded_fraction": loaded[0], "weight_bytes": weight_bytes or None,
                    "loaded_bytes": int(loaded[0] * weight_bytes)
                    if loaded[0] is not None and weight_bytes else None,
                })  # fmt: skip

        log = self.home / "logs" / f"{spec.name}-r{revision}.log"
        process = EngineProcess(argv, log, env=env, on_line=on_line, clock=self.clock)
        await process.start()
        on_spawn(process)
        mark[0] = process.started_at
        url = f"http://{self.host}:{port}"
        engine = Engine(revision, spec, process, url, phases, tuple(recommended), need_bytes, key,
                        weight_bytes)  # fmt: skip
        if box is not None:
            engine.container = box.where
        try:
            await self._wait_ready(engine, launch.health, launch.served_model, tail)
            await self.container_pids(engine)
            await self._confirm_gpus(engine)
            if last is not None:  # it answers as soon as it logs that: let the tail catch up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(logged.wait(), 4 * LOG_POLL_S)
            told[0] = -1.0  # ready: its log lines are no longer startup progress
            engine.weights_from = weights_from[0]
            if weight_bytes and (took := weights_seconds(phases, weights_from[0])):
                self.read_rate = self.last_rate = weight_bytes / took
        except BaseException:
            with contextlib.suppress(EngineError):
                await self._stop_box(engine)
                await process.stop(grace=spec.stop_grace)
            # what comes next (a rollback) needs its memory back first
            await self.await_release(spec.name, spec.gpus, set(process.members), self.clock())
            raise
        return engine

    async def _box(
        self, spec: DeploymentSpec, revision: int, argv: list[str], env: dict[str, str], port: int
    ) -> containers.Boxed:
        """The engine's command run in its image (a container of the same name left by a
        daemon that died goes first)."""
        real = self.planner.backend.name != "sim"  # simulated GPUs: none to give it
        box = containers.wrap(spec, revision, argv, env, lab=self.home, port=port, host=self.host,
                              gpu_uuids=self.planner.uuids(spec.gpus) if real else (),
                              flags=self.containers)  # fmt: skip
        await asyncio.to_thread(box.where.runtime.remove, box.where.name)
        return box

    async def container_pids(self, engine: Engine) -> None:
        """Remember a container engine's processes under their host pids (its runtime's client
        is not their parent): its release is waited for as any engine's tree's."""
        if (where := engine.container) is not None:
            cid, pids = await asyncio.to_thread(where.runtime.host_pids, where.name)
            where.id = cid or where.id
            for pid, start in pids.items():
                engine.process.members.setdefault(pid, start)

    async def _stop_box(self, engine: Engine) -> None:
        """A container engine's container stopped through its runtime (SIGTERM, SIGKILL after
        the stop grace) and removed; nothing for a host process."""
        if (where := engine.container) is not None:
            await self.container_pids(engine)
            await where.runtime.astop(where.name, engine.spec.stop_grace)

    async def _confirm_gpus(self, engine: Engine) -> None:
        """The GPU identity check of a ready engine: no process of its tree holds memory on a
        GPU it was not planned for (an engine that picked its own device would be sized, watched
        and released on the wrong one). Skipped where the GPUs cannot be read now.

        Raises:
            EngineError: a process of it on another GPU, naming both.
        """
        spec = engine.spec
        engine.process.track()  # the workers it forked hold the memory (vLLM's EngineCore)
        try:
            reading = await self.planner.read()
        except LabError:
            return
        if why := misplaced(reading, spec.gpus, set(engine.process.members)):
            raise EngineError(
                f"{spec.name} revision {engine.revision}: {why}; it chose its device itself: "
                "check the deployment's env (CUDA_VISIBLE_DEVICES) and args (a device flag)"
            )

    def _startup_timeout(self, engine: Engine) -> float:
        """The deployment's ``startup_timeout``, else a fixed allowance per startup phase of
        its engine plus twice the time its weights take to read at the rate the last start
        measured (lab.disk_read_mbps, or 250 MB/s, before any)."""
        spec = engine.spec
        if spec.startup_timeout is not None:
            return spec.startup_timeout
        weights = engine.weight_bytes or engine.need_bytes * len(spec.gpus)
        return startup_budget(weights, len(adapter(spec.engine).phases), self.read_rate)

    async def _wait_ready(
        self, engine: Engine, health: Health, served: str | None, tail: list[str]
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
            if await self.probe(engine.url, health) and (
                served is None or served in await self.models(engine)
            ):
                return
            await asyncio.sleep(0.1)

    async def probe(self, url: str, health: Health) -> bool:
        """Whether the engine at ``url`` answers its health check as ready."""
        timeout = aiohttp.ClientTimeout(total=health.timeout)
        try:
            if health.payload is not None:  # a real request: POST it, check its answer
                call = self.http().post(url + health.path, data=health.payload, timeout=timeout,
                                        headers={"Content-Type": "application/json"})  # fmt: skip
            else:
                call = self.http().get(url + health.path, timeout=timeout)
            async with call as r:
                return health.ok(r.status, await r.content.read(65536))
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
        """One real request, as the engine's adapter says (a completion, or a chat turn).

        Raises:
            EngineError: no 200 with a choice.
        """
        spec = engine.spec
        probe = adapter(spec.engine).smoke(spec.to_dict(), spec.served)
        if probe is None:
            return
        path, body = probe
        try:
            async with self.http().post(
                engine.url + path, json=body, headers=engine.headers()
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
            raise EngineError(f"smoke test: HTTP {status} from {engine.url}{path}: {text[:200]}")

    async def stop(
        self, engine: Engine, deploy_id: int | None = None, why: str | None = None
    ) -> tuple[float, int]:
        """Stop a revision and wait until the GPU has its memory back (``why``: said in the
        journal's stop step, where it is not the usual replace).

        Returns (seconds from the engine's exit to the release being seen, bytes freed).

        Raises:
            DeployError: memory still held after the release timeout (who holds it).
        """
        gpus = engine.spec.gpus
        pids = set(engine.process.members)
        before = self.planner.held_by(await self.planner.read(), gpus, pids)
        if deploy_id is not None:
            noted = {"why": why} if why else {}
            with self.journal.step(deploy_id, "stop", **noted, **identity(engine.process)) as step:
                await self._stop_box(engine)
                report = await engine.process.stop(grace=engine.spec.stop_grace)
                step.detail |= {"graceful": report.graceful, "exit_code": report.exit_code,
                                "orphans_killed": list(report.orphans_killed)}  # fmt: skip
        else:
            await self._stop_box(engine)
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
        self, name: str, gpus: Sequence[int], pids: set[int], since: float, floor: int = 0
    ) -> int:
        """Wait until processes ``pids`` hold at most ``floor`` bytes on any of ``gpus`` (0: none,
        a stopped revision; what a sleeping engine keeps, one put to sleep); returns what they
        hold then.

        Raises:
            DeployError: still more held ``release_timeout`` s after ``since``.
        """
        while True:
            held = self.planner.held_by(await self.planner.read(), gpus, pids)
            if held <= floor:
                return held
            if self.clock() - since > self.release_timeout:
                if not floor:
                    self.observations.append(("release_failed", {"bytes": held}))
                    raise DeployError(
                        f"{name}: {held / GiB:.2f} GiB still held by the stopped revision's "
                        f"processes {sorted(pids)} after {self.release_timeout:g} s"
                    )
                raise DeployError(
                    f"{name}: {held / GiB:.2f} GiB still held by the sleeping revision's "
                    f"processes {sorted(pids)} after {self.release_timeout:g} s (a sleeping "
                    f"engine keeps about {floor / GiB:.2f} GiB)"
                )
            await asyncio.sleep(0.05)

    # -- sleep mode ------------------------------------------------------------------------

    async def sleep(self, engine: Engine, level: int) -> None:
        """Put ``engine`` to sleep at ``level`` (``POST /sleep?level=N``) and wait until it says
        it sleeps; its memory is not waited for here (see :meth:`await_release`).

        Raises:
            EngineError: it refused, did not answer, or exited.
        """
        await self._call(engine, "POST", f"/sleep?level={level}", "sleep")
        await self._await_sleeping(engine, True, "sleep")

    async def wake(self, engine: Engine, level: int) -> None:
        """Wake ``engine`` (``POST /wake_up``; at level 2 the weights first, read again with
        ``collective_rpc reload_weights``, then the KV cache) and wait until it says it is awake.

        Raises:
            EngineError: it refused, did not answer within its startup budget, or exited.
        """
        if (code := engine.process.returncode) is not None:
            raise EngineError(f"it exited with code {code} while asleep")
        if level == 2:
            await self._call(engine, "POST", "/wake_up?tags=weights", "wake")
            await self._call(engine, "POST", "/collective_rpc", "wake",
                             {"method": "reload_weights"})  # fmt: skip
            await self._call(engine, "POST", "/wake_up?tags=kv_cache", "wake")
        else:
            await self._call(engine, "POST", "/wake_up", "wake")
        await self._await_sleeping(engine, False, "wake")

    async def is_sleeping(self, engine: Engine) -> bool | None:
        """What ``GET /is_sleeping`` says (None: no answer, or not one it understands)."""
        try:
            async with self.http().get(engine.url + "/is_sleeping", headers=engine.headers(),
                                       timeout=aiohttp.ClientTimeout(total=5)) as r:  # fmt: skip
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        value = doc.get("is_sleeping") if isinstance(doc, dict) else None
        return value if isinstance(value, bool) else None

    async def _call(
        self, engine: Engine, method: str, path: str, what: str, body: Any = None
    ) -> None:
        """One sleep-mode request, given the engine's startup budget (a wake reads weights).

        Raises:
            EngineError: no 200, no answer in time, or the engine exited.
        """
        timeout = aiohttp.ClientTimeout(total=self._startup_timeout(engine))
        try:
            async with self.http().request(method, engine.url + path, json=body,
                                           headers=engine.headers(), timeout=timeout) as r:  # fmt: skip
                status, text = r.status, (await r.content.read(4096)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            code = engine.process.returncode
            why = f"it exited with code {code}" if code is not None else f"no answer ({exc!r})"
            raise EngineError(f"{what}: {method} {path}: {why}") from exc
        if status != 200:
            raise EngineError(f"{what}: {method} {path}: HTTP {status}: {text[:200]}")

    async def _await_sleeping(self, engine: Engine, asleep: bool, what: str) -> None:
        for _ in range(100):  # vLLM answers once done; a few looks allow for one that lags
            if await self.is_sleeping(engine) is asleep:
                return
            if (code := engine.process.returncode) is not None:
                raise EngineError(f"{what}: it exited with code {code}")
            await asyncio.sleep(0.05)
        raise EngineError(f"{what}: /is_sleeping does not say {str(asleep).lower()} after 5 s")


def identity(process: EngineProcess) -> dict[str, Any]:
    """What a step journals about an engine before acting on it: enough to finish the job."""
    return {"pid": process.pid, "start": process.start_time, "pgid": process.pid,
            "processes": {str(p): t for p, t in process.identity().items()}}  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
