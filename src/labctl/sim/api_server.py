"""The API server: one process shared by the requests it is taking in and the tokens it
streams out.

vLLM's API server reads each request, renders its chat template, tokenizes and
validates it before the engine sees it, in one process whose event loop
interleaves the requests in hand: with n of them in hand, each moves at 1/n of
the process's speed (processor sharing). A request alone takes its own cost;
a burst of N requests of cost c reaches the engine together, after about N × c,
not one every c, so every request of a burst waits that long for its first
token (the published bursts of 1,000 chat requests show that floor).

The same process turns each engine step's outputs into the clients' streamed chunks
(detokenizing, serializing, writing), one task working through the steps in order and
taking its turn among the requests in hand. The engine does not wait for it: when the
engine makes tokens faster than the process streams them, they reach the clients late,
and while a burst is being taken in, the streams of the requests already running stall.
"""

from __future__ import annotations

import bisect
from collections import deque
import heapq
import math
from typing import Generic, TypeVar

K = TypeVar("K")


class ApiServer(Generic[K]):
    """Processor sharing of one CPU among the requests in hand (each needing its own cost)
    and the output task (one step after another, one share while it has any).

    Time is the caller's clock (simulated or scaled real time); a time before the last one
    given counts as the last one. Keys come back, in time order, when their work is done.
    """

    def __init__(self, now: float = 0.0, periods: bool = False) -> None:
        """``periods``: keep when it had work (for :meth:`busy_between`), one entry per busy
        period; a long-running live server keeps only its total."""
        self.now = now
        self._keep = periods
        #: Service each participant has had since the clock's origin ("virtual time").
        self._served = 0.0
        #: (virtual time at which it is through, arrival order, key) per request in hand.
        self._hand: list[tuple[float, int, K]] = []
        #: (virtual time at which it is streamed, key) per step's outputs, in order.
        self._out: deque[tuple[float, K]] = deque()
        self._count = 0
        #: Seconds the process has had work (taking requests in or streaming).
        self.busy = 0.0
        #: When it had work: the start and end of each busy period, in order, the last one
        #: extended while the work goes on.
        self._starts: list[float] = []
        self._ends: list[float] = []

    def __len__(self) -> int:
        """Requests in hand (being taken in)."""
        return len(self._hand)

    @property
    def streaming(self) -> int:
        """Steps whose outputs are still to be streamed."""
        return len(self._out)

    def _next(self) -> tuple[float, int]:
        """The virtual time of the next piece of work done, and how many share the process."""
        head = min(self._hand[0][0] if self._hand else math.inf,
                   self._out[0][0] if self._out else math.inf)  # fmt: skip
        return head, len(self._hand) + bool(self._out)

    def advance(self, t: float) -> list[tuple[float, K]]:
        """Run to ``t``: the work done by then (requests taken in, steps streamed), each
        with the time it was done."""
        done: list[tuple[float, K]] = []
        t = max(t, self.now)
        while self._hand or self._out:
            head, sharing = self._next()
            at = self.now + max(head - self._served, 0.0) * sharing
            if at > t:
                self._served += (t - self.now) / sharing
                self._work(t)
                break
            self._work(at)
            self.now, self._served = max(self.now, at), max(self._served, head)
            while self._hand and self._hand[0][0] <= self._served:
                done.append((self.now, heapq.heappop(self._hand)[2]))
            while self._out and self._out[0][0] <= self._served:
                done.append((self.now, self._out.popleft()[1]))
        self.now = max(self.now, t)
        return done

    def _work(self, until: float) -> None:
        """The process had work from now to ``until``."""
        if until <= self.now:
            return
        self.busy += until - self.now
        if not self._keep:
            return
        if self._ends and self._ends[-1] >= self.now:
            self._ends[-1] = until
        else:
            self._starts.append(self.now)
            self._ends.append(until)

    @property
    def periods(self) -> list[tuple[float, float]]:
        """(start, end) of each period it had work, in order."""
        return list(zip(self._starts, self._ends, strict=True))

    def busy_at(self, t: float) -> float:
        """Seconds it will have had work by ``t`` if nothing else arrives (its :attr:`busy`
        now, and the work in hand it keeps doing until it is through or ``t``)."""
        if t <= self.now:
            return self.busy
        left = sum(v - self._served for v, _, _ in self._hand)
        if self._out:
            left += self._out[-1][0] - self._served
        return self.busy + min(max(left, 0.0), t - self.now)

    def busy_between(self, start: float, end: float) -> float:
        """Seconds it had work between ``start`` and ``end`` (of the time run so far; kept
        with ``periods`` only)."""
        total = 0.0
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            total += max(min(self._ends[i], end) - max(self._starts[i], start), 0.0)
            i += 1
        return total

    def add(self, t: float, key: K, cost: float) -> list[tuple[float, K]]:
        """A request arrives at ``t`` needing ``cost`` seconds of the process; returns the
        work done before it arrived (as :meth:`advance` does)."""
        done = self.advance(t)
        self._count += 1
        heapq.heappush(self._hand, (self._served + max(cost, 0.0), self._count, key))
        return done

    def stream(self, t: float, key: K, cost: float) -> list[tuple[float, K]]:
        """A step's outputs reach the process at ``t`` needing ``cost`` seconds of it to
        stream, after the steps before; returns the work done before (as :meth:`advance`)."""
        done = self.advance(t)
        start = self._out[-1][0] if self._out else self._served
        self._out.append((start + max(cost, 0.0), key))
        return done

    def next_done(self) -> float | None:
        """When the next piece of work will be done, if nothing else arrives first."""
        if not self._hand and not self._out:
            return None
        head, sharing = self._next()
        return self.now + max(head - self._served, 0.0) * sharing
