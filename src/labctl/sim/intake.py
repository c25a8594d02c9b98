"""The API server's intake: one process shared by every request it is taking in.

vLLM's API server reads each request, renders its chat template, tokenizes and
validates it before the engine sees it, in one process whose event loop
interleaves the requests in hand: with n of them in hand, each moves at 1/n of
the process's speed (processor sharing). A request alone takes its own cost;
a burst of N requests of cost c reaches the engine together, after about N × c,
not one every c, so every request of a burst waits that long for its first
token (the published bursts of 1,000 chat requests show that floor).
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

K = TypeVar("K")


class SharedIntake(Generic[K]):
    """Processor sharing of one CPU among the requests in hand, each needing its own cost.

    Time is the caller's clock (simulated or scaled real time); a time before the last one
    given counts as the last one.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        #: Service each request in hand has had since the clock's origin ("virtual time").
        self._served = 0.0
        #: (virtual time at which it is through, arrival order, key) per request in hand.
        self._hand: list[tuple[float, int, K]] = []
        self._count = 0

    def __len__(self) -> int:
        return len(self._hand)

    def advance(self, t: float) -> list[tuple[float, K]]:
        """Run to ``t``: the requests taken in by then, each with the time it was through."""
        done: list[tuple[float, K]] = []
        t = max(t, self.now)
        while self._hand:
            through = self._hand[0][0]
            at = self.now + max(through - self._served, 0.0) * len(self._hand)
            if at > t:
                self._served += (t - self.now) / len(self._hand)
                break
            self.now, self._served = max(self.now, at), max(self._served, through)
            while self._hand and self._hand[0][0] <= self._served:
                done.append((self.now, heapq.heappop(self._hand)[2]))
        self.now = max(self.now, t)
        return done

    def add(self, t: float, key: K, cost: float) -> list[tuple[float, K]]:
        """A request arrives at ``t`` needing ``cost`` seconds of the process; returns the
        requests taken in before it arrived (as :meth:`advance` does)."""
        done = self.advance(t)
        self._count += 1
        heapq.heappush(self._hand, (self._served + max(cost, 0.0), self._count, key))
        return done

    def next_through(self) -> float | None:
        """When the next request will be through, if no other arrives first."""
        if not self._hand:
            return None
        return self.now + max(self._hand[0][0] - self._served, 0.0) * len(self._hand)
