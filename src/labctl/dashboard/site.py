"""The dashboard as the daemon serves it: the page, its state document and its event
stream, and ``/api/status``'s document, composed from the board and what the lab reports.

The dashboard knows nothing of the deploy controller, the sampler or the doctor (services do
not import each other): the daemon hands it callables that say what the deployments, the
deploy timeline, the GPUs and the doctor's findings are now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import os
from typing import Any

from aiohttp import web

from labctl.dashboard.board import Board
from labctl.dashboard.bottleneck import Tracker
from labctl.dashboard.feed import Feed, compact
from labctl.dashboard.page import page_html

#: What the page is served with: never framed, never sniffed, never cached stale.
PAGE_HEADERS = {
    "Cache-Control": "no-cache", "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
}  # fmt: skip


@dataclass
class Site:
    board: Board
    #: The open pages (each gets every tick and event).
    pages: Feed
    deployments: Callable[[], list[dict[str, Any]]]
    timeline: Callable[[], list[dict[str, Any]]]
    gpus: Callable[[], list[dict[str, Any]]]
    #: The lab's URL, config source and GPU backend, as the daemon knows them.
    lab: Callable[[], dict[str, Any]]
    #: The doctor's panel: the findings that are not ok (None until its first run ends).
    doctor: Callable[[], dict[str, Any] | None] = lambda: None
    #: Each deployment's bottleneck now and over the history window (``bottleneck.py``).
    bottlenecks: Tracker = field(default_factory=Tracker)
    #: The daemon's log (a roofline that failed to build).
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.log is not None:
            self.bottlenecks.perfs.log = self.log

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/", self.page)
        r.add_get("/dashboard/state", self.state)
        r.add_get("/dashboard/events", self.events)

    def on_event(self, event: dict[str, Any]) -> None:
        """A lab event, to every open page (with what it changed)."""
        self.bottlenecks.on_event(event)
        if event.get("type") == "state":  # a start: its roofline built before it serves
            self.bottlenecks.warm(self.deployments(), {g["index"]: g for g in self.gpus()})
        if self.pages:
            self.pages.publish({"type": "event", "event": event, "deployments": self.annotated(),
                                "timeline": self.timeline()})  # fmt: skip

    def on_doctor(self) -> None:
        """A new doctor report, to every open page."""
        if self.pages:
            self.pages.publish({"type": "doctor", "doctor": self.doctor()})

    def classify(self) -> dict[str, str]:
        """Each deployment's bottleneck from the board's latest tick: deployment → class."""
        self.bottlenecks.points = self.board.points
        self.bottlenecks.window = max(1, round(60 / self.board.interval))  # the [1m] rates
        gpus = {g["index"]: {**g, **self.board.gpu_now(g["index"])} for g in self.gpus()}
        return self.bottlenecks.update(self.deployments(), self.board.serving_now(), gpus,
                                       self.timeline())  # fmt: skip

    def annotated(self) -> list[dict[str, Any]]:
        """The deployments, each with its ``bottleneck`` (class, evidence, roofline fraction)
        and ``bottleneck_history`` (its class at each tick of the window, oldest first)."""
        now, history = self.bottlenecks.now, self.bottlenecks.history
        return [{**d, "bottleneck": now.get(d["name"]),
                 "bottleneck_history": list(history.get(d["name"], ()))}
                for d in self.deployments()]  # fmt: skip

    def doc(self) -> dict[str, Any]:
        lab = self.lab()
        return {
            **self.board.snapshot(), "url": lab["url"], "gpu_backend": lab["gpu_backend"],
            "gpus": self.gpus(), "deployments": self.annotated(),
            "timeline": self.timeline(), "doctor": self.doctor(), "auth": True,
        }  # fmt: skip

    def status(self) -> dict[str, Any]:
        """``/api/status`` and ``labctl status``: GPUs, deployments, serving (and speech and
        VLA, for the deployments that serve them), alerts."""
        return {
            **self.lab(), "pid": os.getpid(), "deployments": self.annotated(),
            "gpus": [{**g, **self.board.gpu_now(g["index"])} for g in self.gpus()],
            "serving": self.board.serving_now(), "speech": self.board.speech_now(),
            "vla": self.board.vla_now(),
            "alerts": self.board.alert_docs(),
            "alert_errors": dict(self.board.errors),
        }  # fmt: skip

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=page_html(), content_type="text/html", headers=PAGE_HEADERS)

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.doc(), dumps=compact)

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await self.pages.serve(request)
