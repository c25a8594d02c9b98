"""The client checking itself, so a run can say when its latencies measure the client.

:class:`TimedSelector` notes how long each event-loop iteration with I/O stayed
busy; the report compares that (or, with kernel receive timestamps, how far
events that shared a read may be off) with :data:`CLIENT_LAG_LIMIT_S` at p99
and marks the run ``client_limited`` beyond it. :func:`raise_fd_limit` warns
when the open-files limit, not the server, would cap the concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time

from labctl.sim.report import percentile

CLIENT_LAG_LIMIT_S = 0.001


class TimedSelector(selectors.DefaultSelector):
    """The event loop's selector, noting how long each iteration that had I/O stayed busy."""

    def __init__(self) -> None:
        super().__init__()
        self.busy: list[float] = []
        self._back: float | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        now = time.perf_counter()
        if self._back is not None:
            self.busy.append(now - self._back)
            self._back = None
        ready = super().select(timeout)
        if ready:
            self._back = time.perf_counter()
        return ready


def new_loop() -> tuple[asyncio.AbstractEventLoop, TimedSelector]:
    selector = TimedSelector()
    return asyncio.SelectorEventLoop(selector), selector


def raise_fd_limit(connections: int, warnings: list[str]) -> None:
    """Lift the soft open-files limit (often 1024) to what ``connections`` sockets need."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < want:
        warnings.append(
            f"only {soft} open files are allowed (ulimit -n) for {connections} connections: "
            "raise the limit or lower the concurrency"
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _p99_with_zeros(bounds: list[float], total: int) -> float:
    """p99 over ``total`` events of which those not in ``bounds`` are exact (0)."""
    zeros = max(0, total - len(bounds))
    return percentile([0.0] * zeros + bounds, 99) if total else 0.0
