"""The deploy watch: a deploy's events (or its polled record) into steps, startup and lines."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from labctl.cli.follow import Watch
from labctl.units import GiB


def ev(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "deployment": "chat", "ticket": "t1", **data}


def test_events_of_its_ticket_become_steps_startup_and_an_outcome() -> None:
    w = Watch("chat", "t1")
    w.event(ev("deploy", phase="queued"))
    w.event(ev("deploy", phase="begin", deploy_id=7, revision=2))
    w.event(ev("step", step="stop", status="begin", time=10.0))
    w.event(ev("startup", phase=None, line="old engine shutting down", loaded_fraction=None))
    w.event(ev("step", step="stop", status="ok", time=10.5))
    w.event(ev("step", step="start", status="begin", time=11.0))
    w.event({**ev("step", step="start", status="ok", time=99.0), "ticket": "other"})  # not ours
    half = {"loaded_fraction": 0.5, "weight_bytes": 4 * GiB, "loaded_bytes": 2 * GiB}
    w.event(ev("startup", phase=None, line="Loading … 50% Completed", elapsed=3.0, **half))
    assert w.loaded() == "2.00 / 4.00 GiB (50%)"
    frame = Console(width=100, record=True)
    frame.print(w.render())
    shown = frame.export_text()
    assert "#7 chat deploy" in shown and "start" in shown and "2.00 / 4.00 GiB" in shown
    w.event(ev("startup", phase="load_weights", line="Model loading took 4 s", elapsed=4.0,
               loaded_fraction=1.0, weight_bytes=4 * GiB, loaded_bytes=4 * GiB))  # fmt: skip
    w.event(ev("step", step="start", status="ok", time=15.0))
    w.event(ev("deploy", phase="committed", deploy_id=7))
    assert [(s.name, s.outcome, s.duration) for s in w.steps] == [
        ("stop", "ok", 0.5), ("start", "ok", 4.0)
    ]  # fmt: skip
    assert w.outcome == "committed" and w.phases == ["load_weights"]
    lines = "\n".join(w.log)
    assert "old engine" not in lines  # a stopping engine's lines are not startup progress
    assert "engine: 2.00 / 4.00 GiB (50%) at 3.0 s" in lines
    assert "engine: load_weights done at 4.0 s" in lines and lines.endswith("deploy committed")


def test_a_polled_record_fills_in_what_the_stream_missed() -> None:
    w = Watch("chat", "t1")
    w.event(ev("step", step="preflight", status="begin", time=1.0))
    record = {"id": 3, "from_revision": 1, "to_revision": 2, "outcome": "rolled_back",
              "steps": [{"name": "preflight", "outcome": "ok", "duration_s": 0.01},
                        {"name": "start", "outcome": "failed", "duration_s": 2.0,
                         "error": "exited with code 1 during startup"},
                        {"name": "rollback", "outcome": "ok", "duration_s": 1.5}]}  # fmt: skip
    w.absorb({"state": "done", "record": record})
    assert [(s.name, s.outcome) for s in w.steps] == [
        ("preflight", "ok"), ("start", "failed"), ("rollback", "ok")
    ]  # fmt: skip
    assert w.outcome == "rolled_back" and w.title() == "#3 chat deploy r1 → r2"
    assert any(line.endswith("start failed (2.000 s): exited with code 1 during startup")
               for line in w.log)  # fmt: skip
