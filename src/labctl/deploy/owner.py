"""One owner task per engine process: a typed state machine driven through a command queue.

An :class:`EngineOwner` is the only code that changes its engine's state. The deploy
controller *asks* it (start, drain, stop) and awaits the answer; the owner runs one
command at a time, in order, on a task of its own, and moves through

    stopped → starting → ready → draining → stopping → stopped
                  ↘ failed ↙        ↘ ready (a drain called off)
                     ↖ starting ← sleeping ← draining (sleep mode: kept, woken later)

refusing any other step (a bug, not a user error). A sleeping engine keeps its process
but serves nothing; a wake goes through ``starting`` back to ``ready``. A caller that gives up on a command
(a cancelled deploy) cancels the work the owner does for it, which cleans up after itself
(a start cut short stops what it spawned and waits for its memory). While its engine is
ready the owner watches the process: an exit it did not ask for moves it to ``failed``
and is reported (the supervisor restarts the deployment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
import contextlib
from dataclasses import dataclass, field
import enum
from typing import Any, TypeVar

from labctl.deploy.engines import Engine

T = TypeVar("T")


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"


#: The steps an owner may take from each state.
ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPED}),
    State.READY: frozenset({State.DRAINING, State.STOPPING, State.FAILED}),
    State.DRAINING: frozenset({State.READY, State.STOPPING, State.FAILED, State.SLEEPING}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.STOPPING, State.STOPPED}),
    State.SLEEPING: frozenset({State.STARTING, State.STOPPING, State.FAILED}),
}


class BadTransition(RuntimeError):
    """An owner was asked for a step its state machine does not have."""


@dataclass
class _Command:
    work: Callable[[], Coroutine[Any, Any, Any]]
    future: asyncio.Future[Any]
    task: asyncio.Task[Any] | None = field(default=None)


class EngineOwner:
    """Owns the engine of one revision of one deployment, from its start to its stop.

    Args:
        name: the deployment.
        revision: the revision it runs.
        on_state: told of every change (owner, new state, error).
        on_exit: told when a ready engine exits without being asked to (a sleeping one that
            exits is only failed: nothing serves through it).
    """

    def __init__(
        self,
        name: str,
        revision: int,
        on_state: Callable[[EngineOwner, State, str | None], None],
        on_exit: Callable[[EngineOwner], None] = lambda owner: None,
    ) -> None:
        self.name = name
        self.revision = revision
        self.state = State.STOPPED
        self.error: str | None = None
        self.engine: Engine | None = None
        #: The engine it ran last (kept after its stop: a rollback restarts it as it was).
        self.last_engine: Engine | None = None
        self.on_state = on_state
        self.on_exit = on_exit
        self._queue: asyncio.Queue[_Command | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"owner {name} r{revision}")
        self._watch: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<EngineOwner {self.name} r{self.revision} {self.state}>"

    # -- the state machine -------------------------------------------------------------

    def _set(self, state: State, error: str | None = None) -> None:
        if state != self.state and state not in ALLOWED[self.state]:
            raise BadTransition(f"{self.name} r{self.revision}: {self.state} → {state}")
        self.state, self.error = state, error
        self.on_state(self, state, error)

    # -- commands ----------------------------------------------------------------------

    async def _ask(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Queue ``work`` and wait for it; a caller that gives up cancels it and waits for
        its cleanup."""
        cmd = _Command(work, asyncio.get_running_loop().create_future())
        await self._queue.put(cmd)
        try:
            return await asyncio.shield(cmd.future)
        except asyncio.CancelledError:
            if cmd.task is not None:
                cmd.task.cancel()
            else:
                cmd.future.cancel()  # not begun: the owner skips it
            with contextlib.suppress(BaseException):
                await cmd.future
            raise

    async def _run(self) -> None:
        while (cmd := await self._queue.get()) is not None:
            if cmd.future.done():
                continue  # its caller gave up before it began
            cmd.task = asyncio.create_task(cmd.work())
            try:
                result = await asyncio.shield(cmd.task)
            except asyncio.CancelledError:
                if not cmd.task.done():  # the owner itself is cancelled: so is the work
                    cmd.task.cancel()
                    with contextlib.suppress(BaseException):
                        await cmd.task
                    raise
                cmd.future.cancel()
            except BaseException as exc:
                cmd.future.set_exception(exc)
            else:
                cmd.future.set_result(result)

    async def start(self, spawn: Callable[[], Awaitable[Engine]]) -> Engine:
        """Start the engine (``spawn`` starts it and waits until it is ready).

        Raises:
            EngineError: it did not become ready (it is stopped again: its memory is back).
        """

        async def work() -> Engine:
            self._set(State.STARTING)
            try:
                engine = await spawn()
            except asyncio.CancelledError:
                self._set(State.STOPPED, "start cancelled")
                raise
            except Exception as exc:
                self._set(State.FAILED, str(exc))
                raise
            self.engine = self.last_engine = engine
            self._set(State.READY)
            self._watch_exit()
            return engine

        result: Engine = await self._ask(work)
        return result

    def adopt(self, engine: Engine) -> None:
        """Take over an engine an earlier daemon started and left serving."""
        self.engine = self.last_engine = engine
        self._set(State.STARTING)
        self._set(State.READY)
        self._watch_exit()

    async def drain(self, wait: Callable[[], Awaitable[None]]) -> None:
        """Stop taking new requests and let those in flight finish (``wait``)."""

        async def work() -> None:
            self._set(State.DRAINING)
            await wait()

        await self._ask(work)

    async def sleep(self, put_to_sleep: Callable[[Engine], Awaitable[T]]) -> T:
        """Put the drained engine to sleep (``put_to_sleep``); finished once begun. A failure
        leaves it failed, for the caller to stop."""

        async def work() -> T:
            engine = self.engine
            assert engine is not None and self.state == State.DRAINING, self
            try:
                result = await put_to_sleep(engine)
            except Exception as exc:
                self._set(State.FAILED, str(exc))
                raise
            self._set(State.SLEEPING)
            return result

        result: T = await asyncio.shield(self._ask(work))
        return result

    async def wake(self, wake: Callable[[Engine], Awaitable[None]]) -> Engine:
        """Wake the sleeping engine (``wake``) until it is ready again; finished once begun.
        A failure leaves it failed, for the caller to stop."""

        async def work() -> Engine:
            engine = self.engine
            assert engine is not None and self.state == State.SLEEPING, self
            self._set(State.STARTING)
            try:
                await wake(engine)
            except Exception as exc:
                self._set(State.FAILED, str(exc))
                raise
            self._set(State.READY)
            return engine

        result: Engine = await asyncio.shield(self._ask(work))
        return result

    def undrain(self) -> None:
        """A drain called off (a deploy refused or cancelled before the stop): serve again."""
        if self.state == State.DRAINING:
            self._set(State.READY)

    async def stop(self, stop: Callable[[Engine], Awaitable[Any]]) -> Any:
        """Stop the engine and wait for its memory (``stop``); finished once begun."""

        async def work() -> Any:
            engine = self.engine
            if engine is None:
                if self.state != State.STOPPED:
                    self._set(State.STOPPED)
                return None
            self._set(State.STOPPING)
            if self._watch is not None:
                self._watch.cancel()
            try:
                result = await stop(engine)
            except Exception as exc:
                self._set(State.FAILED, str(exc))
                raise
            finally:
                self.engine = None
            self._set(State.STOPPED)
            return result

        return await asyncio.shield(self._ask(work))

    async def close(self) -> None:
        """End the owner's task (its engine stopped, killed, or left to whoever adopts it); a
        command in progress is cancelled."""
        for task in (self._watch, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- exits ---------------------------------------------------------------------------

    def _watch_exit(self) -> None:
        engine = self.engine
        if engine is None:
            return

        async def watch() -> None:
            await engine.process.wait(poll=0.1)  # seen within 0.1 s, as the gateway needs
            if self.engine is engine and self.state == State.SLEEPING:  # nothing to restart
                self._set(State.FAILED, f"exited with code {engine.process.returncode} asleep")
            elif self.engine is engine and self.state in (State.READY, State.DRAINING):
                self._set(State.FAILED, f"engine exited with code {engine.process.returncode}")
                self.on_exit(self)

        self._watch = asyncio.create_task(watch())
