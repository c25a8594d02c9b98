"""The dashboard's speech group: its queries, its Grafana row, the board's numbers from the
gateway's own speech series, and LabSpeechFallingBehind in the daemon's rule engine."""

from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any

from prometheus_client import CollectorRegistry
import pytest

from labctl.dashboard.alerts import ALERTS, Alert, RuleEngine, expand_series, series_labels
from labctl.dashboard.board import Board, length_order, samples
from labctl.dashboard.grafana import dashboard_json
from labctl.dashboard.panels import PANELS, SPEECH, daemon_queries, for_daemon, for_grafana
from labctl.dashboard.promql import Store, metric_names, parse, parse_duration
from labctl.dashboard.site import Site
from labctl.gateway.metrics import GatewayMetrics

SPEECH_IDS = {"speech_rtfx", "speech_audio", "speech_queue", "speech_latency"}
BEHIND = next(a for a in ALERTS if a.name == "LabSpeechFallingBehind")


def test_the_speech_panels_read_the_gateways_speech_series_by_deployment() -> None:
    assert {p.id for p in SPEECH} == SPEECH_IDS
    assert all(p.section == "speech" and p in PANELS for p in SPEECH)
    read = set().union(*(metric_names(for_daemon(q.expr)) for p in SPEECH for q in p.queries))
    assert read == {
        "labctl_gateway_realtime_factor", "labctl_gateway_rtfx_floor",
        "labctl_gateway_audio_seconds_total", "labctl_gateway_audio_request_duration_seconds_count",
        "labctl_gateway_audio_request_duration_seconds_bucket", "labctl_gateway_queue_depth",
        "labctl_gateway_in_flight",
    }  # fmt: skip
    daemon = {p.id: [e for pp, _, e in daemon_queries() if pp is p] for p in SPEECH}
    assert daemon["speech_queue"][0] == (
        "labctl_gateway_queue_depth and on (instance, model) labctl_gateway_rtfx_floor"
    )
    for p in SPEECH:
        for q in p.queries:
            parse(for_daemon(q.expr))
            grafana = for_grafana(q.expr)
            assert "@" not in grafana and 'model=~"$deployment"' in grafana, grafana
            assert "{{model}}" in q.legend and q.role


def test_grafana_has_a_speech_row_with_the_same_panels_and_the_floor_dashed() -> None:
    doc = dashboard_json()
    panels = doc["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    at = next(i for i in rows if panels[i]["title"] == "Speech")
    end = next(i for i in rows if i > at)
    speech = panels[at + 1 : end]
    assert [p["title"] for p in speech] == [p.title for p in SPEECH]
    rtfx = speech[0]
    assert rtfx["fieldConfig"]["defaults"]["unit"] == "suffix:×"
    (override,) = rtfx["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byRegexp", "options": ".* floor$"}
    assert {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}} in override[
        "properties"
    ]
    exprs = [t["expr"] for p in speech for t in p["targets"]]
    assert exprs == [for_grafana(q.expr) for p in SPEECH for q in p.queries]


class _Lab:
    """The gateway's real series for a chat deployment and, optionally, a speech one, in
    simulated time."""

    def __init__(self, speech: bool) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.now = 1000.0
        self.metrics.queue_depth.labels("chat").set(7)
        self.metrics.in_flight.labels("chat").set(8)
        self.answered: list[tuple[float, float]] = []
        self.audio = None
        if speech:
            self.audio = self.metrics.audio("asr", clock=lambda: self.now)
            self.metrics.rtfx_floor.labels("asr").set(20.0)

    def collect(self) -> Any:
        return samples(self.registry.collect())

    def answer(self, seconds: float, duration: float) -> None:
        assert self.audio is not None
        self.audio.observe(seconds, duration)
        self.answered.append((self.now, seconds))


def _ticks(lab: _Lab, board: Board, seconds: int, queued: int = 0) -> None:
    """Every 5 s: two 8 s clips answered in 0.8 s each and one 40 s clip in 3 s."""
    for _ in range(seconds // 5):
        lab.now += 5
        if lab.audio is not None:
            lab.answer(8.0, 0.8)
            lab.answer(8.0, 0.8)
            lab.answer(40.0, 3.0)
            lab.metrics.queue_depth.labels("asr").set(queued)
            lab.metrics.in_flight.labels("asr").set(3)
        board.tick(lab.now)


def test_the_board_shows_speech_numbers_for_the_speech_deployment_only() -> None:
    lab = _Lab(speech=True)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 180)
    assert board.errors == {}
    shown = {(h.panel, h.role, h.labels.get("model"), h.labels.get("audio_length"))
             for h in board.series.values() if h.panel in SPEECH_IDS}  # fmt: skip
    assert {model for _, _, model, _ in shown} == {"asr"}  # chat queues too, but is no speech
    now = board.speech_now()
    assert set(now) == {"asr"}
    asr = now["asr"]
    in_window = sum(s for t, s in lab.answered if t >= lab.now - 60)
    assert asr["rtfx"] == pytest.approx(in_window / 60, rel=1e-3)  # the gateway's gauge
    assert asr["rtfx_floor"] == 20.0
    assert asr["audio_seconds_per_second"] == pytest.approx(56 / 5, rel=1e-3)  # rate over 1m
    assert asr["requests_per_second"] == pytest.approx(3 / 5, rel=1e-3)
    assert (asr["queued"], asr["in_flight"]) == (0.0, 3.0)
    # Latency by length, in order; Prometheus's interpolation within the buckets that hold
    # the durations (0.5–1 s for the 8 s clips, 2.5–5 s for the 40 s ones).
    assert list(asr["latency"]) == ["<=10s", "<=60s"]
    assert asr["latency"]["<=10s"] == {"p50": 0.75, "p95": 0.975}
    assert asr["latency"]["<=60s"] == {"p50": 3.75, "p95": 4.875}
    # The other lengths have series (the gateway makes one per length) but no answer: none
    # of them is a value.
    empty = [h for h in board.series.values() if h.labels.get("audio_length") == ">60s"]
    assert empty and all(v is None for h in empty for v in h.values)
    site = Site(board, None, list, list, list,  # type: ignore[arg-type]
                lambda: {"url": "", "config": "", "gpu_backend": "sim"})  # fmt: skip
    assert site.status()["speech"] == now


def test_a_lab_without_speech_has_no_speech_series() -> None:
    lab = _Lab(speech=False)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 120)
    assert board.errors == {}
    assert [h for h in board.series.values() if h.panel in SPEECH_IDS] == []
    assert board.speech_now() == {}
    assert board.serving_now()["chat"]["requests_queued"] == 7.0


def test_the_board_fires_speech_falling_behind_after_five_minutes_below_the_floor_queueing() -> (
    None
):
    lab = _Lab(speech=True)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 120, queued=4)  # 11.2 audio s/s, under its floor of 20, and queueing
    assert [(a["name"], a["state"], a["labels"]) for a in board.alert_docs()] == [
        ("LabSpeechFallingBehind", "pending", {"model": "asr"})
    ]
    _ticks(lab, board, 200, queued=4)
    (alert,) = board.alert_docs()
    assert alert["state"] == "firing"
    assert alert["summary"] == (
        "Speech on asr is transcribed slower than its real-time floor while requests queue"
    )
    assert alert["value"] == pytest.approx(board.speech_now()["asr"]["rtfx"], rel=1e-3)
    _ticks(lab, board, 10, queued=0)  # the queue drains: it keeps up after all
    assert board.alert_docs() == []


def _run(alert: Alert, series: Mapping[str, str], at: str) -> list[dict[str, str]]:
    """The alerts firing at ``at`` when the daemon evaluates ``series`` (promtool's notation)
    every minute, as promtool does."""
    store = Store(retention=7200)
    by_time: dict[float, list[tuple[str, dict[str, str], float]]] = {}
    for text, values in series.items():
        name, labels = series_labels(text)
        for t, v in expand_series(values):
            by_time.setdefault(t, []).append((name, labels, v))
    engine = RuleEngine((alert,))
    firing: list[dict[str, str]] = []
    t = 0.0
    while t <= parse_duration(at):
        store.add(t, by_time.get(t, []), mark_missing=False)
        firing = [f.labels for f in engine.evaluate(store, t) if f.state == "firing"]
        t += 60
    return firing


def test_the_daemon_fires_speech_falling_behind_where_promtool_does() -> None:
    assert _run(BEHIND, BEHIND.fire, BEHIND.eval_time) == [{"model": "asr"}]
    assert _run(BEHIND, BEHIND.quiet, BEHIND.eval_time) == []
    assert len(BEHIND.also_quiet) == 3


@pytest.mark.parametrize(
    ("alert", "series", "at"),
    [(a, series, at) for a in ALERTS for series, at in a.also_quiet],
    ids=lambda v: v.name if isinstance(v, Alert) else "",
)
def test_the_daemon_stays_quiet_in_every_extra_quiet_case_promtool_checks(
    alert: Alert, series: Mapping[str, str], at: str
) -> None:
    assert _run(alert, series, at) == []


def test_audio_lengths_sort_by_length() -> None:
    labels = ["unknown", ">60s", "<=30s", "<=5s", "<=60s", "<=10s"]
    assert sorted(labels, key=length_order) == [
        "<=5s",
        "<=10s",
        "<=30s",
        "<=60s",
        ">60s",
        "unknown",
    ]
    assert length_order("unknown")[0] == math.inf
