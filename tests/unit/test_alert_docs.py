"""The alert documents the page, `labctl status` and the event stream show: a pending alert is
there as pending, with when it will fire, before it fires."""

from __future__ import annotations

import time

from click.testing import CliRunner
import pytest

from labctl.cli.main import cli
from labctl.dashboard.alerts import ALERTS
from labctl.dashboard.board import Board
from labctl.dashboard.promql import parse_duration

QUEUEING = next(a for a in ALERTS if a.name == "LabRequestsQueueing")
HOLD = parse_duration(QUEUEING.for_)


def _queueing_board(for_scale: float = 1.0) -> Board:
    def samples() -> list[tuple[str, dict[str, str], float]]:
        return [("labctl_gateway_queue_depth", {"model": "chat"}, 50.0)]

    return Board(samples, interval=5, history=600, for_scale=for_scale)


def test_alert_docs_show_a_pending_alert_as_pending_until_it_fires() -> None:
    board = _queueing_board()
    tick = board.tick(1000.0)
    (pending,) = tick["alerts"]
    assert (pending["name"], pending["state"]) == ("LabRequestsQueueing", "pending")
    assert (pending["since"], pending["fires_at"]) == (1000.0, 1000.0 + HOLD)
    assert board.snapshot()["alerts"] == [pending] == board.alert_docs()
    assert board.firing() == []
    t = 1000.0
    while t < 1000.0 + HOLD - 5:
        t += 5
        assert [a["state"] for a in board.tick(t)["alerts"]] == ["pending"]
    (firing,) = board.tick(1000.0 + HOLD)["alerts"]
    assert firing["state"] == "firing" and firing["fires_at"] == 1000.0 + HOLD
    assert [f.alert.name for f in board.firing()] == ["LabRequestsQueueing"]


def test_alert_docs_fire_at_once_with_a_zero_for_scale() -> None:
    (alert,) = _queueing_board(for_scale=0).tick(1000.0)["alerts"]
    assert alert["state"] == "firing" and alert["fires_at"] == alert["since"] == 1000.0


def test_status_shows_a_pending_alert_and_when_it_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    board = _queueing_board()
    board.tick(1000.0)
    doc = {"url": "http://127.0.0.1:8080", "pid": 1, "config": "lab.toml", "gpu_backend": "sim",
           "deployments": [], "gpus": [], "serving": {}, "alerts": board.alert_docs()}  # fmt: skip
    monkeypatch.setattr("labctl.cli.lab.call", lambda *args, **kwargs: doc)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["status"])
    assert result.exit_code == 0, result.stderr
    fires = time.strftime("%H:%M:%S", time.localtime(1000.0 + HOLD))
    assert "alerts: 0 firing, 1 pending" in result.stdout
    assert "PENDING LabRequestsQueueing (warning)" in result.stdout
    assert f"(fires at {fires} if it holds)" in result.stdout, result.stdout
