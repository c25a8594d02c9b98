"""``labctl up``: the lab daemon, composed from the services; no logic of its own.

One listener: ``/healthz``, ``/readyz``, ``/metrics`` (GPU and host telemetry,
the daemon's own series and the engines' gauges under labctl names) and the
admin API under ``/api`` (status, deployments, deploy, rollback, history,
events as server-sent events, shutdown). On start it reconciles with the
journal: a deploy that a killed daemon left unfinished is closed as
interrupted, a healthy engine it left running is adopted, anything else of
it is stopped. On SIGINT or SIGTERM it stops every engine it runs and waits
for their memory; a second signal kills them at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
import contextlib
import hmac
import json
import os
from pathlib import Path
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from labctl.config import DeploymentSpec, LabConfig, parse_listen
from labctl.dashboard.board import Board, samples
from labctl.dashboard.page import page_html
from labctl.deploy.controller import STATES, Controller, Engine
from labctl.deploy.journal import OUTCOMES, Journal
from labctl.errors import ConfigError, DeployError, LabError
from labctl.gateway.proxy import Gateway, Route
from labctl.gpu import open_backend
from labctl.gpu.host import HostSampler
from labctl.gpu.sim import parse_sim_gpus
from labctl.runtime.process import Backoff, EngineProcess
from labctl.telemetry.collector import TelemetryCollector
from labctl.telemetry.sampler import Sampler

#: Engine metric → labctl name, for the gauges the dashboard and alerts read.
ENGINE_GAUGES = {
    "vllm:num_requests_running": "labctl_engine_requests_running",
    "vllm:num_requests_waiting": "labctl_engine_requests_waiting",
    "vllm:kv_cache_usage_perc": "labctl_engine_kv_cache_usage_ratio",
    "llamacpp:requests_processing": "labctl_engine_requests_running",
    "llamacpp:requests_deferred": "labctl_engine_requests_waiting",
}
DEPLOY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
RELEASE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.state = Gauge("labctl_deployment_state", "1 for the state each deployment is in.",
                           ["deployment", "state"], registry=r)  # fmt: skip
        self.deploy = Histogram("labctl_deploy_duration_seconds", "Time a deploy took, by outcome.",
                                ["outcome"], buckets=DEPLOY_BUCKETS, registry=r)  # fmt: skip
        self.startup = Histogram("labctl_engine_startup_seconds", "Engine startup time, by phase.",
                                 ["phase"], buckets=DEPLOY_BUCKETS, registry=r)  # fmt: skip
        self.release = Histogram("labctl_memory_release_seconds",
                                 "Time from an engine's exit to its GPU memory being free.",
                                 buckets=RELEASE_BUCKETS, registry=r)  # fmt: skip
        self.release_failures = Counter("labctl_memory_release_failures_total",
                                        "Stopped engines whose GPU memory was still held after "
                                        "the release timeout.", registry=r)  # fmt: skip
        self.restarts = Counter("labctl_engine_restarts_total",
                                "Engine restarts outside a deploy, by reason.",
                                ["deployment", "reason"], registry=r)  # fmt: skip
        for outcome in OUTCOMES:
            self.deploy.labels(outcome)  # each outcome from 0, so increase() sees the first
        self.engine = {
            name: Gauge(name, f"Normalised from the engine's own {name.split('_', 2)[-1]}.",
                        ["deployment"], registry=r)
            for name in sorted(set(ENGINE_GAUGES.values()))
        }  # fmt: skip


class Daemon:
    def __init__(self, config: LabConfig, home: Path, listen: str | None = None) -> None:
        self.config = config
        self.home = home
        self.host, self.port = parse_listen(
            listen or config.listen, "--listen" if listen else "lab.listen"
        )
        self.metrics = DaemonMetrics()
        self.events: list[asyncio.Queue[dict[str, Any]]] = []
        self.stopping = asyncio.Event()
        self.forced = False
        self.url = ""
        sims = parse_sim_gpus(config.sim_gpus) if config.sim_gpus else None
        self.backend = open_backend(config.gpu_backend, home, sims)
        self.journal = Journal(home / "journal.db")
        gw = config.gateway
        if not _loopback(self.host) and not (gw.keys and gw.admin_token):
            raise ConfigError(
                f"listening on {self.host} (beyond loopback) needs API keys ([[gateway.keys]]) "
                "and an admin token (gateway.admin_token); add both, or listen on 127.0.0.1"
            )
        self.gateway = Gateway(gw, self._routes, self.metrics.registry)
        self.controller = Controller(
            self.journal, self.backend, home, hooks=self.gateway, on_event=self._event
        )
        self.sampler = Sampler(self.backend, HostSampler(), owners=self._owners, interval=1.0)
        self.telemetry = TelemetryCollector(self.sampler)
        self.backoff: dict[str, Backoff] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        dash = config.dashboard
        self.board = Board(self._samples, dash.interval, dash.history, dash.alert_for_scale)
        #: Open dashboard pages: each gets every tick and a fresh timeline on each event.
        self.watchers: list[asyncio.Queue[dict[str, Any]]] = []
        self.lagging: set[int] = set()

    # -- events and metrics -----------------------------------------------------------

    def _routes(self) -> list[Route]:
        out = []
        for d in self.controller.deployments.values():
            spec = d.spec
            limit = spec.max_concurrency or d.max_num_seqs or _default_limit(spec)
            url = d.engine.url if d.engine is not None and d.state == "ready" else None
            out.append(Route(d.name, spec.served, spec.aliases, url, limit, spec.queue_size))
        return out

    def _owners(self) -> dict[int, str]:
        return dict(self.controller.owned_pids())

    def _samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        self._drain_observations()
        yield from samples(self.telemetry.collect())
        yield from samples(self.metrics.registry.collect())

    def _event(self, event: dict[str, Any]) -> None:
        for q in list(self.events):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)
        if self.watchers:
            self._watch({"type": "event", "event": event, "deployments": self._deployments(),
                         "timeline": self._timeline()})  # fmt: skip
        if event["type"] == "state":
            self.metrics.restarts.labels(event["deployment"], "exited")  # a 0 from the start
            self._write_owners()
            for state in STATES:
                self.metrics.state.labels(event["deployment"], state).set(
                    1 if state == event["state"] else 0
                )

    def _write_owners(self) -> None:
        """``owners.json``: which process is whose, for `labctl gpus` and `labctl exporter`."""
        doc = {"pids": {str(pid): name for pid, name in self.controller.owned_pids().items()}}
        tmp = self.home / "owners.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.home / "owners.json")

    def _drain_observations(self) -> None:
        for kind, data in self.controller.observations:
            if kind == "deploy":
                self.metrics.deploy.labels(data["outcome"]).observe(data["seconds"])
            elif kind == "release":
                self.metrics.release.observe(data["seconds"])
            elif kind == "release_failed":
                self.metrics.release_failures.inc()
            elif kind == "startup":
                for phase, seconds in data.items():
                    self.metrics.startup.labels(phase).observe(seconds)
        self.controller.observations.clear()

    async def _poll_engines(self) -> None:
        """Every 2 s: each ready engine's gauges under labctl names; restarts of dead engines."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self._drain_observations()
                for d in list(self.controller.deployments.values()):
                    e = d.engine
                    if e is None:
                        continue
                    if d.state == "ready" and e.process.returncode is not None:
                        self._tasks.append(asyncio.create_task(self._restart(d.name, e)))
                        continue
                    e.process.track()  # remember workers while they are still its children
                    try:
                        async with http.get(e.url + "/metrics") as r:
                            text = await r.text() if r.status == 200 else ""
                    except (aiohttp.ClientError, TimeoutError):
                        continue
                    try:
                        families = list(text_string_to_metric_families(text))
                    except ValueError:
                        continue  # not Prometheus text (a command engine's own page)
                    for family in families:
                        target = ENGINE_GAUGES.get(family.name)
                        if target and family.samples:
                            value = sum(s.value for s in family.samples)
                            self.metrics.engine[target].labels(d.name).set(value)
                await asyncio.sleep(2.0)

    async def _restart(self, name: str, dead: Engine) -> None:
        d = self.controller.deployments[name]
        if d.engine is not dead or d.state != "ready":
            return
        code = dead.process.returncode
        self.metrics.restarts.labels(name, "exited").inc()
        d.restarts += 1
        delay = self.backoff.setdefault(name, Backoff()).next_delay(
            time.monotonic() - dead.process.started_at
        )
        self.controller.set_state(
            d, "failed", f"engine exited with code {code}; restart in {delay:g} s"
        )
        await asyncio.sleep(delay)
        if d.engine is not dead or self.stopping.is_set():
            return
        with contextlib.suppress(LabError):
            await self.controller.deploy(d.spec, kind="restart", revision=d.revision)

    # -- dashboard --------------------------------------------------------------------

    def _watch(self, doc: dict[str, Any]) -> None:
        for q in list(self.watchers):
            try:
                q.put_nowait(doc)
            except asyncio.QueueFull:
                self.lagging.add(id(q))  # its stream ends; the page reconnects and reloads

    def _deployments(self) -> list[dict[str, Any]]:
        return [d.status() for d in self.controller.deployments.values()]

    def _timeline(self) -> list[dict[str, Any]]:
        return self.journal.history(limit=20)

    def _gpus(self) -> list[dict[str, Any]]:
        snap = self.sampler.latest
        if snap is None or snap.reading is None:
            return []
        return [{"index": d.index, "name": d.name, "memory_total_bytes": d.memory_total_bytes,
                 "power_limit_watts": d.power_limit_watts} for d in snap.reading.devices]  # fmt: skip

    async def _board_loop(self) -> None:
        """Every interval: the board's tick (panels, alerts), sent to every open page."""
        interval = self.board.interval
        failed = False
        reported: dict[str, str] = {}
        while True:
            try:
                tick = self.board.tick(time.time())
            except Exception as exc:  # a bad tick must not end the page's updates
                if not failed:
                    _log(f"dashboard: a tick failed ({type(exc).__name__}: {exc}); retrying")
                failed = True
            else:
                failed = False
                for what, error in self.board.errors.items():
                    if reported.get(what) != error:
                        _log(f"dashboard: {what} failed: {error}")
                reported = dict(self.board.errors)
                if self.watchers:
                    self._watch({"type": "tick", **tick, "deployments": self._deployments()})
            await asyncio.sleep(interval - time.time() % interval)

    def dashboard_doc(self) -> dict[str, Any]:
        return {
            **self.board.snapshot(), "url": self.url, "gpu_backend": self.backend.name,
            "gpus": self._gpus(), "deployments": self._deployments(),
            "timeline": self._timeline(), "auth": self.config.gateway.admin_token is not None,
        }  # fmt: skip

    async def dashboard_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=page_html(), content_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    async def dashboard_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.dashboard_doc(), dumps=_compact)

    async def dashboard_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, self.watchers, 100)

    async def _stream(
        self,
        request: web.Request,
        subscribers: list[asyncio.Queue[dict[str, Any]]],
        size: int,
        first: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        """Server-sent events: ``first``, then each document put on this stream's queue, with
        a keep-alive comment every 15 s; a stream whose queue overflowed ends."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        subscribers.append(q)
        try:
            if first is not None:
                await resp.write(f"data: {_compact(first)}\n\n".encode())
            while not self.stopping.is_set() and id(q) not in self.lagging:
                try:
                    doc = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                await resp.write(f"data: {_compact(doc)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            subscribers.remove(q)
            self.lagging.discard(id(q))
        return resp

    # -- reconcile --------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Make the journal and the running processes agree; returns what was done."""
        done = []
        current_pids = {c.engine_pid for c in self.journal.current()}
        for pending in self.journal.unfinished():
            name = pending["deployment"]
            for step in pending["steps"]:
                pid, start = step["detail"].get("pid"), step["detail"].get("start")
                if pid is None or start is None or pid in current_pids:
                    continue
                log = self.home / "logs" / f"{name}-leftover-{pid}.log"
                try:
                    leftover = EngineProcess.adopt(pid, start, log)
                except LabError:
                    continue  # already gone
                leftover.track()
                with contextlib.suppress(LabError):
                    await leftover.stop(grace=5)
                done.append(
                    f"stopped engine pid {pid} that the interrupted deploy of {name} started"
                )
            self.journal.finish(
                pending["id"], "interrupted", "the daemon stopped during the deploy"
            )
            done.append(f"closed deploy {pending['id']} of {name} as interrupted")
        if done:
            rec = self.journal.begin("*", "reconcile", None, 0)
            with self.journal.step(rec, "cleanup", actions=list(done)):
                pass
            self.journal.finish(rec, "committed")
        wanted = {d.name: d for d in self.config.deployments}
        for cur in self.journal.current():
            log = self.home / "logs" / f"{cur.deployment}-r{cur.revision}.log"
            engine = None
            if cur.engine_pid and cur.engine_start is not None:
                with contextlib.suppress(LabError):
                    engine = EngineProcess.adopt(cur.engine_pid, cur.engine_start, log)
            spec = None
            with contextlib.suppress(LabError, KeyError):
                spec = DeploymentSpec.from_dict(
                    cur.deployment, self.journal.revision(cur.deployment, cur.revision)
                )
            healthy = (
                engine is not None and spec is not None and cur.url is not None
                and cur.deployment in wanted and await self.controller.probe(cur.url + spec.health_path)
            )  # fmt: skip
            if healthy:
                assert engine is not None and spec is not None and cur.url is not None
                engine.track()
                d = self.controller.add(spec)
                d.engine = Engine(cur.revision, spec, engine, cur.url)
                d.revision = cur.revision
                self.controller.set_state(d, "ready")
                rec = self.journal.begin(cur.deployment, "reconcile", cur.revision, cur.revision)
                with self.journal.step(rec, "adopt", pid=cur.engine_pid, url=cur.url):
                    pass
                self.journal.finish(rec, "committed")
                done.append(
                    f"adopted {cur.deployment} revision {cur.revision} (pid {cur.engine_pid})"
                )
                continue
            if engine is not None:
                engine.track()
                with contextlib.suppress(LabError):
                    await engine.stop(grace=5)
                done.append(
                    f"stopped the leftover engine of {cur.deployment} (pid {cur.engine_pid})"
                )
            self.journal.clear_current(cur.deployment)
        return done

    # -- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.gateway.max_body_bytes, middlewares=[self._admin_guard]
        )
        r = app.router
        self.gateway.add_routes(r)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/api/status", self.status)
        r.add_get("/api/deployments", self.status)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/deployments/{name}/deploy", self.deploy)
        r.add_post("/api/deployments/{name}/rollback", self.rollback)
        r.add_get("/api/history", self.history)
        r.add_get("/api/events", self.stream_events)
        r.add_post("/api/shutdown", self.shutdown)
        r.add_get("/sd/engines", self.engine_targets)
        r.add_get("/", self.dashboard_page)
        r.add_get("/dashboard/state", self.dashboard_state)
        r.add_get("/dashboard/events", self.dashboard_events)
        return app

    @web.middleware
    async def _admin_guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """``/api`` and the dashboard's data take the admin token when one is set (the page's
        data also as the ``labctl_token`` cookie, which EventSource sends); gateway keys are
        not admin tokens."""
        token = self.config.gateway.admin_token
        path = request.path
        if token is not None and path.startswith(("/api/", "/dashboard/")):
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not given and path.startswith("/dashboard/"):
                given = request.cookies.get("labctl_token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                status = 403 if given in {k.key for k in self.config.gateway.keys} else 401
                why = (
                    "an API key is not an admin token"
                    if status == 403
                    else "the admin token is missing or wrong"
                )
                return web.json_response({"error": {"message": f"{why} (LABCTL_TOKEN)", "code": status}},
                                         status=status)  # fmt: skip
        result: web.StreamResponse = await handler(request)
        return result

    async def engine_targets(self, request: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every serving engine's /metrics."""
        targets = []
        for d in self.controller.deployments.values():
            if d.engine is not None:
                host = d.engine.url.removeprefix("http://")
                labels = {
                    "deployment": d.name,
                    "engine": d.spec.engine,
                    "revision": str(d.revision),
                }
                targets.append({"targets": [host], "labels": labels})
        return web.json_response(targets)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        states = {d.name: d.state for d in self.controller.deployments.values()}
        ready = bool(states) and all(s == "ready" for s in states.values())
        return web.json_response(
            {"ready": ready, "deployments": states}, status=200 if ready else 503
        )

    async def metrics_page(self, request: web.Request) -> web.Response:
        self._drain_observations()
        body = self.telemetry.render() + generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def status_doc(self) -> dict[str, Any]:
        return {
            "url": self.url, "pid": os.getpid(), "config": self.config.source,
            "gpu_backend": self.backend.name, "deployments": self._deployments(),
            "gpus": [{**g, **self.board.gpu_now(g["index"])} for g in self._gpus()],
            "serving": self.board.serving_now(), "alerts": self.board.alert_docs(),
            "alert_errors": dict(self.board.errors),
        }  # fmt: skip

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_doc())

    async def ps(self, request: web.Request) -> web.Response:
        reading = await asyncio.to_thread(self.backend.read)
        memory: dict[int, int] = {}
        for dev in reading.devices:
            for p in dev.processes:
                memory[p.pid] = memory.get(p.pid, 0) + (p.used_bytes or 0)
        rows = []
        for d in self.controller.deployments.values():
            if d.engine is None:
                continue
            for st in [None, *d.engine.process.track()]:
                pid = d.engine.process.pid if st is None else st.pid
                rows.append({"deployment": d.name, "revision": d.revision, "pid": pid,
                             "role": "engine" if st is None else "worker",
                             "gpu_memory_bytes": memory.get(pid or -1, 0)})  # fmt: skip
        return web.json_response({"processes": rows})

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _api_error(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _api_error(400, "the request body must be a JSON object")
        return body

    async def deploy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await self._json_body(request)
        d = self.controller.deployments.get(name)
        if d is None:
            names = ", ".join(self.controller.deployments) or "none"
            raise _api_error(404, f"no deployment named {name!r}; the lab has: {names}")
        doc = d.spec.to_dict()
        if body.get("model"):
            doc["model"] = body["model"]
        for key, value in (body.get("set") or {}).items():
            _apply(doc, key, value)
        doc.pop("name", None)
        try:
            spec = DeploymentSpec.from_dict(name, doc, where=f"deploy {name}")
        except ConfigError as exc:
            raise _api_error(400, str(exc)) from None
        try:
            record = await self.controller.deploy(spec, dry_run=bool(body.get("dry_run")))
        except DeployError as exc:
            raise _api_error(409, str(exc)) from None
        self._drain_observations()
        return web.json_response(record)

    async def rollback(self, request: web.Request) -> web.Response:
        try:
            record = await self.controller.rollback(request.match_info["name"])
        except DeployError as exc:
            raise _api_error(409, str(exc)) from None
        self._drain_observations()
        return web.json_response(record)

    async def history(self, request: web.Request) -> web.Response:
        name = request.query.get("deployment") or None
        return web.json_response({"deploys": self.journal.history(name, limit=100)})

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(
            request, self.events, 1000, first={"type": "hello", **self.status_doc()}
        )

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True})

    # -- life -------------------------------------------------------------------------

    async def run(self, on_listening: Callable[[str], None] = lambda url: None) -> None:
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self.stopping.is_set():
                self.forced = True
                self._kill_all()
                os._exit(130)
            self.stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; is another "
                "labctl up running? Pick another address with --listen"
            ) from exc
        bound = runner.addresses[0][1] if runner.addresses else self.port
        self.url = f"http://{self.host}:{bound}"
        self.sampler.start()
        try:
            for line in await self.reconcile():
                _log(line)
            on_listening(self.url)
            self._tasks.append(asyncio.create_task(self._poll_engines()))
            self._tasks.append(asyncio.create_task(self._board_loop()))
            starting = asyncio.create_task(self._start_configured())
            await self.stopping.wait()
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, LabError):
                await starting
        finally:
            _log("stopping: engines first, then the listener")
            for task in self._tasks:
                task.cancel()
            await self.controller.stop_all()
            await self.controller.close()
            await self.gateway.close()
            await runner.cleanup()
            self.sampler.stop()
            self.journal.close()

    async def _start_configured(self) -> None:
        for spec in self.config.deployments:
            d = self.controller.deployments.get(spec.name)
            if d is not None and d.engine is not None:
                continue  # adopted
            try:
                await self.controller.deploy(spec, kind="start")
            except LabError as exc:
                _log(f"{spec.name}: {exc}")

    def _kill_all(self) -> None:
        for d in self.controller.deployments.values():
            if d.engine is not None and d.engine.process.pid is not None:
                for pid in d.engine.process.members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(d.engine.process.pid, signal.SIGKILL)


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _default_limit(spec: DeploymentSpec) -> int:
    """Concurrency where no plan says: llama-server's slots, else 64."""
    if spec.engine == "llamacpp":
        slots = spec.args.get("parallel") or spec.args.get("np")
        return int(slots) if isinstance(slots, int) and slots > 0 else 4
    return 64


def _compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _api_error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=json.dumps({"error": {"message": message, "code": status}}),
               content_type="application/json")  # fmt: skip


def _apply(doc: dict[str, Any], key: str, value: Any) -> None:
    """``--set`` semantics: a top-level setting, ``args.X``, ``env.X``, or else an engine flag."""
    head, _, rest = key.partition(".")
    if rest and head in ("args", "env"):
        doc.setdefault(head, {})[rest] = value
    elif key in doc and key not in ("args", "env"):
        doc[key] = value
    else:
        doc.setdefault("args", {})[key.replace("-", "_")] = value


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} labctl: {message}", flush=True)
