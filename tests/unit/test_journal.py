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
