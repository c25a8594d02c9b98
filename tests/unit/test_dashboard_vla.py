"""The dashboard's VLA group: its queries, its Grafana row, the board's numbers from the
gateway's own VLA series, LabVlaDeadlineMisses in the daemon's rule engine, and the VLA line
of `labctl status`."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
import math
import re
from typing import Any

from click.testing import CliRunner
from prometheus_client import CollectorRegistry
import pytest

from labctl.cli.main import cli
from labctl.dashboard.alerts import ALERTS, Alert, RuleEngine, expand_series, series_labels
from labctl.dashboard.board import Board, samples
from labctl.dashboard.grafana import dashboard_json
from labctl.dashboard.panels import PANELS, VLA, daemon_queries, for_daemon, for_grafana
from labctl.dashboard.promql import Store, evaluate, metric_names, parse, parse_duration
from labctl.dashboard.site import Site
from labctl.gateway.metrics import ACTION_BUCKETS, GatewayMetrics

VLA_IDS = ["vla_rate", "vla_latency", "vla_misses", "vla_queue"]
MISSES = next(a for a in ALERTS if a.name == "LabVlaDeadlineMisses")


def test_the_vla_panels_read_the_gateways_vla_series_by_deployment() -> None:
    assert [p.id for p in VLA] == VLA_IDS
    assert all(p.section == "vla" and p in PANELS for p in VLA)
    read = set().union(*(metric_names(for_daemon(q.expr)) for p in VLA for q in p.queries))
    assert read == {
        "labctl_vla_actions_total", "labctl_vla_control_hz",
        "labctl_vla_action_latency_seconds_bucket", "labctl_vla_action_latency_seconds_count",
        "labctl_vla_deadline_misses_total", "labctl_gateway_queue_depth",
        "labctl_gateway_in_flight",
    }  # fmt: skip
    daemon = {p.id: [e for pp, _, e in daemon_queries() if pp is p] for p in VLA}
    assert daemon["vla_rate"] == [
        "sum by (model) (rate(labctl_vla_actions_total[1m]))",
        "labctl_vla_control_hz",
    ]
    assert daemon["vla_latency"][3] == "1 / labctl_vla_control_hz"
    assert daemon["vla_misses"] == [
        "sum by (model) (rate(labctl_vla_deadline_misses_total[1m])) / "
        "sum by (model) (rate(labctl_vla_action_latency_seconds_count[1m]))"
    ]
    assert daemon["vla_queue"][1] == (
        "labctl_gateway_in_flight and on (instance, model) labctl_vla_control_hz"
    )
    for p in VLA:
        for q in p.queries:
            parse(for_daemon(q.expr))
            grafana = for_grafana(q.expr)
            assert "@" not in grafana and 'model=~"$deployment"' in grafana, grafana
            assert q.legend.startswith("{{model}} ") and q.role
    # The target is labelled as one robot's, the rate as every robot's together.
    rate = {q.role: q.legend for q in VLA[0].queries}
    assert rate == {"actions": "{{model}} actions/s, all robots",
                    "target": "{{model}} target per robot"}  # fmt: skip


def test_grafana_has_a_vla_row_with_the_same_panels_and_the_target_and_deadline_dashed() -> None:
    doc = dashboard_json()
    panels = doc["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    assert [panels[i]["title"] for i in rows] == [
        "GPUs", "Deployments", "Speech", "VLA", "Deploys and restarts", "Alerts"
    ]  # fmt: skip
    at = next(i for i in rows if panels[i]["title"] == "VLA")
    end = next(i for i in rows if i > at)
    vla = panels[at + 1 : end]
    assert [p["title"] for p in vla] == [p.title for p in VLA]
    assert [p["fieldConfig"]["defaults"]["unit"] for p in vla] == [
        "hertz", "s", "percentunit", "short"
    ]  # fmt: skip
    dashed = {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
    (target,) = vla[0]["fieldConfig"]["overrides"]
    assert target["matcher"] == {"id": "byRegexp", "options": ".* target per robot$"}
    assert dashed in target["properties"]
    (deadline,) = vla[1]["fieldConfig"]["overrides"]
    assert deadline["matcher"] == {"id": "byRegexp", "options": ".* deadline$"}
    assert dashed in deadline["properties"]
    assert vla[2]["fieldConfig"]["overrides"] == vla[3]["fieldConfig"]["overrides"] == []
    # Each override picks its own line and no other: Grafana matches on the legend's text.
    legends = [q.legend.replace("{{model}}", "arm") for p in VLA for q in p.queries]
    for override, role in ((target, "target"), (deadline, "deadline")):
        hit = [lg for lg in legends if re.fullmatch(override["matcher"]["options"], lg)]
        assert hit == [q.legend.replace("{{model}}", "arm") for p in VLA for q in p.queries
                       if q.role == role]  # fmt: skip
    exprs = [t["expr"] for p in vla for t in p["targets"]]
    assert exprs == [for_grafana(q.expr) for p in VLA for q in p.queries]


class _Lab:
    """The gateway's real series, in simulated time, for a chat deployment and, optionally, two
    VLA ones: ``arm`` (OpenVLA, one action an answer, 5 Hz) and ``hand`` (chunks of 8 actions
    at 25 Hz: an answer's deadline is 8/25 s)."""

    def __init__(self, vla: bool) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.now = 1000.0
        self.metrics.queue_depth.labels("chat").set(7)
        self.metrics.in_flight.labels("chat").set(8)
        if vla:
            self.metrics.control_hz.labels("arm").set(5)
            self.metrics.control_hz.labels("hand").set(25)

    def collect(self) -> Any:
        return samples(self.registry.collect())

    def answer(self, name: str, seconds: float, actions: int = 1) -> None:
        hz = {"arm": 5.0, "hand": 25.0}[name]
        self.metrics.vla(name).observe(seconds, actions, hz)


def _ticks(lab: _Lab, board: Board, seconds: int, late: int = 2, hand_late: int = 1) -> None:
    """Every 5 s: ``arm`` answers 10 frames, ``late`` of them in 0.4 s (past its 0.2 s
    deadline) and the rest in 0.12 s; ``hand`` answers 4 chunks of 8, ``hand_late`` of them in
    0.5 s (past 0.32 s) and the rest in 0.25 s."""
    for _ in range(seconds // 5):
        lab.now += 5
        for k in range(10):
            lab.answer("arm", 0.4 if k < late else 0.12)
        for k in range(4):
            lab.answer("hand", 0.5 if k < hand_late else 0.25, actions=8)
        lab.metrics.queue_depth.labels("arm").set(2)
        lab.metrics.in_flight.labels("arm").set(1)
        board.tick(lab.now)


def _bucket(value: float) -> tuple[float, float]:
    """The gateway's latency bucket that holds ``value``: (lower bound, upper bound]."""
    i = bisect_left(ACTION_BUCKETS, value)
    return (ACTION_BUCKETS[i - 1] if i else 0.0), ACTION_BUCKETS[i]


def _quantile(q: float, fast: float, slow: float, n_fast: int, n_slow: int) -> float:
    """Prometheus's interpolated quantile of n_fast answers of ``fast`` and n_slow of ``slow``
    (in different buckets), from the gateway's bucket bounds."""
    rank = q * (n_fast + n_slow)
    lo, hi = _bucket(fast) if rank <= n_fast else _bucket(slow)
    before, count = (0, n_fast) if rank <= n_fast else (n_fast, n_fast + n_slow)
    return lo + (hi - lo) * (rank - before) / (count - before)


def test_the_board_shows_vla_numbers_for_the_vla_deployments_only() -> None:
    lab = _Lab(vla=True)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 180)
    assert board.errors == {}
    shown = {h.labels.get("model") for h in board.series.values() if h.panel in VLA_IDS}
    assert shown == {"arm", "hand"}  # chat queues too, but serves no actions
    now = board.vla_now()
    assert set(now) == {"arm", "hand"}
    arm = now["arm"]
    assert arm["actions_per_second"] == pytest.approx(10 / 5, rel=1e-3)  # rate over 1m
    assert arm["control_hz"] == 5.0
    assert arm["deadline_seconds"] == 0.2
    assert arm["deadline_miss_ratio"] == pytest.approx(2 / 10, rel=1e-3)
    assert (arm["queued"], arm["in_flight"]) == (2.0, 1.0)
    assert _bucket(0.12) != _bucket(0.4)
    for q in ("p50", "p90", "p99"):
        expected = _quantile(float(q[1:]) / 100, 0.12, 0.4, 8, 2)
        assert arm[f"latency_{q}"] == pytest.approx(expected, rel=1e-3), q
    assert arm["latency_p50"] <= arm["latency_p90"] <= arm["latency_p99"]
    # A chunk of 8 counts 8 actions, and one answer: the late share is of answers.
    hand = now["hand"]
    assert hand["actions_per_second"] == pytest.approx(4 * 8 / 5, rel=1e-3)
    assert hand["control_hz"] == 25.0 and hand["deadline_seconds"] == 0.04
    assert hand["deadline_miss_ratio"] == pytest.approx(1 / 4, rel=1e-3)
    assert "queued" not in hand  # the gateway never queued for it
    site = Site(board, None, list, list, list,  # type: ignore[arg-type]
                lambda: {"url": "", "config": "", "gpu_backend": "sim"})  # fmt: skip
    assert site.status()["vla"] == now


def test_a_vla_deployment_with_no_action_asked_shows_its_target_and_no_late_share() -> None:
    lab = _Lab(vla=True)
    lab.metrics.vla("arm")  # routed, never asked
    board = Board(lab.collect, interval=5, history=600)
    for _ in range(24):
        lab.now += 5
        board.tick(lab.now)
    assert board.errors == {}
    arm = board.vla_now()["arm"]
    # 0 of 0 answers late is no number (NaN, drawn as a gap), not 0%.
    assert arm == {"actions_per_second": 0.0, "control_hz": 5.0, "deadline_seconds": 0.2}
    assert board.alert_docs() == []


def test_a_lab_without_vla_has_no_vla_series() -> None:
    lab = _Lab(vla=False)
    board = Board(lab.collect, interval=5, history=600)
    _ticks_chat_only(lab, board, 120)
    assert board.errors == {}
    assert [h for h in board.series.values() if h.panel in VLA_IDS] == []
    assert board.vla_now() == {}
    assert board.serving_now()["chat"]["requests_queued"] == 7.0


def _ticks_chat_only(lab: _Lab, board: Board, seconds: int) -> None:
    for _ in range(seconds // 5):
        lab.now += 5
        board.tick(lab.now)


def test_the_board_fires_vla_deadline_misses_after_two_minutes_over_five_percent_late() -> None:
    lab = _Lab(vla=True)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 300, late=0, hand_late=0)  # five minutes on time
    assert board.alert_docs() == []
    _ticks(lab, board, 60, late=3, hand_late=0)  # 30% late: over 5% in the 5m window at once
    (pending,) = board.alert_docs()
    assert (pending["name"], pending["state"], pending["labels"]) == (
        "LabVlaDeadlineMisses", "pending", {"model": "arm"}
    )  # fmt: skip
    _ticks(lab, board, 120, late=3, hand_late=0)
    (alert,) = board.alert_docs()
    assert alert["state"] == "firing"
    assert alert["summary"] == (
        "Over 5% of the answers of arm come after their deadline (1/control_hz per action)"
    )
    assert 0.05 < alert["value"] <= 0.3
    _ticks(lab, board, 360, late=0, hand_late=0)  # on time again: the late ones leave the window
    assert board.alert_docs() == []


def test_a_quarter_of_the_chunks_late_fires_though_few_of_the_actions_are() -> None:
    lab = _Lab(vla=True)
    board = Board(lab.collect, interval=5, history=600, for_scale=0)
    _ticks(lab, board, 60, late=0)  # hand: 1 answer of 4 late, 1 miss per 32 actions
    assert [a["labels"] for a in board.alert_docs()] == [{"model": "hand"}]


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


def test_the_daemon_fires_vla_deadline_misses_where_promtool_does() -> None:
    assert _run(MISSES, MISSES.fire, MISSES.eval_time) == [{"model": "arm"}]
    assert _run(MISSES, MISSES.quiet, MISSES.eval_time) == []
    for series, at in MISSES.also_quiet:
        assert _run(MISSES, series, at) == []
    assert len(MISSES.also_quiet) == 2
    # The late-for-ten-minutes case fired while the robots ran.
    stopped, _ = MISSES.also_quiet[1]
    assert _run(MISSES, stopped, "10m") == [{"model": "arm"}]


def test_the_evaluator_divides_a_number_by_a_vector_and_leaves_0_of_0_a_gap() -> None:
    store = Store(retention=600)
    for t in (0.0, 15.0, 30.0, 45.0, 60.0):
        store.add(t, [("labctl_vla_control_hz", {"model": "arm"}, 4.0),
                      ("labctl_vla_deadline_misses_total", {"model": "arm"}, 0.0),
                      ("labctl_vla_action_latency_seconds_count", {"model": "arm"}, 0.0)])  # fmt: skip
    assert evaluate("1 / labctl_vla_control_hz", store, 60.0) == [((("model", "arm"),), 0.25)]
    ((labels, ratio),) = evaluate(  # type: ignore[misc]
        "sum by (model) (rate(labctl_vla_deadline_misses_total[1m])) / "
        "sum by (model) (rate(labctl_vla_action_latency_seconds_count[1m]))",
        store, 60.0,
    )  # fmt: skip
    assert labels == (("model", "arm"),) and math.isnan(ratio)


def test_status_prints_a_vla_line_for_each_vla_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _Lab(vla=True)
    board = Board(lab.collect, interval=5, history=600)
    _ticks(lab, board, 180)
    deployments = [
        {"name": n, "state": "ready", "revision": 1, "model": m, "error": None}
        for n, m in (("chat", "Qwen/Qwen3-0.6B"), ("arm", "openvla/openvla-7b"),
                     ("hand", "moojink/openvla-7b-oft"))
    ]  # fmt: skip
    site = Site(board, None, lambda: deployments, list, list,  # type: ignore[arg-type]
                lambda: {"url": "http://127.0.0.1:8080", "config": "lab.toml",
                         "gpu_backend": "sim"})  # fmt: skip
    monkeypatch.setattr("labctl.cli.lab.call", lambda *args, **kwargs: site.status())
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    vla = [(lines[i - 1].split()[0], line) for i, line in enumerate(lines) if "  vla: " in line]
    arm = board.vla_now()["arm"]
    p50, p99 = round(arm["latency_p50"] * 1000), round(arm["latency_p99"] * 1000)
    assert vla == [
        ("arm", f"  vla: 2.00 actions/s all robots (target 5.00 Hz per robot) · latency p50/p99 "
                f"{p50}/{p99} ms (deadline 200 ms) · 20.0% of answers late"),
        ("hand", "  vla: 6.40 actions/s all robots (target 25.00 Hz per robot) · latency "
                 "p50/p99 " + "/".join(str(round(board.vla_now()["hand"][k] * 1000))
                                       for k in ("latency_p50", "latency_p99"))
                 + " ms (deadline 40 ms) · 25.0% of answers late"),
    ]  # fmt: skip
    assert not any("vla:" in line for line in lines if line.startswith("chat"))
