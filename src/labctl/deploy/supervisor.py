"""Engines that die outside a deploy: noticed within 0.1 s and restarted, their requests held.

A serving engine that exits (a crash, an OOM kill, a SIGKILL) is restarted at once as a
deploy of the same revision, with a backoff when it keeps dying (1, 2, 4 … 60 s; a run
of five minutes resets it). From the moment its death is seen until the restart ends,
the gateway holds the deployment's new requests, as it does through a swap, so that
only the requests the engine was answering fail. The gateway itself reports an engine
that refuses connections, which catches a death between two looks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextlib
import time
from typing import Any, Protocol

from labctl.deploy.controller import Controller
from labctl.deploy.engines import Engine
from labctl.errors import LabError
from labctl.runtime.process import Backoff


class Holds(Protocol):
    """What the gateway does for a restart: hold new requests, then let them go."""

    def hold(self, name: str) -> None: ...

    async def resume(self, name: str, url: str | None) -> None: ...


class Supervisor:
    def __init__(
        self,
        controller: Controller,
        gateway: Holds,
        stopping: asyncio.Event,
        on_restart: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.controller = controller
        self.gateway = gateway
        self.stopping = stopping
        #: Told of each restart (the daemon counts them).
        self.on_restart = on_restart
        self.backoff: dict[str, Backoff] = {}
        #: Deployments whose dead engine is being restarted (one restart at a time).
        self.restarting: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def watch(self) -> None:
        """Every 0.1 s: a serving engine that exited is restarted at once."""
        try:
            while True:
                for d in list(self.controller.deployments.values()):
                    e = d.engine
                    if e is not None and d.state == "ready" and e.process.returncode is not None:
                        self.restart_soon(d.name, e)
                await asyncio.sleep(0.1)
        finally:
            for task in self._tasks:
                task.cancel()

    def restart_soon(self, name: str, dead: Engine) -> None:
        if name not in self.restarting:
            self.restarting.add(name)
            self.gateway.hold(name)  # new requests wait for the restart instead of failing
            task = asyncio.create_task(self._restart(name, dead))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def engine_gone(self, name: str) -> bool:
        """The gateway found ``name``'s engine refusing connections: True if it is dead and a
        restart is under way (the request then waits for it in the held queue)."""
        d = self.controller.deployments.get(name)
        if d is None:
            return False
        e = d.engine
        if e is not None and d.state == "ready":
            for _ in range(20):  # its exit may not be reaped yet: give it up to a second
                if (
                    e.process.returncode is not None
                    or e.process.pid not in e.process.alive_members()
                ):
                    self.restart_soon(name, e)
                    break
                await asyncio.sleep(0.05)
        return name in self.restarting or d.state in ("draining", "stopping", "starting")

    async def _restart(self, name: str, dead: Engine) -> None:
        try:
            d = self.controller.deployments[name]
            if d.engine is not dead or d.state != "ready":
                return
            code = dead.process.returncode
            self.on_restart(name)
            d.restarts += 1
            delay = self.backoff.setdefault(name, Backoff()).next_delay(
                time.monotonic() - dead.process.started_at
            )
            self.controller.set_state(
                d, "failed", f"engine exited with code {code}; restart in {delay:g} s"
            )
            await asyncio.sleep(delay)
            if d.engine is not dead or self.stopping.is_set():
                return
            with contextlib.suppress(LabError):
                await self.controller.deploy(d.spec, kind="restart", revision=d.revision)
        finally:
            self.restarting.discard(name)
            d = self.controller.deployments[name]
            if d.deploying is None:  # a restart that did not happen holds nothing back
                await self.gateway.resume(name, None)
