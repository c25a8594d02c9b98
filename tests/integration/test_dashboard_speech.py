"""The dashboard's speech group in a real browser, served by the dashboard's own site.

The gateway's series come from its real :class:`GatewayMetrics`, fed by a simulated speech
deployment (closed-loop clients, a fixed number of engine slots, the gateway's queue in
front) that keeps ahead of its RTFx floor for six minutes and then slows below it; the
board ticks over that history as the daemon does, and the page is served over HTTP with its
state and event stream. The page must draw the speech group for that deployment only, with
the numbers the simulation produced, and the alert must fire; a lab without speech must
look as it always did.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
import time
from typing import Any

from prometheus_client import CollectorRegistry
import pytest

from labctl.dashboard.board import Board, samples
from labctl.gateway.metrics import GatewayMetrics
from tests.integration.browser import browser
from tests.integration.site import chat_traffic, number, serve, shots

pytestmark = pytest.mark.integration

#: Clip lengths (s), one for each of the gateway's audio length buckets up to a minute.
CLIPS = {"<=5s": 3.0, "<=10s": 8.0, "<=30s": 20.0, "<=60s": 40.0}
FLOOR = 10.0
SLOTS, CLIENTS, THINK = 4, 16, 10.0
#: Each slot's speed (audio seconds per second): ahead of the floor, then behind it.
FAST, SLOW, SLOW_FROM, END = 10.0, 1.5, 360.0, 780.0
SPEECH_PANELS = {"speech_rtfx", "speech_audio", "speech_queue", "speech_latency"}
DEPLOYMENTS = [
    {"name": "chat", "state": "ready", "revision": 1, "engine": "sim",
     "model": "Qwen/Qwen3-0.6B", "restarts": 0},
    {"name": "asr", "state": "ready", "revision": 1, "engine": "vllm",
     "model": "openai/whisper-large-v3", "restarts": 0},
]  # fmt: skip

#: Every speech panel on the page: its card and whether it shows a value (JS, in the page).
SPEECH_JS = """() => [...document.querySelectorAll('[data-speech] [data-panel]')].map(el => ({
  card: el.closest('[data-speech]').dataset.speech, panel: el.dataset.panel,
  live: el.dataset.live === '1'}))"""


@dataclass
class _Speech:
    """A speech deployment behind the gateway, in simulated time: ``CLIENTS`` clients each
    send a clip, wait for its answer and think ``THINK`` s; the engine runs ``SLOTS`` at a
    time and the rest queue at the gateway."""

    metrics: GatewayMetrics
    now: float
    #: (sent at, audio seconds, client) waiting at the gateway
    queue: deque[tuple[float, float, int]] = field(default_factory=deque)
    #: (done at, sent at, audio seconds, client) at the engine
    running: list[tuple[float, float, float, int]] = field(default_factory=list)
    #: (answered at, audio seconds): the ground truth of the RTFx gauge.
    answered: list[tuple[float, float]] = field(default_factory=list)
    wakes: list[tuple[float, int]] = field(default_factory=list)  # (client sends at, client)
    sent: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.audio = self.metrics.audio("asr", clock=lambda: self.now)
        self.metrics.rtfx_floor.labels("asr").set(FLOOR)
        self.wakes = [(self.now + k * THINK / CLIENTS, k) for k in range(CLIENTS)]
        self.sent = list(range(CLIENTS))  # each client starts at its own clip

    def step(self, until: float, speed: float, dt: float = 0.25) -> None:
        while self.now < until:
            self.now += dt
            for end, start, seconds, client in [r for r in self.running if r[0] <= self.now]:
                self.running.remove((end, start, seconds, client))
                self.audio.observe(seconds, self.now - start)
                self.answered.append((self.now, seconds))
                self.wakes.append((self.now + THINK, client))
            for at, client in [w for w in self.wakes if w[0] <= self.now]:
                self.wakes.remove((at, client))
                lengths = list(CLIPS.values())
                self.queue.append((self.now, lengths[self.sent[client] % len(lengths)], client))
                self.sent[client] += 1
            while self.queue and len(self.running) < SLOTS:
                start, seconds, client = self.queue.popleft()
                self.running.append((self.now + 0.2 + seconds / speed, start, seconds, client))
            self.metrics.queue_depth.labels("asr").set(len(self.queue))
            self.metrics.in_flight.labels("asr").set(len(self.running))

    def rtfx(self) -> float:
        return sum(s for t, s in self.answered if t >= self.now - 60) / 60


def _board(with_speech: bool) -> tuple[Board, _Speech | None]:
    """The board after 13 minutes of simulated history that ends now."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    board = Board(lambda: samples(registry.collect()), interval=5, history=3600)
    start = time.time() - END
    speech = _Speech(metrics, start) if with_speech else None
    t, tick = start, 0
    while t < start + END:
        t, tick = t + 5, tick + 1
        chat_traffic(metrics, tick)
        if speech is not None:
            speech.step(t, FAST if t - start <= SLOW_FROM else SLOW)
        board.tick(t)
    return board, speech


def _speech_live(page: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every speech panel with a value, and a latency row for every clip length."""
    deadline = time.monotonic() + timeout
    panels: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        panels = page.evaluate(SPEECH_JS)
        rows = page.locator('[data-speech="asr"] tr[data-length]').count()
        live = all(p["live"] for p in panels)
        if {p["panel"] for p in panels} == SPEECH_PANELS and live and rows == len(CLIPS):
            return panels
        time.sleep(0.25)
    raise AssertionError(f"speech panels without a live value after {timeout:g} s: {panels}")


def test_the_speech_group_shows_rtfx_audio_queue_and_latency_by_audio_length(
    tmp_path: Path,
) -> None:
    board, speech = _board(with_speech=True)
    assert speech is not None
    truth = speech.rtfx()
    assert truth < FLOOR and len(speech.queue) > 0, "the simulation ends behind its floor"
    shoot = shots(tmp_path)
    with serve(board, DEPLOYMENTS) as url, browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        panels = _speech_live(page)
        # Only the deployment with speech series has the group: chat queues too, but no card.
        assert {p["card"] for p in panels} == {"asr"}
        assert page.locator("#s-speech").is_visible()
        card = page.locator('[data-speech="asr"]')

        def stat(key: str) -> float:
            return number(card.locator(f'[data-stat="{key}"] .n').inner_text())

        assert stat("floor") == FLOOR
        assert stat("rtfx") == pytest.approx(truth, rel=0.01)  # the gateway's gauge, drawn
        assert stat("queued") == len(speech.queue) and stat("in_flight") == SLOTS
        assert stat("audio") == pytest.approx(truth, rel=0.35)  # rate() over the same minute
        assert stat("requests") > 0
        # Behind: below the floor while requests queue, on the stat and in the alert list.
        assert card.locator('[data-stat="rtfx"].behind').count() == 1
        alert = page.locator('#alerts [data-alert="LabSpeechFallingBehind"]')
        assert alert.get_attribute("data-state") == "firing"
        assert "Speech on asr is transcribed slower than its real-time floor" in alert.inner_text()
        # Latency by audio length: a row per length in order, p50 ≤ p95, longer clips slower.
        rows = card.locator("tr[data-length]")
        assert [rows.nth(i).get_attribute("data-length") for i in range(rows.count())] == list(
            CLIPS
        )
        p95s = []
        for i in range(rows.count()):
            p50, p95 = (number(t) for t in rows.nth(i).locator("td.num").all_inner_texts())
            assert 0 < p50 <= p95, rows.nth(i).inner_text()
            p95s.append(p95)
        assert p95s == sorted(p95s), p95s
        # Live: the event stream appends ticks, and the group keeps its values.
        n = page.evaluate("S.times.length")
        page.wait_for_function(f"S.times.length > {n}", timeout=15_000)
        _speech_live(page)
        shoot(page, "dashboard-speech-1280x800.png", full_page=True)

        phone = b.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                           is_mobile=True, has_touch=True)  # fmt: skip
        phone.goto(url + "/")
        _speech_live(phone)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        shoot(phone.locator('[data-speech="asr"]'), "dashboard-speech-phone.png")


def test_a_lab_without_speech_shows_no_speech_group() -> None:
    board, _ = _board(with_speech=False)
    with serve(board, DEPLOYMENTS) as url, browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.wait_for_selector('[data-deployment="chat"] [data-panel="dep_ttft"][data-live="1"]')
        page.wait_for_function("S.times.length > 100")
        assert page.locator("[data-speech]").count() == 0
        assert not page.locator("#s-speech").is_visible()
        assert page.evaluate(SPEECH_JS) == []
        assert "LabSpeechFallingBehind" not in page.locator("#alerts").inner_text()
