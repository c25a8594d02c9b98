"""The dashboard's site served from a test's own board, for browser tests of its groups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
import contextlib
import os
from pathlib import Path
import re
import threading
from typing import Any

from aiohttp import web

from labctl.dashboard.board import Board
from labctl.dashboard.feed import Feed, run_ticks
from labctl.dashboard.site import Site
from labctl.gateway.metrics import GatewayMetrics
from tests.integration.lab import free_port


def chat_traffic(metrics: GatewayMetrics, tick: int) -> None:
    """Five seconds of a chat deployment's gateway series (requests queue at it too, but it
    is no speech or robot deployment)."""
    metrics.queue_depth.labels("chat").set(3)
    metrics.in_flight.labels("chat").set(8)
    bound = metrics.bound("chat")
    for i in range(10):
        bound.ttft.observe(0.08 + 0.01 * ((tick + i) % 7))
        bound.duration.observe(1.5 + 0.1 * ((tick + i) % 5))
        bound.tokens["completion"].inc(40)


@contextlib.contextmanager
def serve(board: Board, deployments: Sequence[dict[str, Any]]) -> Iterator[str]:
    """The dashboard's site for ``board`` on a loopback port, ticking live as the daemon's."""
    port = free_port()
    started = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    listed = list(deployments)

    async def main() -> None:
        stop = asyncio.Event()
        site = Site(board, Feed(100, end_when_full=True, stopping=stop),
                    lambda: listed, list, list,
                    lambda: {"url": f"http://127.0.0.1:{port}", "config": "lab.toml",
                             "gpu_backend": "sim"})  # fmt: skip
        app = web.Application()
        site.add_routes(app.router)
        # An open event stream waits for its next tick: shut down without waiting for it.
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ticks = asyncio.create_task(run_ticks(board, site.pages, lambda: listed, print))
        running.append((asyncio.get_running_loop(), stop))
        started.set()
        await stop.wait()
        ticks.cancel()
        await runner.cleanup()

    # asyncio.run cancels and awaits what is left (the streams' handlers) before it closes.
    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the dashboard's site did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop, stop = running[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "the dashboard's site did not stop"


def number(text: str) -> float:
    """A stat as the page writes it (``12.3/s``, ``5.00 Hz``, ``180 ms``, ``1.20 s``,
    ``7.7×``, ``31.5%``, ``1.2k``)."""
    m = re.fullmatch(r"(-?[\d.]+)\s*(k|ms|s|/s|Hz|%|×)?", text.strip())
    assert m, f"not a number: {text!r}"
    return float(m.group(1)) * {"k": 1000.0, "ms": 0.001, "%": 0.01}.get(m.group(2) or "", 1.0)


def shots(tmp_path: Path) -> Callable[..., None]:
    """A screenshot into ``tmp_path``, and where LABCTL_SCREENSHOTS says if it is set."""
    where = os.environ.get("LABCTL_SCREENSHOTS")

    def shoot(target: Any, name: str, **options: Any) -> None:
        for folder in (tmp_path, Path(where) if where else None):
            if folder is not None:
                target.screenshot(path=str(folder / name), **options)

    return shoot
