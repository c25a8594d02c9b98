"""Live counters of a run: the runner writes them, a display reads them.

The runner updates a :class:`Progress` as requests finish; the CLI's live view
reads it from the same event loop, so no locking is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time

from labctl.sim.report import percentile

#: The error of a request that Ctrl-C cut short: counted as ``cut``, never as ``failed``.
INTERRUPTED = "interrupted"


@dataclass
class Progress:
    """Live counters for a display; read from the same event loop."""

    total: int = 0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    #: In flight when the run was interrupted: neither completed nor failed.
    cut: int = 0
    finished_at: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    phase: str = "starting"
    started: float = 0.0
    #: Robot runs (``--backend openvla``): their count, answers' latencies, deadline misses.
    robots: int = 0
    latencies: list[float] = field(default_factory=list)
    misses: int = 0

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed - self.failed - self.cut

    def rate(self, window: float = 5.0) -> float:
        """Completions per second over the last ``window`` seconds (or since the start)."""
        now = time.perf_counter()
        window = min(window, now - self.started) if self.started else window
        recent = [t for t in self.finished_at[-2000:] if t >= now - window]
        return len(recent) / window if window > 0 else 0.0

    def median_ttft_ms(self) -> float | None:
        recent = self.ttfts[-500:]
        return percentile(recent, 50) * 1000 if recent else None

    def median_latency_ms(self) -> float | None:
        recent = self.latencies[-500:]
        return percentile(recent, 50) * 1000 if recent else None
