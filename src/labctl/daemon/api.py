"""The admin API (``/api``, the doctor's report among it), the probes (``/healthz``,
``/readyz``) and the engines' own metrics relayed for Prometheus (``/sd/engines``,
``/engines/NAME/metrics``).

Every handler here sits behind the guard (``daemon/guard.py``); a deploy request is read
and checked by ``deploy/requests.py`` (what the API may change) before the controller
sees it, and the controller runs it to its end whatever the client does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
import json
import os
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from labctl import jsontext
from labctl.config import DeploymentSpec, LabConfig
from labctl.daemon.doctor import LabDoctor
from labctl.daemon.guard import error_body
from labctl.dashboard.feed import Feed
from labctl.deploy.controller import Controller
from labctl.deploy.requests import RequestRefused, check_restore, in_thread, requested_spec
from labctl.errors import DeployError
from labctl.gpu.sample import GpuReading

#: Members and elements an admin request may hold: a few dozen are real.
MAX_ADMIN_ITEMS = 100_000


@dataclass
class AdminApi:
    controller: Controller
    config: LabConfig
    #: A fresh GPU reading, from the sampler (the backend's one reader).
    read_gpus: Callable[[], Awaitable[GpuReading]]
    #: The admin API's event stream (``/api/events``).
    events: Feed
    stopping: asyncio.Event
    #: ``/api/status``'s document (the daemon composes it from the board and the GPUs).
    status_doc: Callable[[], dict[str, Any]]
    #: A one-time link that logs a browser in to the dashboard.
    login_url: Callable[[], str]
    #: Told of a spec whose secrets the log must not show.
    learn: Callable[[DeploymentSpec], None]
    #: The lab's doctor (``/api/doctor``).
    doctor: LabDoctor

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/api/status", self.status)
        r.add_get("/api/deployments", self.status)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/deployments/{name}/deploy", self.deploy)
        r.add_post("/api/deployments/{name}/rollback", self.rollback)
        r.add_post("/api/deployments/{name}/cancel", self.cancel)
        r.add_get("/api/history", self.history)
        r.add_get("/api/doctor", self.doctor_report)
        r.add_get("/api/deploys/{ticket}", self.deploy_ticket)
        r.add_get("/api/events", self.stream_events)
        r.add_post("/api/login-link", self.login_link)
        r.add_post("/api/shutdown", self.shutdown)
        r.add_get("/sd/engines", self.engine_targets)
        r.add_get("/engines/{name}/metrics", self.engine_metrics)

    # -- probes and reports -----------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        states = {d.name: d.state for d in self.controller.deployments.values()}
        ready = bool(states) and all(s == "ready" for s in states.values())
        return web.json_response(
            {"ready": ready, "deployments": states}, status=200 if ready else 503
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_doc())

    async def ps(self, request: web.Request) -> web.Response:
        reading = await self.read_gpus()
        memory: dict[int, int] = {}
        for dev in reading.devices:
            for p in dev.processes:
                memory[p.pid] = memory.get(p.pid, 0) + (p.used_bytes or 0)
        rows = []
        c = self.controller
        engines = [(d.name, d.revision, d.engine, "engine") for d in c.deployments.values()]
        engines += [(p.deployment, p.revision, p.owner.engine, "asleep") for p in c.sleep.all()]
        for name, revision, e, role in engines:
            if e is None:
                continue
            box = e.container.shown() if e.container else {}
            listed = [(e.process.pid, role), *((st.pid, "worker") for st in e.process.track())]
            if box:  # its processes under their host pids (children of the runtime's monitor)
                seen = {q for q, _ in listed}
                listed += [(p, "container") for p in e.process.alive_members() if p not in seen]
            rows += [{"deployment": name, "revision": revision, "pid": pid, "role": kind,
                      "gpu_memory_bytes": memory.get(pid or -1, 0),
                      "container": box.get("name"), "container_id": box.get("id"),
                      "image": box.get("image")}
                     for pid, kind in listed]  # fmt: skip
        return web.json_response({"processes": rows})

    async def history(self, request: web.Request) -> web.Response:
        name = request.query.get("deployment") or None
        return web.json_response({"deploys": self.controller.journal.history(name, limit=100)})

    async def doctor_report(self, request: web.Request) -> web.Response:
        """The doctor's latest report (``labctl doctor --json``'s document); ``?refresh=1``
        runs it again first."""
        refresh = request.query.get("refresh", "0")
        if refresh not in ("0", "1"):
            raise api_error(400, f"refresh={refresh[:20]!r}: give 1 to run the doctor again, or 0")
        try:
            report = await (self.doctor.run() if refresh == "1" else self.doctor.latest())
        except TimeoutError:
            raise api_error(503, f"the doctor has not finished after {self.doctor.timeout:g} s; "
                            "ask again later") from None  # fmt: skip
        return web.json_response(report.to_json())

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        return await self.events.serve(request, first={"type": "hello", **self.status_doc()})

    async def login_link(self, request: web.Request) -> web.Response:
        return web.json_response({"url": self.login_url()})

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True, "pid": os.getpid()})

    # -- deploys ------------------------------------------------------------------------

    async def deploy(self, request: web.Request) -> web.Response:
        """A deploy: with ``"wait": false``, 202 and its ticket once the request is checked
        (its events and ``/api/deploys/{ticket}`` follow it); else its record when it ends."""
        name = request.match_info["name"]
        body = await _json_body(request)
        wait = _wait(body)
        d = self.controller.deployments.get(name)
        if d is None:
            names = ", ".join(self.controller.deployments) or "none"
            raise api_error(404, f"no deployment named {name!r}; the lab has: {names}")
        try:
            spec = await in_thread(requested_spec, d.spec, body, self.config, self._others(name))
        except RequestRefused as exc:
            raise api_error(exc.status, str(exc)) from None
        self.learn(spec)
        dry_run = bool(body.get("dry_run"))
        if not wait and not dry_run:
            return self._accepted(self.controller.submit(spec), name)
        try:
            record = await self.controller.deploy(spec, dry_run=dry_run)
        except DeployError as exc:
            raise api_error(409, str(exc)) from None
        return web.json_response(record)

    async def rollback(self, request: web.Request) -> web.Response:
        wait = _wait(await _json_body(request))
        name = request.match_info["name"]

        async def allowed(current: DeploymentSpec, earlier: DeploymentSpec) -> None:
            await in_thread(check_restore, current, earlier, self.config, self._others(name))

        try:
            record = await self.controller.rollback(name, allowed, wait=wait)
        except RequestRefused as exc:
            raise api_error(exc.status, str(exc)) from None
        except DeployError as exc:
            raise api_error(409, str(exc)) from None
        if not wait:
            return self._accepted(record["ticket"], name)
        return web.json_response(record)

    def _accepted(self, ticket: str, name: str) -> web.Response:
        """202 for a deploy that goes on (its events and its ticket say how it goes)."""
        return web.json_response({"deployment": name, "ticket": ticket}, status=202)

    async def deploy_ticket(self, request: web.Request) -> web.Response:
        """A deploy by its ticket: queued, running or done, with its journal record once begun."""
        ticket = request.match_info["ticket"]
        doc = self.controller.ticket(ticket)
        if doc is None:
            raise api_error(404, f"no deploy with ticket {ticket[:40]!r}; the lab keeps the last "
                            "200 since it started (see `labctl history`)")  # fmt: skip
        return web.json_response(doc)

    async def cancel(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            self.controller.cancel(name)
        except DeployError as exc:
            raise api_error(409, str(exc)) from None
        return web.json_response({"deployment": name, "cancelling": True})

    def _others(self, name: str) -> list[DeploymentSpec]:
        return [x.spec for x in self.controller.deployments.values() if x.name != name]

    # -- engines for Prometheus ---------------------------------------------------------

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
            raise api_error(404, f"no engine serves {request.match_info['name']!r} now")
        try:
            async with self.controller.engines.http().get(
                e.url + "/metrics", headers=e.headers(), timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                body = await r.read()
                kind = r.headers.get("Content-Type", CONTENT_TYPE_LATEST)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"the engine did not answer: {exc}\n")
        return web.Response(body=body, status=r.status, headers={"Content-Type": kind})


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = jsontext.loads(raw, max_items=MAX_ADMIN_ITEMS)
    except ValueError as exc:
        raise api_error(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise api_error(400, "the request body must be a JSON object")
    return body


def _wait(body: dict[str, Any]) -> bool:
    """A deploy request's ``wait`` (default true), taken out of ``body``."""
    wait = body.pop("wait", True)
    if not isinstance(wait, bool):
        raise api_error(400, "wait must be true or false")
    return wait


def api_error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
           409: web.HTTPConflict, 503: web.HTTPServiceUnavailable}[status]  # fmt: skip
    return cls(text=json.dumps(error_body(status, message)), content_type="application/json")
