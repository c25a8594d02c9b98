"""``labctl sim run --explain``: the bottleneck classifier over a simulated run's timeline.

Each interval of the run's :class:`~labctl.sim.offline.Timeline` is classified as the lab
classifies a deployment every tick (``sim/bottleneck.py``), from that interval's figures:
the engine serves (state ``ready``); requests running are the interval's mean batch,
waiting its mean engine queue, KV its mean cache usage; tokens/s are the prompt and
generated tokens computed in it over its length; the API server's busy share is its
processes' mean over it; the roofline is the twin's perf model at the mean batch holding the
mean KV cache in use. Nothing is ever ``admission``: the offline
runner has no gateway, and the requests ``--max-concurrency`` holds back are the client's,
not a queue in front of the engine. Nor ``throttled`` or ``starting``: the twin's GPU runs at
its clocks, and the run starts with the engine ready.

Consecutive intervals of one class make a :class:`Span`; its roofline fraction is the mean of
its intervals' (when each has one) and its evidence is that of its most typical interval,
the one whose fraction is nearest that mean (its first when there are none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labctl.sim.bottleneck import Signals, classify, roofline
from labctl.sim.offline import Timeline
from labctl.sim.perf import PerfModel


@dataclass(frozen=True)
class Span:
    """Consecutive time of a simulated run in one bottleneck class."""

    start: float
    end: float
    cls: str
    evidence: str
    roofline_fraction: float | None

    def to_json(self) -> dict[str, Any]:
        return {"from": self.start, "to": self.end, "class": self.cls,
                "evidence": self.evidence, "roofline_fraction": self.roofline_fraction}  # fmt: skip


def classify_intervals(
    timeline: Timeline, perf: PerfModel, kv_cache_tokens: int
) -> list[tuple[float, float, dict[str, Any]]]:
    """Each interval of ``timeline`` (start, end) with its classification (``classify``'s
    class, evidence and roofline fraction)."""
    out = []
    for k in range(len(timeline.time)):
        start, end = timeline.span(k)
        length = end - start
        batch, kv = timeline.mean_batch[k], timeline.mean_kv_cache_usage[k]
        rate = 1.0 / length if length > 0 else 0.0
        signals = Signals("ready", running=batch, waiting=timeline.mean_waiting[k], kv=kv,
                          prompt_tps=timeline.prompt_tokens[k] * rate,
                          completion_tps=timeline.generation_tokens[k] * rate,
                          roofline=roofline(perf, batch, kv * kv_cache_tokens),
                          batch=batch, api_busy=timeline.api_server_busy[k],
                          intake=timeline.mean_intake[k])  # fmt: skip
        out.append((start, end, classify(signals)))
    return out


def merge(intervals: Sequence[tuple[float, float, dict[str, Any]]]) -> list[Span]:
    """Consecutive intervals of the same class as one :class:`Span` each."""
    runs: list[list[tuple[float, float, dict[str, Any]]]] = []
    for interval in intervals:
        if runs and runs[-1][-1][2]["class"] == interval[2]["class"]:
            runs[-1].append(interval)
        else:
            runs.append([interval])
    spans = []
    for run in runs:
        fractions = [got["roofline_fraction"] for _, _, got in run]
        mean = None
        typical = run[0][2]
        if all(f is not None for f in fractions):
            mean = round(sum(fractions) / len(fractions), 3)
            typical = min(run, key=lambda i: abs(i[2]["roofline_fraction"] - mean))[2]
        spans.append(Span(run[0][0], run[-1][1], typical["class"], typical["evidence"], mean))
    return spans


def explain(timeline: Timeline, perf: PerfModel, kv_cache_tokens: int) -> list[Span]:
    """The run's bottleneck over time: its intervals classified, runs of one class merged."""
    return merge(classify_intervals(timeline, perf, kv_cache_tokens))


def time_per_class(spans: Sequence[Span]) -> dict[str, float]:
    """Seconds of the run in each class, the longest first."""
    total: dict[str, float] = {}
    for span in spans:
        total[span.cls] = total.get(span.cls, 0.0) + span.end - span.start
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))
