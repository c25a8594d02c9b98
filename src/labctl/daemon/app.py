"""``labctl up``: the lab daemon, composed from the services; no logic of its own.

One listener: ``/healthz``, ``/readyz``, ``/metrics`` (GPU and host telemetry,
the daemon's own series and the engines' gauges under labctl names) and the
admin API under ``/api`` (status, deployments, deploy, rollback, history,
events as server-sent events, cancel, shutdown), all behind the guard
(``daemon/guard.py``: Host, origin, content type, admin token, timeouts). On
start it reconciles with the journal: a deploy that a killed daemon left
unfinished is closed, a healthy engine it left running is adopted, and every
other process of the lab's (journaled, or marked as the lab's engine) is
stopped. On SIGINT or SIGTERM it lets deploys stop where they safely can, stops
every engine it runs and waits for their memory; a second signal kills them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
from pathlib import Path
import signal
import threading
import time
from typing import Any, TypeVar

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

from labctl import jsontext
from labctl.config import (
    DeploymentSpec,
    LabConfig,
    check_exposure,
    check_gpu_indices,
    check_lab,
    parse_listen,
)
from labctl.daemon.guard import Guard, Log, route_logs
from labctl.dashboard.board import Board, samples
from labctl.dashboard.page import page_html
from labctl.deploy.controller import STATES, Controller, DeployCancelled
from labctl.deploy.journal import OUTCOMES, Journal
from labctl.deploy.reconcile import leftovers, reconcile, stop_leftovers
from labctl.deploy.requests import RequestRefused, check_restore, requested_spec
from labctl.deploy.supervisor import Supervisor
from labctl.errors import ConfigError, DeployError, LabError
from labctl.gateway.proxy import Gateway, Route
from labctl.gpu import open_backend
from labctl.gpu.host import HostSampler
from labctl.gpu.sim import parse_sim_gpus
from labctl.home import URL_FILE, DaemonLock, ensure_token, prepare, write_private
from labctl.secrets import Redactor, looks_secret
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
T = TypeVar("T")
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
        self.home = prepare(home)
        # first: a second `labctl up` on this home must change nothing in it before it stops
        self.lock = DaemonLock(self.home)
        try:
            self._setup(config, listen)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, config: LabConfig, listen: str | None) -> None:
        key = "--listen" if listen else "lab.listen"
        self.host, self.port = parse_listen(listen or config.listen, key)
        gw = config.gateway
        check_exposure(self.host, gw, key)
        if listen:  # the lab's port moved: deployments must not sit on it
            check_lab(dataclasses.replace(config, listen=listen))
        #: The admin token: lab.toml's, else the one generated at first start (0600).
        self.token = gw.admin_token or ensure_token(self.home)
        self.redact = Redactor([self.token, *(k.key for k in gw.keys)])
        for spec in config.deployments:
            self.redact.add(v for k, v in [*spec.env.items(), *spec.args.items()]
                            if isinstance(v, str) and looks_secret(k, v))  # fmt: skip
        self.log = Log(self.redact)
        route_logs(self.log)
        self.guard = Guard(self.token, self.host, config.allowed_hosts,
                           (k.key for k in gw.keys), gw.read_timeout, self.log)  # fmt: skip
        self.metrics = DaemonMetrics()
        self.events: list[asyncio.Queue[dict[str, Any]]] = []
        self.stopping = asyncio.Event()
        self.forced = False
        self.url = ""
        sims = parse_sim_gpus(config.sim_gpus) if config.sim_gpus else None
        self.backend = open_backend(config.gpu_backend, self.home, sims)
        check_gpu_indices(config, len(self.backend.read().devices))
        #: Set once the configured deployments have started (fault injection waits for it).
        self.started = threading.Event()
        self.journal = Journal(self.home / "journal.db", on_step=_crash_point(self.started))
        self.gateway = Gateway(gw, self._routes, self.metrics.registry,
                               engine_gone=self._engine_gone)  # fmt: skip
        self.controller = Controller(
            self.journal, self.backend, self.home, hooks=self.gateway, on_event=self._event,
            engine_key=self._engine_key,
        )  # fmt: skip
        for spec in config.deployments:
            self.controller.revisions.remember(spec)
        self.sampler = Sampler(self.backend, HostSampler(), owners=self._owners, interval=1.0)
        self.telemetry = TelemetryCollector(self.sampler)
        self._tasks: list[asyncio.Task[Any]] = []
        self.supervisor = Supervisor(self.controller, self.gateway, self.stopping,
                                     on_restart=self._restarted)  # fmt: skip
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
            e = d.engine if d.state == "ready" else None
            out.append(Route(d.name, spec.served, spec.aliases, e.url if e else None, limit,
                             spec.queue_size, e.key if e else None))  # fmt: skip
        return out

    def _engine_key(self, name: str, revision: int) -> str:
        """An engine's API key: derived from the admin token, so never stored anywhere."""
        msg = f"labctl engine {name} r{revision}".encode()
        return hmac.new(self.token.encode(), msg, hashlib.sha256).hexdigest()

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
        write_private(self.home / "owners.json", json.dumps(doc))

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
        """Every 2 s: each ready engine's gauges under labctl names."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self._drain_observations()
                for d in list(self.controller.deployments.values()):
                    e = d.engine
                    if e is None or e.process.returncode is not None:
                        continue
                    e.process.track()  # remember workers while they are still its children
                    try:
                        async with http.get(e.url + "/metrics", headers=e.headers()) as r:
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

    async def _engine_gone(self, name: str) -> bool:
        return await self.supervisor.engine_gone(name)

    def _restarted(self, name: str) -> None:
        self.metrics.restarts.labels(name, "exited").inc()

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
                    self.log(f"dashboard: a tick failed ({type(exc).__name__}: {exc}); retrying")
                failed = True
            else:
                failed = False
                for what, error in self.board.errors.items():
                    if reported.get(what) != error:
                        self.log(f"dashboard: {what} failed: {error}")
                reported = dict(self.board.errors)
                if self.watchers:
                    self._watch({"type": "tick", **tick, "deployments": self._deployments()})
            await asyncio.sleep(interval - time.time() % interval)

    def dashboard_doc(self) -> dict[str, Any]:
        return {
            **self.board.snapshot(), "url": self.url, "gpu_backend": self.backend.name,
            "gpus": self._gpus(), "deployments": self._deployments(),
            "timeline": self._timeline(), "auth": True,
        }  # fmt: skip

    async def dashboard_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=page_html(), content_type="text/html", headers={
                "Cache-Control": "no-cache", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            },
        )  # fmt: skip

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
        return await reconcile(
            self.controller, self.home, {d.name for d in self.config.deployments}
        )

    # -- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.gateway.max_body_bytes, middlewares=[self.guard.middleware]
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
        r.add_post("/api/deployments/{name}/cancel", self.cancel)
        r.add_get("/api/history", self.history)
        r.add_get("/api/events", self.stream_events)
        r.add_post("/api/login-link", self.login_link)
        r.add_post("/api/shutdown", self.shutdown)
        r.add_get("/sd/engines", self.engine_targets)
        r.add_get("/engines/{name}/metrics", self.engine_metrics)
        r.add_get("/", self.dashboard_page)
        r.add_get("/login", self.guard.login)
        r.add_post("/dashboard/login", self.guard.token_login)
        r.add_get("/dashboard/state", self.dashboard_state)
        r.add_get("/dashboard/events", self.dashboard_events)
        return app

    def login_url(self) -> str:
        """A one-time link that logs a browser in to the dashboard (a session cookie)."""
        return f"{self.url}/login?code={self.guard.login_code()}"

    async def login_link(self, request: web.Request) -> web.Response:
        return web.json_response({"url": self.login_url()})

    async def engine_targets(self, request: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every serving engine's /metrics, through the
        lab (``/engines/NAME/metrics``), which holds the engine's key; its port stays closed."""
        targets = []
        for d in self.controller.deployments.values():
            if d.engine is not None:
                labels = {"deployment": d.name, "engine": d.spec.engine,
                          "revision": str(d.revision),
                          "__metrics_path__": f"/engines/{d.name}/metrics"}  # fmt: skip
                targets.append({"targets": [request.host], "labels": labels})
        return web.json_response(targets)

    async def engine_metrics(self, request: web.Request) -> web.Response:
        """An engine's own /metrics (vLLM's ``vllm:*``, llama.cpp's ``llamacpp:*``), relayed."""
        d = self.controller.deployments.get(request.match_info["name"])
        e = d.engine if d is not None else None
        if e is None:
            raise _api_error(404, f"no engine serves {request.match_info['name']!r} now")
        try:
            async with self.controller.http().get(
                e.url + "/metrics", headers=e.headers(), timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                body = await r.read()
                kind = r.headers.get("Content-Type", CONTENT_TYPE_LATEST)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"the engine did not answer: {exc}\n")
        return web.Response(body=body, status=r.status, headers={"Content-Type": kind})

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
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = jsontext.loads(raw, max_items=100_000)  # an admin request holds a few
        except ValueError as exc:
            raise _api_error(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _api_error(400, "the request body must be a JSON object")
        return body

    async def _deploy_spec(self, name: str, body: dict[str, Any]) -> DeploymentSpec:
        d = self.controller.deployments.get(name)
        if d is None:
            names = ", ".join(self.controller.deployments) or "none"
            raise _api_error(404, f"no deployment named {name!r}; the lab has: {names}")
        others = [x.spec for x in self.controller.deployments.values() if x.name != name]
        try:  # it reads files (the model, the binary): off the event loop
            return await _off_loop(requested_spec, d.spec, body, self.config, others)
        except RequestRefused as exc:
            raise _api_error(exc.status, str(exc)) from None

    async def deploy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await self._json_body(request)
        spec = await self._deploy_spec(name, body)
        self.redact.add(v for k, v in [*spec.env.items(), *spec.args.items()]
                        if isinstance(v, str) and looks_secret(k, v))  # fmt: skip
        try:
            record = await self.controller.deploy(spec, dry_run=bool(body.get("dry_run")))
        except DeployError as exc:
            raise _api_error(409, str(exc)) from None
        self._drain_observations()
        return web.json_response(record)

    async def rollback(self, request: web.Request) -> web.Response:
        await self._json_body(request)
        name = request.match_info["name"]
        others = [x.spec for x in self.controller.deployments.values() if x.name != name]

        async def allowed(current: DeploymentSpec, earlier: DeploymentSpec) -> None:
            await _off_loop(check_restore, current, earlier, self.config, others)

        try:
            record = await self.controller.rollback(name, allowed)
        except RequestRefused as exc:
            raise _api_error(exc.status, str(exc)) from None
        except DeployError as exc:
            raise _api_error(409, str(exc)) from None
        self._drain_observations()
        return web.json_response(record)

    async def cancel(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            self.controller.cancel(name)
        except DeployError as exc:
            raise _api_error(409, str(exc)) from None
        return web.json_response({"deployment": name, "cancelling": True})

    async def history(self, request: web.Request) -> web.Response:
        name = request.query.get("deployment") or None
        return web.json_response({"deploys": self.journal.history(name, limit=100)})

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(
            request, self.events, 1000, first={"type": "hello", **self.status_doc()}
        )

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True, "pid": os.getpid()})

    # -- life -------------------------------------------------------------------------

    async def run(self, on_listening: Callable[[str], None] = lambda url: None) -> None:
        try:
            await self._run(on_listening)
        finally:
            self.lock.release()

    async def _run(self, on_listening: Callable[[str], None]) -> None:
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
            self.app(), access_log=None, handle_signals=False, handler_cancellation=True,
            keepalive_timeout=self.config.gateway.idle_timeout,
            lingering_time=1.0,  # after a 408 or 413, read what still comes for 1 s, not 10
        )  # fmt: skip
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{bound}"
        write_private(self.home / URL_FILE, self.url + "\n")  # the CLI's token goes here only
        self.sampler.start()
        try:
            for line in await self.reconcile():
                self.log(line)
            on_listening(self.url)
            self._tasks.append(asyncio.create_task(self._poll_engines()))
            self._tasks.append(asyncio.create_task(self.supervisor.watch()))
            self._tasks.append(asyncio.create_task(self._board_loop()))
            starting = asyncio.create_task(self._start_configured())
            await self.stopping.wait()
            self.log("stopping: deploys in progress first, then engines, then the listener")
            await self.controller.close_deploys()
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, LabError):
                await starting
        finally:
            for task in self._tasks:
                task.cancel()
            await self.controller.stop_all()
            # whatever of the lab's still runs (a start cut short, a worker left behind): stopped
            for line in await stop_leftovers(leftovers(self.journal, self.home, set()), self.home):
                self.log(f"{line}, left running at shutdown")
            await self.controller.close()
            await self.gateway.close()
            await runner.cleanup()
            self.sampler.stop()
            self.journal.close()

    async def _start_configured(self) -> None:
        for spec in self.config.deployments:
            d = self.controller.deployments.get(spec.name)
            if d is not None and d.engine is not None and d.spec == spec:
                continue  # adopted, and lab.toml still says what it runs
            try:
                await self.controller.deploy(spec, kind="start")
            except DeployCancelled:
                return  # the lab is shutting down
            except LabError as exc:
                self.log(f"{spec.name}: {exc}")
        self.started.set()

    def _kill_all(self) -> None:
        for d in self.controller.deployments.values():
            if d.engine is not None and d.engine.process.pid is not None:
                for pid in d.engine.process.members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(d.engine.process.pid, signal.SIGKILL)


def _default_limit(spec: DeploymentSpec) -> int:
    """Concurrency where no plan says: llama-server's slots, else 64."""
    if spec.engine == "llamacpp":
        slots = spec.args.get("parallel") or spec.args.get("np")
        return int(slots) if isinstance(slots, int) and slots > 0 else 4
    return 64


def _compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _api_error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
           409: web.HTTPConflict}[status]  # fmt: skip
    return cls(text=json.dumps({"error": {"message": message, "code": status}}),
               content_type="application/json")  # fmt: skip


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a worker thread, given 10 s (a model on a hung mount, say)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(func, *args), 10)
    except TimeoutError:
        raise RequestRefused(400, "checking the deployment's files took more than 10 s; is "
                             "its model or binary on a mount that does not answer?") from None  # fmt: skip


def _crash_point(armed: threading.Event) -> Callable[[str], None]:
    """Fault injection for the crash-consistency tests: ``LABCTL_FAULT_KILL_AT=STEP[@SECONDS]``
    kills this daemon with SIGKILL when a deploy step named STEP has begun (SECONDS later),
    once ``armed`` (after the configured deployments started)."""
    spec = os.environ.get("LABCTL_FAULT_KILL_AT", "")
    step, _, delay = spec.partition("@")

    def hook(name: str) -> None:
        if name == step and armed.is_set():
            seconds = float(delay or 0)
            if seconds <= 0:
                os.kill(os.getpid(), signal.SIGKILL)
            timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()

    return hook if step else (lambda name: None)
