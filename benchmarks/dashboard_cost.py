"""What the built-in dashboard costs: page weight and load time with a full hour of history,
and the daemon's CPU while one page is open, side by side with none open.

Two labs on the simulated RTX 3090 with one twin:

1. **Load.** A lab that ticks every 0.25 s with 180 s of history holds 721 points per
   series, as a default lab (5 s, one hour) does after an hour. Once it is full, headless
   Chromium opens the page N times; each load is timed from navigation to every panel
   drawn with its values. The page's bytes are the HTML plus the state document.
2. **CPU.** A lab on the defaults (5 s ticks). The daemon's CPU (user + system, from
   /proc) over the same window with no page open, then with one page open.

Targets: load ≤ 1 s, the daemon's CPU for one open page ≤ 2% of a core.

    python benchmarks/dashboard_cost.py [--window 60] [--loads 5]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
import urllib.request

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.procs import admin, start_lab
from tests.integration.browser import browser

LAB = """
[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[dashboard]
interval = {interval}
history = {history}

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
stop_grace = 5
args = {{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }}
"""
#: Panels that have no value without traffic (latencies, tokens/s) and without a stop.
IDLE = ["dep_tokens", "dep_ttft", "dep_itl", "dep_e2e", "dep_queue_wait", "memory_release"]
DRAWN = f"""() => {{ const p = [...document.querySelectorAll('[data-panel]')];
  return p.length >= 20 && p.every(e => e.dataset.live === '1' || {IDLE}.includes(e.dataset.panel)); }}"""

NOT_DRAWN = f"""() => [...document.querySelectorAll('[data-panel]')]
  .filter(e => e.dataset.live !== '1' && !{IDLE}.includes(e.dataset.panel)).map(e => e.dataset.panel)"""


#: The environment (its LABCTL_HOME, where the admin token is) of each lab started, by URL.
ENV: dict[str, dict[str, str]] = {}


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def lab(home: Path, interval: float, history: float) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "lab.toml"
    config.write_text(LAB.format(interval=interval, history=history))
    env = dict(os.environ, LABCTL_HOME=str(home))
    proc, url = start_lab(config, env)
    ENV[url] = env
    return proc, url


def logged_in(b: Any, url: str) -> Any:
    """A browser context with the lab's session cookie (through a one-time link)."""
    context = b.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    link = admin(url, "/api/login-link", ENV[url], {})
    assert isinstance(link, dict)
    page.goto(link["url"])
    page.close()
    return context


def stop_lab(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def size(url: str, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return len(r.read())


def measure_load(url: str, loads: int) -> tuple[list[float], int, int]:
    times = []
    with browser() as b:
        context = logged_in(b, url)
        for _ in range(loads):
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(url + "/")
            try:
                page.wait_for_function(DRAWN, polling="raf", timeout=10_000)
            except Exception:
                dead = page.evaluate(NOT_DRAWN)
                raise SystemExit(f"the page did not draw these panels in 10 s: {dead}") from None
            times.append(time.perf_counter() - t0)
            points = page.evaluate("S.times.length")
            page.close()
    token = (Path(ENV[url]["LABCTL_HOME"]) / "admin-token").read_text().strip()
    return times, points, size(url + "/") + size(url + "/dashboard/state", token)


def measure_cpu(pid: int, url: str, window: float) -> tuple[float, float]:
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(window)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    with browser() as b:
        page = logged_in(b, url).new_page()
        page.goto(url + "/")
        page.wait_for_function(DRAWN, timeout=20_000)
        t0, c0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(window)
        watched = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        assert page.evaluate("S.times.length") > 1
    return idle, watched


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--window", type=float, default=60.0, help="seconds of CPU measurement each")
    ap.add_argument("--loads", type=int, default=5, help="page loads to time")
    ap.add_argument("--fill", type=float, default=180.0, help="seconds of history to fill first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = lab(Path(tmp) / "full", 0.25, args.fill)
        try:
            print(f"filling {args.fill / 0.25 + 1:.0f} points of history ({args.fill:g} s at 0.25 s)…",
                  flush=True)  # fmt: skip
            time.sleep(args.fill + 5)
            times, points, weight = measure_load(url, args.loads)
        finally:
            stop_lab(proc)
        proc, url = lab(Path(tmp) / "cpu", 5.0, 3600)
        try:
            print(
                f"daemon CPU over {args.window:g} s with no page, then one page open…", flush=True
            )
            idle, watched = measure_cpu(proc.pid, url, args.window)
        finally:
            stop_lab(proc)
    load = statistics.median(times)
    cost = max(0.0, watched - idle)
    print()
    print(f"{'':28}{'measured':>14}{'target':>12}")
    print(f"{'page load (median of ' + str(len(times)) + ')':28}{load:>12.3f} s{'≤ 1 s':>12}"
          f"   (loads: {', '.join(f'{t:.2f}' for t in times)} s; {points} points per series)")  # fmt: skip
    print(
        f"{'page weight':28}{weight / 1024:>11.0f} KiB{'':>12}   (HTML + state with {points} points)"
    )
    print(f"{'daemon CPU, no page':28}{idle * 100:>12.2f} %")
    print(
        f"{'daemon CPU, one page open':28}{watched * 100:>12.2f} %   ratio {watched / idle if idle else float('inf'):.2f}×"
    )
    print(f"{'CPU for the open page':28}{cost * 100:>12.2f} %{'≤ 2 %':>12}   of one core")
    ok = load <= 1.0 and cost <= 0.02
    print(f"\ntargets {'met' if ok else 'NOT met'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
