"""The deploy journal on a real SQLite file."""

from __future__ import annotations

from pathlib import Path
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from labctl.deploy.journal import MIGRATIONS, Journal
from labctl.errors import DeployError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_journal_uses_wal_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.db"
    j = Journal(path)
    assert j.journal_mode == "wal" and j.schema_version == len(MIGRATIONS)
    assert j.add_revision("chat", {"model": "a"}) == 1
    j.close()
    again = Journal(path)  # reopening applies nothing twice and keeps the data
    assert again.schema_version == len(MIGRATIONS)
    assert again.add_revision("chat", {"model": "b"}) == 2
    assert again.add_revision("asr", {"model": "w"}) == 1
    assert again.revision("chat", 1) == {"model": "a"}
    with pytest.raises(DeployError, match="chat has no revision 9"):
        again.revision("chat", 9)


def test_journal_records_steps_with_durations_failures_and_memory(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", clock=Clock())
    d = j.begin("chat", "deploy", 1, 2)
    with j.step(d, "stop", pid=42) as step:
        step.freed_bytes = 20 * 2**30
    with pytest.raises(RuntimeError, match="boom"), j.step(d, "start"):
        raise RuntimeError("boom")
    j.finish(d, "rolled_back", "start failed: boom")
    (deploy,) = j.history("chat")
    assert deploy["outcome"] == "rolled_back" and deploy["duration_s"] > 0
    stop, start = deploy["steps"]
    assert (stop["name"], stop["outcome"], stop["freed_bytes"]) == ("stop", "ok", 20 * 2**30)
    assert stop["detail"] == {"pid": 42} and stop["duration_s"] == pytest.approx(0.5)
    assert (start["outcome"], start["error"]) == ("failed", "boom")
    with pytest.raises(ValueError, match="outcome"):
        j.finish(d, "done")


def test_an_interrupted_deploy_is_found_unfinished_after_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from labctl.deploy.journal import Journal
        j = Journal(Path({str(path)!r}))
        d = j.begin("chat", "deploy", 1, 2)
        with j.step(d, "drain"):
            pass
        with j.step(d, "stop"):
            os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies in the middle of a step
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert proc.returncode == -9
    reopened = Journal(path)
    (pending,) = reopened.unfinished()
    assert [(s["name"], s["outcome"]) for s in pending["steps"]] == [
        ("drain", "ok"),
        ("stop", None),
    ]
    reopened.finish(pending["id"], "interrupted", "the daemon stopped during the deploy")
    assert reopened.unfinished() == []


def test_current_engine_is_kept_per_deployment(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.set_current("chat", 1, 100, 5.0, "http://127.0.0.1:9000")
    j.set_current("chat", 2, 200, 6.0, "http://127.0.0.1:9001")
    (cur,) = j.current()
    assert (cur.revision, cur.engine_pid, cur.url) == (2, 200, "http://127.0.0.1:9001")
    j.clear_current("chat")
    assert j.current() == []


def test_a_newer_or_corrupt_journal_is_refused_with_the_remedy(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(DeployError, match="newer than this labctl knows"):
        Journal(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DeployError, match="move it aside"):
        Journal(junk)


def test_journal_migrates_a_version_1_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO revisions VALUES ('chat', 1, '{\"model\": \"a\"}', 5.0)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    j = Journal(path)
    assert j.schema_version == len(MIGRATIONS) >= 2
    assert j.revision("chat", 1) == {"model": "a"}  # the rows of version 1 are kept
    assert j.add_bench(10.0, "chat", {"completed": 3}) == 1


def test_journal_keeps_alerts_serving_figures_and_bench_results(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", clock=Clock())
    old = j.alert_fired("LabEngineDown", "critical", {"deployment": "chat"}, "down", 100.0)
    j.alert_ended(old, 200.0)
    j.alert_ended(old, 900.0)  # an ended alert keeps its end
    now = j.alert_fired("LabRequestsQueueing", "warning", {"model": "chat"}, "queueing", 300.0)
    assert [a["id"] for a in j.alerts_since(150.0)] == [old, now]
    assert [a["id"] for a in j.alerts_since(250.0)] == [now]  # still firing: in any period
    (firing,) = j.alerts_since(1e9)
    assert (firing["labels"], firing["ended"], firing["summary"]) == ({"model": "chat"}, None,
                                                                      "queueing")  # fmt: skip
    assert j.close_open_alerts(400.0) == 1 and j.alerts_since(500.0) == []
    j.add_serving(10.0, {"chat": {"kv": 0.5}, "asr": {"rtfx": 20.0}})
    j.add_serving(70.0, {"chat": {"kv": 0.25}})
    assert j.serving_since(10.0) == [
        {"t": 10.0, "deployment": "chat", "figures": {"kv": 0.5}},
        {"t": 10.0, "deployment": "asr", "figures": {"rtfx": 20.0}},
        {"t": 70.0, "deployment": "chat", "figures": {"kv": 0.25}},
    ]
    assert len(j.serving_since(11.0)) == 1 and len(j.serving_since(0.0, limit=2)) == 2
    first = j.add_bench(20.0, "chat", {"completed": 20, "model_id": "chat"})
    j.add_bench(30.0, "", {"runs": []})
    assert [(b["id"], b["model"], b["result"]) for b in j.bench_since(25.0)] == [
        (first + 1, "", {"runs": []})
    ]
    assert [b["id"] for b in j.bench_since(0.0)] == [first, first + 1]


def test_journal_history_since_and_the_revisions_deploys_name(tmp_path: Path) -> None:
    clock = Clock()
    j = Journal(tmp_path / "j.db", clock=clock)
    j.add_revision("chat", {"model": "a"})
    j.add_revision("chat", {"model": "b"})
    first = j.begin("chat", "deploy", None, 1)
    j.finish(first, "committed")
    start = clock.now
    second = j.begin("chat", "deploy", 1, 2)
    assert [d["id"] for d in j.history_since(0.0)] == [second, first]  # newest first
    assert [d["id"] for d in j.history_since(start)] == [second]
    pairs = [("chat", 1), ("chat", 2), ("chat", None), ("chat", 9), ("gone", 1)]
    assert j.revisions_of(pairs) == {"chat": {"1": {"model": "a"}, "2": {"model": "b"}}}


def test_journal_prunes_report_rows_older_than_35_days_at_open_and_hourly(
    tmp_path: Path,
) -> None:
    day = 86400.0
    now = [100 * day]
    j = Journal(tmp_path / "j.db", clock=lambda: now[0])
    ended = j.alert_fired("A", "warning", {}, "a", now[0] - 40 * day)
    j.alert_ended(ended, now[0] - 36 * day)
    j.alert_fired("B", "warning", {}, "b", now[0] - 40 * day)  # still firing: kept
    j.add_serving(now[0] - 36 * day, {"chat": {"kv": 0.1}})
    j.add_serving(now[0] - 34 * day, {"chat": {"kv": 0.2}})
    j.add_bench(now[0] - 36 * day, "chat", {"completed": 1})
    j.close()
    j = Journal(tmp_path / "j.db", clock=lambda: now[0])  # at open
    assert [a["name"] for a in j.alerts_since(0.0)] == ["B"]
    assert [s["figures"] for s in j.serving_since(0.0)] == [{"kv": 0.2}]
    assert j.bench_since(0.0) == []
    j.add_serving(now[0] + 1800, {"chat": {"kv": 0.3}})  # within the hour: nothing pruned
    assert len(j.serving_since(0.0)) == 2
    j.add_serving(now[0] + 2 * day, {"chat": {"kv": 0.4}})  # an hour on: pruned as it adds
    assert [s["figures"] for s in j.serving_since(0.0)] == [{"kv": 0.3}, {"kv": 0.4}]
