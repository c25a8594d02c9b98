"""The daemon's own rule evaluation agrees with promtool on every shipped rule, and the
PromQL subset behind it follows Prometheus's semantics."""

from __future__ import annotations

import math

import pytest

from labctl.dashboard import promql
from labctl.dashboard.alerts import ALERTS, Alert, RuleEngine, expand_series, series_labels
from labctl.dashboard.promql import PromQLError, Store, evaluate, metric_names, parse_duration


def _run(alert: Alert, series: dict[str, str], at: str | None = None) -> list[dict[str, str]]:
    store = Store(retention=7200)
    samples: dict[float, list[tuple[str, dict[str, str], float]]] = {}
    for text, values in series.items():
        name, labels = series_labels(text)
        for t, v in expand_series(values):
            samples.setdefault(t, []).append((name, labels, v))
    engine = RuleEngine((alert,))
    end = parse_duration(at or alert.eval_time)
    firing: list[dict[str, str]] = []
    t = 0.0
    while t <= end:
        store.add(t, samples.get(t, []), mark_missing=False)  # promtool's `_` is no sample
        firing = [f.labels for f in engine.evaluate(store, t) if f.state == "firing"]
        t += 60
    return firing


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_the_daemon_fires_each_rule_where_promtool_does_and_not_where_it_does_not(
    alert: Alert,
) -> None:
    assert _run(alert, dict(alert.fire)) == [dict(alert.labels)]
    assert _run(alert, dict(alert.quiet)) == []


def test_an_alert_is_pending_until_it_has_held_for_its_duration() -> None:
    (queueing,) = [a for a in ALERTS if a.name == "LabRequestsQueueing"]
    store, engine = Store(), RuleEngine((queueing,))
    states = []
    for t in range(0, 200, 30):
        store.add(float(t), [("labctl_gateway_queue_depth", {"model": "chat"}, 50.0)])
        states.append([f.state for f in engine.evaluate(store, float(t))])
    assert states[:4] == [["pending"]] * 4 and states[4:] == [["firing"]] * 3  # 2m at t=120
    store.add(210.0, [("labctl_gateway_queue_depth", {"model": "chat"}, 0.0)])
    assert engine.evaluate(store, 210.0) == []
    scaled = RuleEngine((queueing,), for_scale=0)
    assert [f.state for f in scaled.evaluate(store, 180.0)] == ["firing"]


def _store(points: dict[str, list[tuple[float, float]]]) -> Store:
    s = Store()
    for t in sorted({t for pts in points.values() for t, _ in pts}):
        batch = []
        for text, pts in points.items():
            name, labels = series_labels(text)
            batch += [(name, labels, v) for tt, v in pts if tt == t]
        s.add(t, batch)
    return s


def test_rate_and_increase_extrapolate_and_handle_counter_resets_as_prometheus_does() -> None:
    # 15 s scrapes of a counter growing 1/s, reset to 0 halfway.
    pts = [(float(t), float(t if t < 60 else t - 60)) for t in range(0, 121, 15)]
    s = _store({"c_total": pts})
    inc = evaluate("increase(c_total[1m])", s, 120)
    assert isinstance(inc, list)
    ((_, value),) = inc
    assert value == pytest.approx(60.0)  # 45 in the samples, stretched to the window's 60 s
    ((_, r),) = evaluate("rate(c_total[2m])", s, 120)  # type: ignore[misc]
    assert r == pytest.approx(1.0, rel=0.15)


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    s = _store({
        'h_bucket{le="0.1"}': [(0, 0), (60, 10)], 'h_bucket{le="1"}': [(0, 0), (60, 90)],
        'h_bucket{le="+Inf"}': [(0, 0), (60, 100)],
    })  # fmt: skip
    ((labels, q),) = evaluate("histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m])))", s, 60)  # type: ignore[misc]
    assert labels == () and q == pytest.approx(0.1 + 0.9 * (50 - 10) / 80)
    ((_, top),) = evaluate("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", s, 60)  # type: ignore[misc]
    assert top == 1.0  # in the +Inf bucket: the highest finite bound
    empty = _store(
        {'h_bucket{le="1"}': [(0, 0), (60, 0)], 'h_bucket{le="+Inf"}': [(0, 0), (60, 0)]}
    )
    ((_, nan),) = evaluate("histogram_quantile(0.5, rate(h_bucket[5m]))", empty, 60)  # type: ignore[misc]
    assert math.isnan(nan)


def test_vector_matching_and_set_operators() -> None:
    s = _store({
        'used{gpu="0"}': [(0, 90)], 'free{gpu="0"}': [(0, 10)],
        'used{gpu="1"}': [(0, 10)], 'free{gpu="1"}': [(0, 90)],
        'kv{deployment="a",engine="x"}': [(0, 0.99)], 'waiting{deployment="a"}': [(0, 3)],
        'kv{deployment="b",engine="x"}': [(0, 0.99)], 'waiting{deployment="b"}': [(0, 0)],
    })  # fmt: skip
    assert evaluate("used / (used + free) > 0.8", s, 0) == [((("gpu", "0"),), 0.9)]
    hits = evaluate("kv > 0.95 and on (deployment) waiting > 0", s, 0)
    assert [dict(k)["deployment"] for k, _ in hits] == ["a"]  # type: ignore[union-attr]
    either = evaluate('absent_metric > 1 or used{gpu="1"} < 50', s, 0)
    assert [dict(k)["gpu"] for k, _ in either] == ["1"]  # type: ignore[union-attr]
    assert evaluate("sum(used)", s, 0) == [((), 100.0)]
    assert evaluate("max by (gpu) (used) == bool 90", s, 0) == [
        ((("gpu", "0"),), 1.0),
        ((("gpu", "1"),), 0.0),
    ]
    assert evaluate("1 + 2 * 3", s, 0) == 7.0


def test_a_series_older_than_the_lookback_is_not_an_instant_value() -> None:
    s = _store({"g": [(0, 1.0)]})
    assert evaluate("g", s, 299) != [] and evaluate("g", s, 301) == []


def test_a_series_missing_from_a_scrape_is_stale_at_once_and_back_when_it_returns() -> None:
    s = Store()
    s.add(0, [("g", {"a": "1"}, 1.0), ("g", {"a": "2"}, 2.0)])
    s.add(5, [("g", {"a": "1"}, 1.0)])
    assert [dict(k)["a"] for k, _ in evaluate("g", s, 5)] == ["1"]  # type: ignore[union-attr]
    s.add(10, [("g", {"a": "1"}, 1.0), ("g", {"a": "2"}, 3.0)])
    assert sorted(v for _, v in evaluate("g", s, 10)) == [1.0, 3.0]  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["rate(x)", "sum(x", "x{a=1}", "x > > 1", "rate(x[5q])"])
def test_expressions_outside_the_subset_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(PromQLError):
        evaluate(bad, Store(), 0)


def test_every_shipped_rule_parses_and_names_its_metrics() -> None:
    for alert in ALERTS:
        assert metric_names(alert.expr), alert.name


def test_the_store_keeps_only_its_retention() -> None:
    s = Store(retention=100)
    for t in range(0, 1000, 5):
        s.add(float(t), [("g", {}, float(t))])
    times = s.series["g"][()].times
    assert times[-1] == 995 and times[0] >= 995 - 100 - 10


def test_offset_looks_back_and_unless_keeps_only_new_series() -> None:
    s = Store()
    s.add(0, [("c_total", {"xid": "13"}, 1.0)])
    s.add(600, [("c_total", {"xid": "13"}, 1.0), ("c_total", {"xid": "79"}, 1.0)])
    new = evaluate("c_total > 0 unless c_total offset 10m", s, 600)
    assert [dict(k)["xid"] for k, _ in new] == ["79"]  # type: ignore[union-attr]


def test_promtool_series_notation_expands_as_promtool_does() -> None:
    assert expand_series("0+1x2") == [(0, 0), (60, 1), (120, 2)]
    assert expand_series("_x2 5 _ 6") == [(120, 5), (240, 6)]
    stale = expand_series("1 stale 2")
    assert stale[0] == (0, 1) and math.isnan(stale[1][1]) and stale[2] == (120, 2)
    assert series_labels('a_total{gpu="0",xid="79"}') == ("a_total", {"gpu": "0", "xid": "79"})


def test_one_to_one_matching_keeps_prometheus_result_labels_and_refuses_many_to_many() -> None:
    s = _store({
        'a{x="1",y="p"}': [(0, 5)], 'b{x="1",z="q"}': [(0, 1)],
        'c{x="1",y="p"}': [(0, 5)], 'c{x="1",y="r"}': [(0, 6)],
    })  # fmt: skip
    assert evaluate("a > on (x) b", s, 0) == [((("x", "1"),), 5.0)]
    assert evaluate("a - ignoring (y, z) b", s, 0) == [((("x", "1"),), 4.0)]
    with pytest.raises(PromQLError, match="many-to-many"):
        evaluate("a > on (x) c", s, 0)
    with pytest.raises(PromQLError, match="multiple matches"):
        evaluate("c > on (x) b", s, 0)


def test_the_store_ignores_samples_that_go_back_in_time_and_keeps_old_staleness() -> None:
    s = Store()
    s.add(100, [("g", {}, 1.0)])
    s.add(50, [("g", {}, 9.0)])  # a clock stepped back
    s.add(105, [])  # missing: a staleness marker
    s.add(110, [("g", {}, 2.0)])
    assert evaluate("g", s, 110) == [((("__name__", "g"),), 2.0)]
    assert evaluate("g offset 5s", s, 110) == []  # the marker at 105 is still there
    assert evaluate("max_over_time(g[1m])", s, 110) == [((), 2.0)]


def test_histogram_quantile_of_nan_counts_is_nan_not_an_exception() -> None:
    s = _store({'h_bucket{le="1"}': [(0, math.nan)], 'h_bucket{le="+Inf"}': [(0, math.nan)]})
    assert evaluate("histogram_quantile(0.5, h_bucket)", s, 0) == []  # NaN samples are markers
    assert math.isnan(promql._quantile(0.5, [(1.0, math.nan), (math.inf, math.nan)]))
