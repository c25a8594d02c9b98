"""The dashboard's panels, its Grafana export and the daemon's board, without processes."""

from __future__ import annotations

import json
import re

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
import pytest

from labctl.config import load_config
from labctl.dashboard.board import Board
from labctl.dashboard.grafana import dashboard_json, expressions, provisioning
from labctl.dashboard.page import page_html
from labctl.dashboard.panels import PANELS, daemon_queries, for_daemon, for_grafana
from labctl.dashboard.promql import metric_names, parse
from labctl.errors import ConfigError


def test_each_panel_query_is_written_once_for_grafana_and_the_daemon() -> None:
    expr = 'rate(x_total{kind="a",@model}[@w])'
    assert for_grafana(expr) == (
        'rate(x_total{kind="a",instance=~"$instance",model=~"$deployment"}[$__rate_interval])'
    )
    assert for_daemon(expr) == 'rate(x_total{kind="a"}[1m])'
    assert for_daemon("DCGM_FI_DEV_GPU_UTIL{@gpu}") == "DCGM_FI_DEV_GPU_UTIL"
    for _, _, daemon_expr in daemon_queries():
        parse(daemon_expr)  # the daemon can evaluate every query the page shows


def test_the_grafana_dashboard_round_trips_through_the_sdk_model_with_its_variables() -> None:
    doc = dashboard_json()
    again = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    assert again["uid"] == doc["uid"] == "labctl-lab"
    assert doc["schemaVersion"] >= 39
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "instance", "gpu", "deployment"]
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["GPUs", "Deployments", "Speech", "VLA", "Deploys and restarts", "Alerts"]
    titles = {p["title"] for p in doc["panels"] if p["type"] != "row"}
    assert titles == {p.title for p in PANELS}
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    exprs = expressions(doc)
    assert len(exprs) == sum(len(p.queries) for p in PANELS) + 3
    for expr in exprs:
        assert "@" not in expr, expr
        if "[" in expr:
            assert "[$__rate_interval]" in expr or "[1h]" in expr, expr
    datasource = provisioning("http://prom:9090", "/var/lib/grafana/labctl")["datasource.yml"]
    assert "url: http://prom:9090" in datasource and "type: prometheus" in datasource


def test_the_page_is_one_self_contained_file() -> None:
    html = page_html()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "EventSource(" in html and "dashboard/state" in html
    for panel in PANELS:
        if not panel.grafana_only:
            assert f'"{panel.id}"' in html, f"the page does not draw {panel.id}"


class _Clock:
    def __init__(self) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def __call__(self) -> list[tuple[str, dict[str, str], float]]:
        return list(self.samples)


def test_the_board_keeps_each_series_history_and_fires_rules_on_its_own_samples() -> None:
    feed = _Clock()
    board = Board(feed, interval=5, history=60)
    feed.samples = [("labctl_gateway_queue_depth", {"model": "chat"}, 50.0),
                    ("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0"}, 30.0)]  # fmt: skip
    first = board.tick(1000.0)
    assert any(k.startswith("dep_requests|queued|") for k in first["series"])
    assert first["alerts"][0]["name"] == "LabRequestsQueueing"
    assert first["alerts"][0]["state"] == "pending"
    for i in range(1, 40):
        board.tick(1000.0 + 5 * i)
    snap = board.snapshot()
    assert len(snap["times"]) == 13  # an hour's worth here is 60 s at 5 s
    (util,) = [s for s in snap["series"].values() if s["panel"] == "gpu_util"]
    assert util["values"] == [30.0] * 13 and util["legend"] == "GPU 0"
    assert [a["state"] for a in snap["alerts"]] == ["firing"]
    assert board.gpu_now(0)["util_percent"] == 30.0  # what `labctl status` shows
    assert board.serving_now() == {"chat": {"requests_queued": 50.0}}
    assert snap["alerts"][0]["summary"] == "Requests for chat are queueing"
    feed.samples = []
    for i in range(40, 60):
        board.tick(1000.0 + 5 * i)
    assert board.series == {}  # gone for the whole window: dropped
    assert metric_names("labctl_gateway_queue_depth > 10") <= board.store.names  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dashboard]\ninterval = 0\n", "dashboard.interval = 0: give a positive number"),
        ("[dashboard]\nhistory = 1\ninterval = 5\n", "shorter than dashboard.interval"),
        ("[dashboard]\nalert_for_scale = -1\n", "give a number of at least 0"),
        ("[dashboard]\ncolour = 1\n", "dashboard.colour is not a setting"),
    ],
)
def test_bad_dashboard_settings_name_the_key_and_the_fix(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)
