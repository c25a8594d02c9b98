"""The engine runtime with real process trees: sessions, group stops, orphans, logs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
import sys
import textwrap

import pytest

from labctl.errors import EngineError
from labctl.gpu.procs import read_stat
from labctl.runtime.process import Backoff, EngineProcess, RotatingLog, startup_budget


def script(body: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(body)]


async def until(predicate: Callable[[], object], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


def gone(pid: int) -> bool:
    st = read_stat(pid)
    return st is None or not st.alive


def test_engine_output_is_logged_and_watched_and_sigterm_stops_it(tmp_path: Path) -> None:
    lines: list[str] = []

    async def go() -> None:
        engine = EngineProcess(
            script("""
                import time
                print("INFO Starting to load model m...", flush=True)
                print("INFO Application startup complete.", flush=True)
                time.sleep(60)
            """),
            tmp_path / "logs" / "engine.log",
            on_line=lines.append,
        )
        pid = await engine.start()
        st = read_stat(pid)
        assert st is not None and st.session == pid  # a session of its own
        await until(lambda: len(lines) == 2)
        assert engine.silent_for() < 5
        report = await engine.stop(grace=5)
        assert report.graceful and report.exit_code == -15 and report.orphans_killed == ()
        assert gone(pid)

    asyncio.run(go())
    assert lines == ["INFO Starting to load model m...", "INFO Application startup complete."]
    log = (tmp_path / "logs" / "engine.log").read_text()
    assert (
        "Application startup complete." in log and "--- labctl: stopped (exit -15, SIGTERM)" in log
    )


def test_an_engine_that_ignores_sigterm_is_killed_with_its_group(tmp_path: Path) -> None:
    async def go() -> None:
        engine = EngineProcess(
            script("""
                import os, signal, time
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                if os.fork() == 0:  # a worker in the same group, also deaf to SIGTERM
                    time.sleep(60)
                    os._exit(0)
                print("ready", flush=True)
                time.sleep(60)
            """),
            tmp_path / "engine.log",
        )
        await engine.start()
        await until(lambda: engine.silent_for() > 0 and engine.track())
        (worker,) = [st.pid for st in engine.track()]
        report = await engine.stop(grace=0.5)
        assert not report.graceful and report.exit_code == -9
        assert gone(worker)

    asyncio.run(go())


def test_a_worker_that_left_the_session_is_found_and_killed_as_an_orphan(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"

    async def go() -> None:
        engine = EngineProcess(
            script(f"""
                import os, time
                child = os.fork()
                if child == 0:
                    os.setsid()  # out of the engine's session and group
                    open({str(pid_file)!r}, "w").write(str(os.getpid()))
                    time.sleep(60)
                    os._exit(0)
                time.sleep(60)
            """),
            tmp_path / "engine.log",
        )
        await engine.start()
        await until(lambda: pid_file.exists() and pid_file.read_text())
        worker = int(pid_file.read_text())
        assert worker in [st.pid for st in engine.track()]  # still the engine's child
        report = await engine.stop(grace=5)
        assert report.graceful  # SIGTERM worked; the pipe the worker kept open did not hold it up
        assert report.orphans_killed == (worker,)
        assert gone(worker)

    asyncio.run(go())


def test_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    async def go() -> None:
        engine = EngineProcess(["/nonexistent/vllm", "serve"], tmp_path / "e.log")
        with pytest.raises(EngineError, match="cannot start '/nonexistent/vllm'"):
            await engine.start()

    asyncio.run(go())
    assert "cannot start" in (tmp_path / "e.log").read_text()


def test_logs_rotate_by_size_and_keep_a_bounded_number(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "e.log", max_bytes=100, keep=2)
    for i in range(20):
        log.write(f"line {i:02d} {'x' * 30}\n".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["e.log", "e.log.1", "e.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert "line 19" in (tmp_path / "e.log").read_text()


def test_restart_backoff_doubles_and_resets_after_a_stable_run() -> None:
    b = Backoff(first=1, cap=8, stable=300)
    assert [b.next_delay(5) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.next_delay(400) == 1
    assert startup_budget(16 * 10**9) == pytest.approx(4 * 60 + 2 * 64)
    assert startup_budget(16 * 10**9, 2, 1e9) == pytest.approx(2 * 60 + 2 * 16)


def test_stopping_twice_is_safe(tmp_path: Path) -> None:
    async def go() -> None:
        engine = EngineProcess(script("import time; time.sleep(60)"), tmp_path / "e.log")
        await engine.start()
        first = await engine.stop(grace=2)
        assert await engine.stop(grace=2) == first

    asyncio.run(go())
