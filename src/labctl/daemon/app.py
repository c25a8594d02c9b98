"""``labctl up``: the lab daemon, composed from the services; no logic of its own.

One listener: the gateway (``/v1``), ``/metrics`` (GPU and host telemetry, and the
daemon's own series from ``daemon/metrics.py``), the admin API and probes
(``daemon/api.py``) and the dashboard, all behind the guard (``daemon/guard.py``:
Host, origin, content type, admin token, timeouts). On
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
import json
import os
from pathlib import Path
import signal
import threading
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)

from labctl.config import (
    DeploymentSpec,
    LabConfig,
    check_exposure,
    check_gpu_indices,
    check_lab,
    parse_listen,
)
from labctl.daemon.api import AdminApi
from labctl.daemon.faults import crash_point
from labctl.daemon.guard import Guard, Log, route_logs
from labctl.daemon.metrics import DaemonMetrics
from labctl.dashboard.board import Board, samples
from labctl.dashboard.feed import Feed, compact, run_ticks
from labctl.dashboard.page import page_html
from labctl.deploy.controller import Controller, DeployCancelled
from labctl.deploy.journal import Journal
from labctl.deploy.reconcile import leftovers, reconcile, stop_leftovers
from labctl.deploy.supervisor import Supervisor
from labctl.errors import ConfigError, LabError
from labctl.gateway.proxy import Gateway, Route
from labctl.gpu import open_backend
from labctl.gpu.host import HostSampler
from labctl.gpu.sim import parse_sim_gpus
from labctl.home import URL_FILE, DaemonLock, ensure_token, prepare, write_private
from labctl.secrets import Redactor, derive
from labctl.telemetry.collector import TelemetryCollector
from labctl.telemetry.sampler import Sampler


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
        self.log = Log(self.redact)
        route_logs(self.log)
        self.guard = Guard(self.token, self.host, config.allowed_hosts,
                           (k.key for k in gw.keys), gw.read_timeout, self.log)  # fmt: skip
        self.metrics = DaemonMetrics()
        self.stopping = asyncio.Event()
        #: The admin API's event log, and the open dashboard pages (each gets every tick).
        self.events = Feed(1000, end_when_full=False, stopping=self.stopping)
        self.pages = Feed(100, end_when_full=True, stopping=self.stopping)
        self.url = ""
        sims = parse_sim_gpus(config.sim_gpus) if config.sim_gpus else None
        self.backend = open_backend(config.gpu_backend, self.home, sims)
        check_gpu_indices(config, len(self.backend.read().devices))
        #: Set once the configured deployments have started (fault injection waits for it).
        self.started = threading.Event()
        self.journal = Journal(self.home / "journal.db", on_step=crash_point(self.started))
        self.gateway = Gateway(gw, self._routes, self.metrics.registry,
                               engine_gone=self._engine_gone)  # fmt: skip
        self.controller = Controller(
            self.journal, self.backend, self.home, hooks=self.gateway, on_event=self._event,
            engine_key=self._engine_key,
        )  # fmt: skip
        for spec in config.deployments:
            self._learn(spec)
        self.sampler = Sampler(self.backend, HostSampler(), owners=self._owners, interval=1.0)
        self.telemetry = TelemetryCollector(self.sampler)
        self._tasks: list[asyncio.Task[Any]] = []
        self.supervisor = Supervisor(self.controller, self.gateway, self.stopping,
                                     on_restart=self._restarted)  # fmt: skip
        dash = config.dashboard
        self.board = Board(self._samples, dash.interval, dash.history, dash.alert_for_scale)
        self.api = AdminApi(self.controller, config, self.backend, self.events, self.stopping,
                            self.status_doc, self.login_url, self._learn, self._drain)  # fmt: skip

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
        return derive(self.token, f"labctl engine {name} r{revision}")

    def _owners(self) -> dict[int, str]:
        return dict(self.controller.owned_pids())

    def _learn(self, spec: DeploymentSpec) -> None:
        """Keep ``spec``'s secrets for its revisions, and out of the log."""
        self.controller.revisions.remember(spec)
        self.redact.add(v for v in self.controller.revisions.secrets.values() if isinstance(v, str))

    def _drain(self) -> None:
        self.metrics.drain(self.controller.observations)

    def _samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        self._drain()
        yield from samples(self.telemetry.collect())
        yield from samples(self.metrics.registry.collect())

    def _event(self, event: dict[str, Any]) -> None:
        self.events.publish(event)
        if self.pages:
            self.pages.publish({"type": "event", "event": event, "deployments": self._deployments(),
                                "timeline": self._timeline()})  # fmt: skip
        if event["type"] == "state":
            self.metrics.on_state(event)
            self._write_owners()

    def _write_owners(self) -> None:
        """``owners.json``: which process is whose, for `labctl gpus` and `labctl exporter`."""
        doc = {"pids": {str(pid): name for pid, name in self.controller.owned_pids().items()}}
        write_private(self.home / "owners.json", json.dumps(doc))

    async def _engine_gone(self, name: str) -> bool:
        return await self.supervisor.engine_gone(name)

    def _restarted(self, name: str) -> None:
        self.metrics.restarts.labels(name, "exited").inc()

    # -- dashboard --------------------------------------------------------------------

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
        return web.json_response(self.dashboard_doc(), dumps=compact)

    async def dashboard_events(self, request: web.Request) -> web.StreamResponse:
        return await self.pages.serve(request)

    def status_doc(self) -> dict[str, Any]:
        return {
            "url": self.url, "pid": os.getpid(), "config": self.config.source,
            "gpu_backend": self.backend.name, "deployments": self._deployments(),
            "gpus": [{**g, **self.board.gpu_now(g["index"])} for g in self._gpus()],
            "serving": self.board.serving_now(), "alerts": self.board.alert_docs(),
            "alert_errors": dict(self.board.errors),
        }  # fmt: skip

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
        self.api.add_routes(r)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/", self.dashboard_page)
        r.add_get("/login", self.guard.login)
        r.add_post("/dashboard/login", self.guard.token_login)
        r.add_get("/dashboard/state", self.dashboard_state)
        r.add_get("/dashboard/events", self.dashboard_events)
        return app

    def login_url(self) -> str:
        """A one-time link that logs a browser in to the dashboard (a session cookie)."""
        return f"{self.url}/login?code={self.guard.login_code()}"

    async def metrics_page(self, request: web.Request) -> web.Response:
        self._drain()
        body = self.telemetry.render() + generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

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
            self._tasks.append(asyncio.create_task(self.metrics.scrape_engines(self.controller)))
            self._tasks.append(asyncio.create_task(self.supervisor.watch()))
            self._tasks.append(asyncio.create_task(
                run_ticks(self.board, self.pages, self._deployments, self.log)))  # fmt: skip
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
