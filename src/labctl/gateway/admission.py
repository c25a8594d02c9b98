"""Admission per deployment: a concurrency limit, a bounded priority queue, held swaps.

Requests beyond ``limit`` wait in a FIFO per priority (lower number first). A
full queue answers at once (429); a request that waits longer than the queue
timeout gives up (503). Both carry a ``Retry-After``. Nothing admitted is ever
dropped: a request either runs, or is told why not.

During a swap the deploy controller *holds* the deployment: new requests queue
(their wait now bounded by the swap timeout, not the queue timeout), requests
in flight finish (the drain, bounded by the drain timeout), and on resume the
queue is released to whichever revision serves then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import heapq
import itertools
import time


class Rejected(Exception):
    """A request the gateway will not run now; ``status`` is 429 or 503."""

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)
    since: float = field(compare=False)


class Admission:
    def __init__(
        self,
        name: str,
        limit: int,
        queue_size: int = 256,
        queue_timeout: float = 30.0,
        swap_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"{name}: the concurrency limit must be at least 1")
        self.name = name
        self.limit = limit
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.swap_timeout = swap_timeout
        self.clock = clock
        self.in_flight = 0
        self.held = False
        self._held_since = 0.0
        self._resumed_at = 0.0
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def depth(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    def _retry_after(self) -> float:
        return 1.0 if not self.held else max(1.0, self.swap_timeout / 10)

    def try_enter(self) -> bool:
        """Take a slot now if one is free and no one waits: the common case, with no
        coroutine and no future (else :meth:`acquire` queues)."""
        if not self.held and self.in_flight < self.limit and not self._queue:
            self._enter()
            return True
        return False

    async def acquire(self, priority: int = 0) -> float:
        """Wait for a slot; returns the seconds waited.

        Raises:
            Rejected: 429 when the queue is full, 503 when the wait ran out.
        """
        if not self.held and self.in_flight < self.limit and not self.depth:
            self._enter()
            return 0.0
        if self.depth >= self.queue_size:
            raise Rejected(
                429,
                f"{self.name} is at its limit ({self.limit} running, {self.depth} queued); "
                "retry later",
                self._retry_after(),
            )
        loop = asyncio.get_running_loop()
        since = self.clock()
        waiter = _Waiter(priority, next(self._seq), loop.create_future(), since)
        heapq.heappush(self._queue, waiter)
        try:
            while not waiter.future.done():
                if self.held:  # through a swap, the wait is bounded by the swap timeout
                    limit = self.swap_timeout
                    left = max(since, self._held_since) + limit - self.clock()
                else:  # a request held through a swap gets a full queue timeout after it
                    limit = self.queue_timeout
                    left = max(since, self._resumed_at) + limit - self.clock()
                if left <= 0:
                    raise Rejected(
                        503,
                        f"{self.name}: no slot within {limit:g} s"
                        + (" (a swap is in progress)" if self.held else ""),
                        self._retry_after(),
                    )
                await asyncio.wait([waiter.future], timeout=min(left, 0.25))
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # it was given a slot as it gave up: pass the slot on
            waiter.future.cancel()
            self._wake()
            raise
        return self.clock() - since

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        self._wake()

    def _wake(self) -> None:
        while self._queue and (self._queue[0].future.done()):
            heapq.heappop(self._queue)
        while not self.held and self.in_flight < self.limit and self._queue:
            waiter = heapq.heappop(self._queue)
            if waiter.future.done():
                continue
            self._enter()
            waiter.future.set_result(None)

    def resize(self, limit: int, queue_size: int) -> None:
        """New limits (a redeploy changed them); a higher limit lets waiters in at once."""
        self.limit, self.queue_size = max(1, limit), queue_size
        self._wake()

    def hold(self) -> None:
        """Hold new requests (until :meth:`resume`), their wait bounded by the swap timeout."""
        if not self.held:
            self.held = True
            self._held_since = self.clock()

    async def drain(self, limit_s: float) -> bool:
        """Hold new requests and wait for those in flight; True if they all finished in time."""
        self.hold()
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    def resume(self) -> None:
        """Release the held queue (to the new revision, or the old one after a rollback)."""
        self.held = False
        self._resumed_at = self.clock()
        self._wake()
