"""The daemon's own sample store: an hour of its metrics, which the rules and panels read.

Kept apart from the evaluator because the board writes here on every tick while
:mod:`labctl.dashboard.promql` only reads; the layout (running counter-reset offsets and
staleness-marker counts per sample) is what makes the evaluator's ``rate`` cheap.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable
import math

from labctl.dashboard.query import Matcher

Labels = tuple[tuple[str, str], ...]


class Series:
    """One series' samples in time order; a NaN value is a staleness marker.

    ``resets[i]`` is the sum of the values before each counter reset up to sample ``i``,
    so the increase between two samples is a subtraction, and ``marks[i]`` counts the
    markers up to ``i``: ``rate`` and ``increase`` cost two bisections, not a scan.
    """

    __slots__ = ("last", "marks", "marks_base", "resets", "stale", "times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")
        self.resets = array("d")
        self.marks = array("q")
        self.marks_base = 0
        self.last: float | None = None
        self.stale = False

    def append(self, t: float, value: float) -> None:
        if self.times and t <= self.times[-1]:
            return  # samples only move forward (a clock stepped back is ignored)
        if math.isnan(value):
            self.mark_stale(t)
            return
        offset = self.resets[-1] if self.resets else 0.0
        if self.last is not None and value < self.last:
            offset += self.last
        self.times.append(t)
        self.values.append(value)
        self.resets.append(offset)
        self.marks.append(self.marks[-1] if self.marks else self.marks_base)
        self.last, self.stale = value, False

    def mark_stale(self, t: float) -> None:
        if self.stale or not self.times or t <= self.times[-1]:
            return
        self.times.append(t)
        self.values.append(math.nan)
        self.resets.append(self.resets[-1])
        self.marks.append(self.marks[-1] + 1)
        self.stale = True

    def trim(self, keep_from: int) -> None:
        if keep_from <= 0:
            return
        self.marks_base = self.marks[keep_from - 1]
        for arr in (self.times, self.values, self.resets, self.marks):
            del arr[:keep_from]


class Store:
    """Samples of the metrics named in ``names`` (all when ``None``) for ``retention`` seconds."""

    def __init__(self, retention: float = 3900.0, names: set[str] | None = None) -> None:
        self.retention = retention
        self.names = names
        self.series: dict[str, dict[Labels, Series]] = {}

    def add(
        self,
        t: float,
        samples: Iterable[tuple[str, dict[str, str], float]],
        mark_missing: bool = True,
    ) -> None:
        """One scrape at ``t``; with ``mark_missing``, the series it lacks are stale from ``t``
        on, as Prometheus marks them."""
        seen: set[int] = set()
        for name, labels, value in samples:
            if self.names is not None and name not in self.names:
                continue
            by_labels = self.series.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            s = by_labels.get(key)
            if s is None:
                s = by_labels[key] = Series()
            s.append(t, value)
            seen.add(id(s))
        if mark_missing:
            for by_labels in self.series.values():
                for s in by_labels.values():
                    if id(s) not in seen:
                        s.mark_stale(t)
        self._trim(t)

    def _trim(self, now: float) -> None:
        cutoff = now - self.retention
        for name, by_labels in list(self.series.items()):
            for key, s in list(by_labels.items()):
                if s.times and s.times[0] < cutoff:
                    if s.times[-1] < cutoff:
                        del by_labels[key]
                        continue
                    # Trim in bulk (a tenth of the retention at a time), not every sample.
                    if s.times[0] < cutoff - self.retention / 10:
                        s.trim(bisect_right(s.times, cutoff))
            if not by_labels:
                del self.series[name]

    def matching(self, name: str, matchers: tuple[Matcher, ...]) -> Iterable[tuple[Labels, Series]]:
        for key, s in self.series.get(name, {}).items():
            labels = dict(key)
            if all(m.matches(labels.get(m.label, "")) for m in matchers):
                yield key, s
