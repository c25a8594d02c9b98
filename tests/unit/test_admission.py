"""Gateway admission without sockets: limits, the queue, and requests held through a swap."""

from __future__ import annotations

import asyncio

import pytest

from labctl.gateway.admission import Admission, Rejected


def test_a_full_queue_is_429_and_a_long_wait_503() -> None:
    async def go() -> None:
        adm = Admission("chat", limit=1, queue_size=1, queue_timeout=0.2)
        assert await adm.acquire() == 0.0
        waiter = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.01)
        with pytest.raises(Rejected) as full:
            await adm.acquire()
        assert full.value.status == 429 and full.value.retry_after >= 1
        with pytest.raises(Rejected) as late:
            await waiter
        assert late.value.status == 503 and adm.depth == 0 and adm.in_flight == 1

    asyncio.run(go())


def test_requests_held_through_a_long_swap_are_released_not_timed_out() -> None:
    async def go() -> None:
        adm = Admission("chat", limit=1, queue_size=8, queue_timeout=0.2, swap_timeout=5)
        await adm.acquire()
        drained = asyncio.create_task(adm.drain(5))
        held = [asyncio.create_task(adm.acquire()) for _ in range(2)]
        adm.release()  # the request in flight finishes: the drain completes
        assert await drained is True
        await asyncio.sleep(0.5)  # the swap outlasts the queue timeout
        adm.resume()
        assert await held[0] >= 0.5  # runs on the new revision
        await asyncio.sleep(0.1)
        adm.release()
        assert await held[1] >= 0.5  # still queued behind it, within its fresh queue timeout

    asyncio.run(go())


def test_priority_orders_the_queue_and_resize_lets_waiters_in() -> None:
    async def go() -> None:
        adm = Admission("chat", limit=1, queue_size=8, queue_timeout=5)
        await adm.acquire()
        order: list[str] = []

        async def want(name: str, priority: int) -> None:
            await adm.acquire(priority)
            order.append(name)

        tasks = [asyncio.create_task(want("low", 5)), asyncio.create_task(want("high", 0))]
        await asyncio.sleep(0.01)
        adm.release()
        await asyncio.sleep(0.01)
        assert order == ["high"]
        adm.resize(2, 8)
        await asyncio.gather(*tasks)
        assert order == ["high", "low"]

    asyncio.run(go())
