"""The lab's recorder: alert transitions and serving rollups into a real journal, from a
real board fed made-up samples; the report's helpers."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from aiohttp import web
import pytest

from labctl.config import load_config
from labctl.config.model import default_config
from labctl.daemon.record import (
    MAX_SINCE_S,
    Recorder,
    _since,
    default_text,
    rollup_every,
    serving_figures,
    tail,
)
from labctl.dashboard.board import Board, Sample
from labctl.dashboard.feed import Feed, run_ticks
from labctl.deploy.journal import Journal


class Lab:
    """Samples a board reads: a queue of ``depth`` for chat, and its engine's figures."""

    def __init__(self) -> None:
        self.depth = 0.0

    def __call__(self) -> list[Sample]:
        dep = {"deployment": "chat"}
        return [
            ("labctl_gateway_queue_depth", {"model": "chat"}, self.depth),
            ("labctl_engine_requests_running", dep, 3.0),
            ("labctl_engine_kv_cache_usage_ratio", dep, 0.25),
            ("labctl_gpu_deployment_memory_bytes", {"gpu": "0", **dep}, 2.0e9),
            ("labctl_gpu_deployment_memory_bytes", {"gpu": "1", **dep}, 1.0e9),
        ]


def _setup(tmp_path: Path, interval: float = 0.5) -> tuple[Lab, Board, Journal, Recorder]:
    lab = Lab()
    board = Board(lab, interval=interval, history=60, for_scale=0)
    journal = Journal(tmp_path / "j.db")
    return lab, board, journal, Recorder(journal, board, started=1000.0)


def test_recorder_records_an_alert_once_when_it_fires_and_ends_it_when_it_stops(
    tmp_path: Path,
) -> None:
    lab, board, journal, rec = _setup(tmp_path)
    t = 1000.0
    for _ in range(3):
        t += 0.5
        rec.on_tick(board.tick(t))
    assert journal.alerts_since(0.0) == []
    lab.depth = 50.0
    for _ in range(3):  # firing on every tick: one row
        t += 0.5
        rec.on_tick(board.tick(t))
    (alert,) = journal.alerts_since(0.0)
    assert (alert["name"], alert["severity"], alert["labels"], alert["ended"]) == (
        "LabRequestsQueueing", "warning", {"model": "chat"}, None)  # fmt: skip
    assert alert["started"] == 1002.0 and alert["summary"] == "Requests for chat are queueing"
    lab.depth = 0.0
    t += 0.5
    rec.on_tick(board.tick(t))
    (alert,) = journal.alerts_since(0.0)
    assert alert["ended"] == t
    lab.depth = 50.0  # firing again: a new row
    t += 0.5
    rec.on_tick(board.tick(t))
    assert [a["ended"] for a in journal.alerts_since(0.0)] == [t - 0.5, None]
    rec.close(t + 1)  # the daemon stops
    assert [a["ended"] for a in journal.alerts_since(0.0)] == [t - 0.5, t + 1]


def test_recorder_closes_alerts_a_killed_daemon_left_open_at_its_start(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    left = journal.alert_fired("LabEngineDown", "critical", {"deployment": "chat"}, "x", 900.0)
    Recorder(journal, Board(Lab(), interval=5), started=1000.0)
    (alert,) = journal.alerts_since(0.0)
    assert (alert["id"], alert["ended"]) == (left, 1000.0)


def test_recorder_rolls_serving_figures_up_every_minute_or_12_ticks(tmp_path: Path) -> None:
    assert [rollup_every(i) for i in (0.5, 1, 5, 10, 60, 300)] == [12, 12, 12, 6, 1, 1]
    _, board, journal, rec = _setup(tmp_path, interval=10)
    for i in range(13):
        rec.on_tick(board.tick(1000.0 + 10 * i))
    rows = journal.serving_since(0.0)
    assert [r["t"] for r in rows] == [1050.0, 1110.0]  # the 6th and the 12th tick
    figures = rows[0]["figures"]
    assert figures["requests_running"] == 3.0 and figures["kv"] == 0.25
    assert figures["requests_queued"] == 0.0
    assert figures["gpu_memory_bytes"] == 3.0e9  # both of its GPUs


def test_a_rollup_is_the_mean_of_its_ticks_and_keeps_the_peak_of_queues(tmp_path: Path) -> None:
    lab, board, journal, rec = _setup(tmp_path, interval=10)
    for i, depth in enumerate([0, 0, 8, 2, 0, 2]):  # a burst between two rollups still counts
        lab.depth = float(depth)
        rec.on_tick(board.tick(1000.0 + 10 * i))
    (row,) = journal.serving_since(0.0)
    figures = row["figures"]
    assert figures["requests_queued"] == pytest.approx(2.0)
    assert figures["requests_queued_max"] == 8.0
    assert figures["kv"] == 0.25 and figures["kv_max"] == 0.25
    assert "gpu_memory_bytes_max" not in figures


def test_serving_figures_merge_speech_and_vla_without_latency_by_length() -> None:
    class FakeBoard:
        def serving_now(self) -> dict[str, dict[str, float]]:
            return {"asr": {"requests_queued": 1.0}, "": {"kv": 0.1}}

        def speech_now(self) -> dict[str, dict[str, object]]:
            return {"asr": {"rtfx": 30.0, "latency": {"<=30s": {"p95": 1.0}}}}

        def vla_now(self) -> dict[str, dict[str, float]]:
            return {"robot": {"actions_per_second": 5.0, "latency_p99": float("nan")}}

        def latest(self, panel: str) -> list[tuple[dict[str, str], str, float]]:
            return []

    assert serving_figures(FakeBoard()) == {  # type: ignore[arg-type]
        "asr": {"requests_queued": 1.0, "rtfx": 30.0},
        "robot": {"actions_per_second": 5.0},
    }


def test_default_text_is_the_lab_toml_of_the_embedded_default(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(default_text())
    loaded = load_config(path, check_host=False)
    assert dataclasses.replace(loaded, source="embedded default") == default_config()


def test_tail_reads_the_last_lines_from_the_end_of_a_big_log(tmp_path: Path) -> None:
    log = tmp_path / "chat-r1.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail(log) == [f"line {i}" for i in range(99_960, 100_000)]
    log.write_text("one\ntwo\n")
    assert tail(log) == ["one", "two"]
    assert tail(tmp_path / "missing.log") == []


@pytest.mark.parametrize("raw", ["0", "-5", "nan", "inf", "week", str(MAX_SINCE_S + 1), ""])
def test_report_since_must_be_a_period_in_seconds(raw: str) -> None:
    with pytest.raises(web.HTTPBadRequest) as refused:
        _since(raw)
    assert "give the period in seconds" in str(refused.value.text)


def test_report_since_defaults_to_a_week() -> None:
    assert _since(None) == 7 * 86400 and _since("3600") == 3600.0


def test_run_ticks_tells_on_tick_after_each_tick_and_logs_a_failing_record_once() -> None:
    board = Board(Lab(), interval=0.01)
    seen: list[float] = []
    logged: list[str] = []
    three = asyncio.Event()

    def on_tick(tick: dict[str, Any]) -> None:
        seen.append(tick["t"])
        if len(seen) == 3:
            three.set()
        raise RuntimeError("disk full")

    async def main() -> None:
        pages = Feed(1, end_when_full=True, stopping=asyncio.Event())
        task = asyncio.create_task(run_ticks(board, pages, list, logged.append, on_tick))
        await asyncio.wait_for(three.wait(), 10)
        task.cancel()

    asyncio.run(main())
    assert seen == sorted(seen) and len(board.times) >= 3
    assert logged == ["dashboard: recording a tick failed (RuntimeError: disk full)"]
