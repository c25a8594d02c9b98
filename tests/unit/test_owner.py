"""The engine owner's state machine: commands in order, only the steps it has, cancels that
clean up, and an exit it did not ask for reported once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from labctl.deploy.owner import ALLOWED, BadTransition, EngineOwner, State


class FakeProcess:
    def __init__(self) -> None:
        self.returncode: int | None = None
        self.started_at = 0.0
        self.exited = asyncio.Event()

    def exit(self, code: int) -> None:
        self.returncode = code
        self.exited.set()

    async def wait(self, limit: float | None = None, poll: float = 0.01) -> int | None:
        await self.exited.wait()
        return self.returncode


class FakeEngine:
    def __init__(self) -> None:
        self.process = FakeProcess()


def owner(seen: list[State], exits: list[EngineOwner] | None = None) -> EngineOwner:
    return EngineOwner("chat", 1, lambda o, s, e: seen.append(s),
                       (exits if exits is not None else []).append)  # fmt: skip


def test_a_start_drain_and_stop_walk_the_states_in_order() -> None:
    async def go() -> list[State]:
        seen: list[State] = []
        o = owner(seen)
        engine: Any = FakeEngine()

        async def spawn() -> Any:
            return engine

        assert await o.start(spawn) is engine and o.engine is engine
        await o.drain(lambda: asyncio.sleep(0))
        stopped: list[Any] = []

        async def stop(e: Any) -> str:
            stopped.append(e)
            return "released"

        assert await o.stop(stop) == "released" and stopped == [engine] and o.engine is None
        assert o.last_engine is engine  # a rollback can restart it as it was
        await o.close()
        return seen

    assert asyncio.run(go()) == [State.STARTING, State.READY, State.DRAINING, State.STOPPING,
                                 State.STOPPED]  # fmt: skip


def test_a_failed_start_is_failed_with_its_error_and_a_cancelled_one_is_stopped() -> None:
    async def go() -> tuple[EngineOwner, EngineOwner, list[State]]:
        bad = owner([])

        async def boom() -> Any:
            raise RuntimeError("exited with code 1 during startup")

        with pytest.raises(RuntimeError):
            await bad.start(boom)
        seen: list[State] = []
        slow = owner(seen)
        cleaned = asyncio.Event()

        async def hang() -> Any:
            try:
                await asyncio.sleep(60)
            finally:
                cleaned.set()  # what a start cut short does: stop what it spawned

        task = asyncio.create_task(slow.start(hang))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned.is_set()
        await bad.close()
        await slow.close()
        return bad, slow, seen

    bad, slow, seen = asyncio.run(go())
    assert bad.state == State.FAILED and "code 1" in (bad.error or "")
    assert slow.state == State.STOPPED and seen == [State.STARTING, State.STOPPED]


def test_steps_outside_the_machine_are_refused() -> None:
    async def go() -> None:
        o = owner([])
        with pytest.raises(BadTransition):
            o._set(State.READY)  # stopped → ready skips the start
        await o.close()

    asyncio.run(go())
    assert State.READY not in ALLOWED[State.STOPPED]
    assert all(s in ALLOWED for s in State)


def test_an_exit_nobody_asked_for_fails_the_owner_and_is_reported_once() -> None:
    async def go() -> tuple[EngineOwner, list[EngineOwner]]:
        exits: list[EngineOwner] = []
        o = owner([], exits)
        engine: Any = FakeEngine()

        async def spawn() -> Any:
            return engine

        await o.start(spawn)
        engine.process.exit(-9)
        for _ in range(100):
            if exits:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await o.close()
        return o, exits

    o, exits = asyncio.run(go())
    assert exits == [o] and o.state == State.FAILED and "-9" in (o.error or "")


def test_commands_run_one_at_a_time_in_the_order_asked() -> None:
    async def go() -> list[str]:
        o = owner([])
        order: list[str] = []
        engine: Any = FakeEngine()

        async def spawn() -> Any:
            await asyncio.sleep(0.05)
            order.append("started")
            return engine

        async def stop(e: Any) -> None:
            order.append("stopped")

        await asyncio.gather(o.start(spawn), o.stop(stop))
        await o.close()
        return order

    assert asyncio.run(go()) == ["started", "stopped"]
