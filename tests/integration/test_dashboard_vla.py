"""The dashboard's VLA group in a real browser, served by the dashboard's own site.

The gateway's series come from its real :class:`GatewayMetrics`, fed by a simulated VLA
deployment: robots in closed control loops at ``control_hz`` (each sends a camera frame every
1/control_hz, or as soon as its late action comes back), a fixed number of engine slots, and
the gateway's queue in front. The engine keeps up for six minutes and then slows; the board
ticks over that history as the daemon does, and the page is served over HTTP with its state
and event stream. The page must draw the VLA group for that deployment only, with the numbers
the simulation produced, and the alert must fire; a lab without VLA must look as it always
did.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry
import pytest

from labctl.dashboard.board import Board, samples
from labctl.gateway.metrics import GatewayMetrics
from tests.integration.browser import browser
from tests.integration.site import chat_traffic, number, serve, shots

pytestmark = pytest.mark.integration

ROBOTS, HZ, SLOTS = 4, 5.0, 2
#: The engine's time per frame, in turn: on time at first, then one frame in five stalls,
#: and the robots get fewer actions than they ask for, over a quarter of them late.
FAST = (0.05, 0.06, 0.07, 0.08, 0.12)
SLOW = (0.06, 0.07, 0.08, 0.09, 0.25)
SLOW_FROM, END, STEP = 360.0, 780.0, 0.01
VLA_PANELS = {"vla_rate", "vla_latency", "vla_misses", "vla_queue"}
DEPLOYMENTS = [
    {"name": "chat", "state": "ready", "revision": 1, "engine": "sim",
     "model": "Qwen/Qwen3-0.6B", "restarts": 0},
    {"name": "arm", "state": "ready", "revision": 1, "engine": "openvla",
     "model": "openvla/openvla-7b", "restarts": 0},
]  # fmt: skip

#: Every VLA panel on the page: its card and whether it shows a value (JS, in the page).
VLA_JS = """() => [...document.querySelectorAll('[data-vla] [data-panel]')].map(el => ({
  card: el.closest('[data-vla]').dataset.vla, panel: el.dataset.panel,
  live: el.dataset.live === '1'}))"""


@dataclass
class _Robots:
    """``ROBOTS`` robots at ``HZ`` behind the gateway, in simulated time: the engine runs
    ``SLOTS`` frames at a time and the rest queue at the gateway."""

    metrics: GatewayMetrics
    now: float
    #: (sent at, robot) waiting at the gateway
    queue: deque[tuple[float, int]] = field(default_factory=deque)
    #: (done at, sent at, robot) at the engine
    running: list[tuple[float, float, int]] = field(default_factory=list)
    #: (answered at, latency): the ground truth.
    answered: list[tuple[float, float]] = field(default_factory=list)
    wakes: list[tuple[float, int]] = field(default_factory=list)  # (robot sends at, robot)
    frames: int = 0

    def __post_init__(self) -> None:
        self.metrics.control_hz.labels("arm").set(HZ)  # as the gateway's route sets it
        self.vla = self.metrics.vla("arm")
        self.wakes = [(self.now + k / HZ / ROBOTS, k) for k in range(ROBOTS)]

    def step(self, until: float, service: tuple[float, ...]) -> None:
        start, k = self.now, 0
        while self.now < until:
            k += 1
            self.now = start + k * STEP
            for done, sent, robot in [r for r in self.running if r[0] <= self.now]:
                self.running.remove((done, sent, robot))
                self.vla.observe(self.now - sent, 1, HZ)
                self.answered.append((self.now, self.now - sent))
                # The next frame at the robot's next tick, or now if this action came late.
                self.wakes.append((max(sent + 1 / HZ, self.now), robot))
            for at, robot in [w for w in self.wakes if w[0] <= self.now]:
                self.wakes.remove((at, robot))
                self.queue.append((self.now, robot))
            while self.queue and len(self.running) < SLOTS:
                sent, robot = self.queue.popleft()
                self.running.append((self.now + service[self.frames % len(service)], sent, robot))
                self.frames += 1
            self.metrics.queue_depth.labels("arm").set(len(self.queue))
            self.metrics.in_flight.labels("arm").set(len(self.running))

    def last_minute(self) -> tuple[float, float]:
        """Actions per second and the share late, over the last minute."""
        recent = [lat for t, lat in self.answered if t > self.now - 60]
        return len(recent) / 60, sum(lat > 1 / HZ for lat in recent) / len(recent)


def _board(with_vla: bool) -> tuple[Board, _Robots | None, list[dict[str, Any]]]:
    """The board after 13 minutes of simulated history that ends now, and its alerts when
    the engine began to slow."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    board = Board(lambda: samples(registry.collect()), interval=5, history=3600)
    start = time.time() - END
    robots = _Robots(metrics, start) if with_vla else None
    t, tick, on_time = start, 0, []
    while t < start + END:
        t, tick = t + 5, tick + 1
        chat_traffic(metrics, tick)
        if robots is not None:
            robots.step(t, FAST if t - start <= SLOW_FROM else SLOW)
        board.tick(t)
        if t - start == SLOW_FROM:
            on_time = board.alert_docs()
    return board, robots, on_time


def _vla_live(page: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every VLA panel with a value."""
    deadline = time.monotonic() + timeout
    panels: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        panels = page.evaluate(VLA_JS)
        if {p["panel"] for p in panels} == VLA_PANELS and all(p["live"] for p in panels):
            return panels
        time.sleep(0.25)
    raise AssertionError(f"VLA panels without a live value after {timeout:g} s: {panels}")


def test_the_vla_group_shows_actions_against_the_target_latency_against_the_deadline_and_misses(
    tmp_path: Path,
) -> None:
    board, robots, on_time = _board(with_vla=True)
    assert robots is not None
    assert on_time == [], "the alert fired while the engine kept up"
    rate, late = robots.last_minute()
    assert rate < ROBOTS * HZ and late > 0.05, "the simulation ends behind the robots' rate"
    expected = board.vla_now()["arm"]
    shoot = shots(tmp_path)
    with serve(board, DEPLOYMENTS) as url, browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        panels = _vla_live(page)
        # Only the deployment with VLA series has the group: chat queues too, but no card.
        assert {p["card"] for p in panels} == {"arm"}
        assert page.locator("#s-vla").is_visible()
        assert not page.locator("#s-speech").is_visible()
        card = page.locator('[data-vla="arm"]')

        def stat(key: str) -> float:
            return number(card.locator(f'[data-stat="{key}"] .n').inner_text())

        # The target is one robot's rate and says so; the actions are every robot's.
        assert card.locator('[data-stat="target"] .k').inner_text() == "target (per robot)"
        assert card.locator('[data-stat="actions"] .k').inner_text() == "actions/s (all robots)"
        assert stat("target") == HZ and stat("deadline") == 1 / HZ
        assert stat("actions") == pytest.approx(rate, rel=0.1)  # rate() over the same minute
        assert stat("late") == pytest.approx(late, abs=0.03)
        assert stat("queued") == len(robots.queue) and stat("in_flight") == len(robots.running)
        # The page shows the board's quantiles (a live tick may have moved them a little).
        p50, p99 = stat("p50"), stat("p99")
        assert p50 == pytest.approx(expected["latency_p50"], rel=0.15, abs=0.002)
        assert p99 == pytest.approx(expected["latency_p99"], rel=0.15, abs=0.002)
        assert p50 <= p99 and p99 > 1 / HZ
        assert card.locator('[data-stat="p99"].behind').count() == 1  # past the deadline
        latency = card.locator('[data-panel="vla_latency"] .v').inner_text()
        assert re.fullmatch(r"\S+ m?s / \S+ m?s / \S+ m?s · 200 ms", latency), latency
        # Late as the rule says: on the stat and in the alert list.
        assert card.locator('[data-stat="late"].behind').count() == 1
        alert = page.locator('#alerts [data-alert="LabVlaDeadlineMisses"]')
        assert alert.get_attribute("data-state") == "firing"
        assert "Over 5% of the answers of arm come after their deadline" in alert.inner_text()
        # Every chart's key names its lines, the target and the deadline among them.
        keys = card.locator(".legend").all_inner_texts()
        assert any("target, per robot" in k for k in keys), keys
        assert any("deadline 1/control_hz" in k for k in keys), keys
        # Live: the event stream appends ticks, and the group keeps its values.
        n = page.evaluate("S.times.length")
        page.wait_for_function(f"S.times.length > {n}", timeout=15_000)
        _vla_live(page)
        shoot(page, "dashboard-vla-1280x800.png", full_page=True)

        phone = b.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                           is_mobile=True, has_touch=True)  # fmt: skip
        phone.goto(url + "/")
        _vla_live(phone)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        shoot(phone.locator('[data-vla="arm"]'), "dashboard-vla-phone.png")


def test_a_lab_without_vla_shows_no_vla_group() -> None:
    board, _, _ = _board(with_vla=False)
    with serve(board, DEPLOYMENTS) as url, browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.wait_for_selector('[data-deployment="chat"] [data-panel="dep_ttft"][data-live="1"]')
        page.wait_for_function("S.times.length > 100")
        assert page.locator("[data-vla]").count() == 0
        assert not page.locator("#s-vla").is_visible()
        assert page.evaluate(VLA_JS) == []
        assert "LabVlaDeadlineMisses" not in page.locator("#alerts").inner_text()
