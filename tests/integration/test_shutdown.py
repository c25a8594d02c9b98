"""A lab stopped while it serves: one bound for the whole shutdown, nothing left behind.

Four twins on four simulated GPUs, streams in flight on each, one twin deaf to SIGTERM:
SIGTERM to the daemon gives requests in flight the drain time, then stops every engine at
once (the deaf one is killed after its stop grace), and the daemon exits within the drain
time plus the longest stop grace (and the few seconds its release wait may take).
"""

from __future__ import annotations

import json
from pathlib import Path
import signal
import threading
import time
import urllib.request

from labctl.gpu.sim import SimBackend, SimMachine
from tests.integration.lab import Lab, engine_pids, wait_for

DRAIN_S, GRACE_S, SLACK_S = 3.0, 2.0, 5.0
#: Slow enough that a long answer streams for a minute; a short one ends within the drain.
TWIN = "{ max_model_len = 4096, time_scale = 1.0, load_gbps = 0 }"


def lab_toml(tmp_path: Path) -> Path:
    parts = [
        f'[lab]\ngpu_backend = "sim"\nsim_gpus = "4xrtx-3090"\n\n[gateway]\n'
        f"drain_timeout = {DRAIN_S}\n"
    ]
    for i in range(4):
        deaf = ", ignore_sigterm = true" if i == 3 else ""
        parts.append(
            f'\n[deployments.m{i}]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\ngpus = [{i}]\n'
            f"stop_grace = {GRACE_S}\nargs = {TWIN[:-2]}{deaf} }}\n"
        )
    path = tmp_path / "lab.toml"
    path.write_text("".join(parts))
    return path


def stream(url: str, model: str, max_tokens: int, out: dict[str, object]) -> None:
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": max_tokens,
                       "stream": True, "ignore_eos": True}).encode()  # fmt: skip
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    events = 0
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            for line in r:
                if line.startswith(b"data: ") and b"[DONE]" not in line:
                    events += 1
                    out["first"] = True
                elif b"[DONE]" in line:
                    out["done"] = True
    except OSError as exc:
        out["error"] = str(exc)
    out["events"] = events


def test_sigterm_with_four_engines_and_streams_in_flight_stops_within_the_bound(
    lab: Lab, tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    for i in range(4):
        d.wait_state(f"m{i}", "ready", timeout=60)
    pids = engine_pids(lab.home)
    assert len(pids) >= 4
    long: list[dict[str, object]] = [{} for _ in range(4)]
    short: dict[str, object] = {}
    threads = [threading.Thread(target=stream, args=(d.url, f"m{i}",
                                                     4000, long[i])) for i in range(4)]  # fmt: skip
    threads.append(threading.Thread(target=stream, args=(d.url, "m0",
                                                         40, short)))  # fmt: skip
    for t in threads:
        t.start()
    wait_for(lambda: all(x.get("first") for x in long) and short.get("first"), 30,
             "every stream to be under way")  # fmt: skip
    begun = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(DRAIN_S + GRACE_S + SLACK_S + 5) == 0
    took = time.monotonic() - begun
    for t in threads:
        t.join(30)
    assert took <= DRAIN_S + GRACE_S + SLACK_S, f"the shutdown took {took:.1f} s"
    assert short.get("done"), short  # it finished within the drain time
    assert all(not x.get("done") for x in long)  # the long ones were cut after the drain
    assert engine_pids(lab.home) == []  # every engine (the deaf one too) and worker gone
    assert all(d.memory_used_bytes == 0 for d in SimBackend(SimMachine(lab.home)).read().devices)
    log = d.output()
    assert "stopping: requests in flight get 3 s" in log
    assert "did not stop in time" not in log  # the deaf one was killed by its own stop
