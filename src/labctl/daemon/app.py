"""``labctl up``: the lab daemon, wired from the services; no logic of its own.

One listener (``daemon/listener.py``): the gateway (``/v1`` and every API family the
engines serve), ``/metrics`` (GPU and host telemetry, and the daemon's own series from
``daemon/metrics.py``), the admin API and probes (``daemon/api.py``), the dashboard
(``dashboard/site.py``) and the report's records (``daemon/record.py``: alerts, serving
figures, bench results), all behind the guard (``daemon/guard.py``). The deploy controller
publishes each deployment's route to the gateway; the sampler is the GPU backend's one
reader, for the controller and the page alike. On start the journal and the running
processes are reconciled (``deploy/reconcile.py``) and the doctor checks the machine
(``daemon/doctor.py``): its failures are a metric, a panel, an alert, and the reason a
deploy is refused. Under systemd (``daemon/notify.py``) it reports READY=1 once the
configured deployments have started (or failed to) and STOPPING=1 as the stop begins. On
SIGINT or SIGTERM: deploys stop where they safely can, requests in flight get the drain
time, then every engine stops at once, all within one bound; a second signal kills them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import dataclasses
import os
from pathlib import Path
import signal
import threading
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labctl.config import LabConfig, check_exposure, check_lab, parse_listen
from labctl.daemon.api import AdminApi
from labctl.daemon.doctor import LabDoctor
from labctl.daemon.faults import crash_point
from labctl.daemon.guard import Guard, Log, route_logs
from labctl.daemon.listener import listen
from labctl.daemon.metrics import DaemonMetrics
from labctl.daemon.notify import Notifier
from labctl.daemon.record import Records
from labctl.dashboard.board import Board, samples
from labctl.dashboard.feed import Feed, run_ticks
from labctl.dashboard.site import Site
from labctl.deploy.controller import Controller
from labctl.deploy.journal import Journal
from labctl.deploy.lifecycle import kill_all, shut_down, start_configured
from labctl.deploy.reconcile import leftovers, reconcile, stop_leftovers
from labctl.deploy.supervisor import Supervisor
from labctl.gateway.proxy import Gateway
from labctl.gpu import open_backend
from labctl.gpu.host import HostSampler
from labctl.gpu.identity import resolve_lab
from labctl.gpu.sim import parse_sim_gpus
from labctl.home import URL_FILE, DaemonLock, ensure_token, prepare, write_private
from labctl.secrets import Redactor, derive
from labctl.telemetry.collector import TelemetryCollector
from labctl.telemetry.sampler import Sampler


class Daemon:
    def __init__(self, config: LabConfig, home: Path, listen: str | None = None) -> None:
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
        self.systemd = Notifier(self.log)  # READY=1 and STOPPING=1 under systemd
        self.guard = Guard(self.token, self.host, config.allowed_hosts,
                           (k.key for k in gw.keys), gw.read_timeout, self.log)  # fmt: skip
        self.metrics = DaemonMetrics()
        sims = parse_sim_gpus(config.sim_gpus) if config.sim_gpus else None
        self.backend = open_backend(config.gpu_backend, self.home, sims)
        self.config = config = resolve_lab(config, self.backend.read().devices)  # UUID → index
        lab = dataclasses.replace(config, listen=listen or config.listen)  # as it listens
        self.doctor = LabDoctor(lab, [self.metrics.on_doctor, lambda _: self.site.on_doctor()])
        self.stopping = asyncio.Event()
        self.events = Feed(1000, end_when_full=False, stopping=self.stopping)
        self.url = ""
        #: Set once the configured deployments have started (fault injection waits for it).
        self.started = threading.Event()
        self.journal = Journal(self.home / "journal.db", on_step=crash_point(self.started))
        self.gateway = Gateway(gw, self.metrics.registry, engine_gone=self._engine_gone)
        self.controller = Controller(
            self.journal, self.backend, self.home, hooks=self.gateway, on_event=self._event,
            engine_key=lambda name, rev: derive(self.token, f"labctl engine {name} r{rev}"),
            read_gpus=lambda: self.sampler.fresh(0.0),  # a reading taken after the call
            read_rate=(config.disk_read_mbps or 0) * 1e6 or None, models=config.models,
            doctor=self.doctor.refusal, containers=config.containers,
        )  # fmt: skip
        for spec in config.deployments:
            self.controller.add(spec)
            self._learn(spec)
        self.sampler = Sampler(self.backend, HostSampler(), owners=self.controller.owned_pids)
        self.telemetry = TelemetryCollector(self.sampler)
        self.supervisor = Supervisor(self.controller, self.stopping,
                                     on_restart=self.metrics.restarts_of)  # fmt: skip
        dash = config.dashboard
        self.board = Board(self._samples, dash.interval, dash.history, dash.alert_for_scale)
        self.site = Site(self.board, Feed(100, end_when_full=True, stopping=self.stopping),
                         self._deployments, lambda: self.journal.history(limit=20), self._gpus,
                         lambda: {"url": self.url, "config": config.source,
                                  "gpu_backend": self.backend.name},
                         self.doctor.page, log=self.log)  # fmt: skip
        self.api = AdminApi(self.controller, config, self.sampler.fresh, self.events,
                            self.stopping, self.site.status, self.login_url,
                            self._learn, self.doctor)  # fmt: skip
        self.records = Records(self.journal, self.board, config, self.home, lambda: self.url,
                               self.sampler.fresh, self._deployments, self.doctor, self.redact)  # fmt: skip

    # -- what the services tell each other ------------------------------------------------

    def _learn(self, spec: Any) -> None:
        """Keep ``spec``'s secrets for its revisions, and out of the log."""
        self.controller.revisions.remember(spec)
        self.redact.add(v for v in self.controller.revisions.secrets.values() if isinstance(v, str))

    def _drain(self) -> None:
        self.metrics.drain(self.controller.observations)

    def _samples(self) -> Any:
        self._drain()
        yield from samples(self.telemetry.collect())
        yield from samples(self.metrics.registry.collect())

    def _event(self, event: dict[str, Any]) -> None:
        if event["type"] == "startup" and event.get("line"):
            event["line"] = self.redact(event["line"])
        self.events.publish(event)
        self.site.on_event(event)
        if event["type"] == "state":
            self.metrics.on_state(event)
            self.controller.write_owners()
        elif event["type"] == "deploy" and event["phase"] not in ("queued", "begin"):
            self._drain()  # its timings into the histograms as it ends

    def _tick(self, tick: dict[str, Any]) -> None:
        self.metrics.on_bottlenecks(self.site.classify())  # what limits each deployment now
        self.records.recorder.on_tick(tick)

    async def _engine_gone(self, name: str) -> bool:
        return await self.supervisor.engine_gone(name)

    def _deployments(self) -> list[dict[str, Any]]:
        return [d.status() for d in self.controller.deployments.values()]

    def _gpus(self) -> list[dict[str, Any]]:
        snap = self.sampler.latest
        if snap is None or snap.reading is None:
            return []
        return [{"index": d.index, "name": d.name, "memory_total_bytes": d.memory_total_bytes,
                 "power_limit_watts": d.power_limit_watts} for d in snap.reading.devices]  # fmt: skip

    # -- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.gateway.max_body_bytes, middlewares=[self.guard.middleware]
        )
        r = app.router
        self.gateway.add_routes(r)
        self.api.add_routes(r)
        self.records.add_routes(r)
        self.site.add_routes(r)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/login", self.guard.login)
        r.add_post("/dashboard/login", self.guard.token_login)
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
            if self.stopping.is_set():  # the second: kill, now
                kill_all(self.controller)
                os._exit(130)
            self.stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        runner, self.url = await listen(self.app(), self.host, self.port,
                                        self.config.gateway.idle_timeout)  # fmt: skip
        write_private(self.home / URL_FILE, self.url + "\n")  # the CLI's token goes here only
        self.sampler.start()
        tasks: list[asyncio.Task[Any]] = []
        try:
            for line in await reconcile(self.controller, self.home,
                                        {d.name for d in self.config.deployments}):  # fmt: skip
                self.log(line)
            on_listening(self.url)
            tasks.append(asyncio.create_task(self.metrics.scrape_engines(self.controller)))
            tasks.append(asyncio.create_task(self.doctor.start(self.log)))
            tasks.append(asyncio.create_task(
                run_ticks(self.board, self.site.pages, self.site.annotated, self.log,
                          self._tick)))  # fmt: skip
            starting = asyncio.create_task(
                start_configured(self.controller, self.config.deployments, self.log)
            )
            starting.add_done_callback(lambda t: self.started.set())
            starting.add_done_callback(lambda t: self.systemd.ready(self._deployments()))
            tasks.append(starting)
            await self.stopping.wait()
            self.systemd.stopping()
            await shut_down(self.controller, self.gateway.drain,
                            self.config.gateway.drain_timeout, self.log)  # fmt: skip
        finally:
            for task in tasks:
                task.cancel()
            await self.supervisor.close()
            # whatever of the lab's still runs (a start cut short, a worker left behind): stopped
            for line in await stop_leftovers(leftovers(self.journal, self.home, set()), self.home):
                self.log(f"{line}, left running at shutdown")
            await self.controller.close()
            await self.gateway.close()
            await runner.cleanup()
            self.sampler.stop()
            self.records.close()
            self.journal.close()
