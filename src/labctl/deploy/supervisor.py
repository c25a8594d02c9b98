"""Engines that die outside a deploy: restarted, their requests held meanwhile.

A serving engine that exits (a crash, an OOM kill, a SIGKILL) is seen by its owner
(``deploy/owner.py``), which moves to ``failed`` and says so; the supervisor then
restarts it as a deploy of the same revision, with a backoff when it keeps dying
(1, 2, 4 … 60 s; a run of five minutes resets it). A deploy that replaces the dead
revision first makes its restart moot: the restart is dropped, whether it was still in its
backoff or already queued behind that deploy. From the moment its death is seen
until the restart ends, the gateway holds the deployment's new requests, as it does
through a swap, so that only the requests the engine was answering fail. The gateway
itself reports an engine that refuses connections, which catches a death between two
looks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextlib
import time
from typing import Any

from labctl.deploy.controller import Controller
from labctl.deploy.deployment import Deployment
from labctl.deploy.owner import EngineOwner, State
from labctl.errors import LabError
from labctl.runtime.process import Backoff


class Supervisor:
    def __init__(
        self,
        controller: Controller,
        stopping: asyncio.Event,
        on_restart: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.controller = controller
        self.stopping = stopping
        #: Told of each restart (the daemon counts them).
        self.on_restart = on_restart
        self.backoff: dict[str, Backoff] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        controller.on_exit = self._exited

    def _exited(self, d: Deployment, owner: EngineOwner) -> None:
        if not d.restart_pending and not self.stopping.is_set():  # one restart at a time
            d.restart_pending = True  # new requests wait for the restart instead of failing
            d.replaced.clear()
            self.controller.publish(d)
            task = asyncio.create_task(self._restart(d, owner))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LabError):
                await task

    async def engine_gone(self, name: str) -> bool:
        """The gateway found ``name``'s engine refusing connections: True if it is dead and a
        restart is under way (the request then waits for it in the held queue)."""
        d = self.controller.deployments.get(name)
        if d is None:
            return False
        e = d.engine
        if e is not None and d.state == State.READY:
            for i in range(40):  # its owner may not have seen the exit yet: up to 2 s
                if d.restart_pending or d.state != State.READY:
                    break
                if i >= 20 and e.process.pid in e.process.alive_members():
                    break  # alive after a second: it refuses connections, it is not dead
                await asyncio.sleep(0.05)
        return d.restart_pending or d.state in ("draining", "stopping", "starting")

    async def _restart(self, d: Deployment, dead: EngineOwner) -> None:
        try:
            engine = dead.last_engine
            if engine is None:
                return
            self.on_restart(d.name)
            d.restarts += 1
            delay = self.backoff.setdefault(d.name, Backoff()).next_delay(
                time.monotonic() - engine.process.started_at
            )
            with contextlib.suppress(TimeoutError):  # or until a deploy replaces it
                await asyncio.wait_for(d.replaced.wait(), delay)
            if d.owner is not dead or self.stopping.is_set():
                return  # replaced meanwhile: its requests go to the new revision at once
            with contextlib.suppress(LabError):
                await self.controller.deploy(d.spec, kind="restart", revision=d.revision)
        finally:
            d.restart_pending = False
            if d.deploying is None:  # a restart that did not happen holds nothing back
                self.controller.publish(d)
