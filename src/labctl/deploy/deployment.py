"""A deployment as the controller keeps it, and what the gateway does around its swaps.

A deployment's state is its current engine owner's (``deploy/owner.py``): the revision
that serves, or during a deploy the one being stopped or started. Nothing sets it as a
string; the owners' state machines move it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from labctl.config import DeploymentSpec
from labctl.deploy.engines import Engine
from labctl.deploy.owner import EngineOwner, State
from labctl.deploy.sleep import Parked
from labctl.engines import Route
from labctl.errors import DeployError

#: Every state a deployment can be in (``labctl_deployment_state{state}``).
STATES = tuple(str(s) for s in State)


class Hooks(Protocol):
    """What the gateway does around a swap: hold new requests and let in-flight ones finish
    (``drain``); take a deployment's route as it is now, releasing what it held (``publish``)."""

    async def drain(self, name: str) -> None: ...

    def publish(self, route: Route) -> None: ...


class NoHooks:
    async def drain(self, name: str) -> None:
        return None

    def publish(self, route: Route) -> None:
        return None


@dataclass
class Deployment:
    name: str
    spec: DeploymentSpec
    #: The revision that serves (or served last).
    revision: int | None = None
    #: The owner of its engine: the revision serving, or the one being stopped or started.
    owner: EngineOwner | None = None
    restarts: int = 0
    #: Its engine died and a restart is on its way (the gateway holds its requests).
    restart_pending: bool = False
    #: Set each time another owner becomes the current one (a pending restart gives way).
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    #: A swap is in progress: the gateway holds its new requests until it ends.
    swapping: bool = False
    #: Sequences its engine runs at once, as planned (the gateway's default limit).
    max_num_seqs: int | None = None
    #: The deploy in progress, if any, its ticket, and whether a cancel was asked for.
    deploying: asyncio.Task[dict[str, Any]] | None = None
    ticket: str | None = None
    cancel_requested: bool = False
    #: The part of the deploy a cancel may interrupt right now (drain, start, smoke test).
    interruptible: asyncio.Task[Any] | None = None
    #: Its revisions kept asleep (``sleep``), by revision (``deploy/sleep.py``).
    sleeping: dict[int, Parked] = field(default_factory=dict)
    #: The deploy in progress woke a sleeping revision (a warm swap).
    warm: bool = False

    @property
    def state(self) -> str:
        return str(self.owner.state) if self.owner is not None else State.STOPPED

    @property
    def error(self) -> str | None:
        return self.owner.error if self.owner is not None else None

    @property
    def engine(self) -> Engine | None:
        """The engine that serves (ready, or draining its last requests)."""
        o = self.owner
        return o.engine if o is not None and o.state in (State.READY, State.DRAINING) else None

    def status(self) -> dict[str, Any]:
        e = self.engine
        return {
            "name": self.name, "state": self.state, "model": self.spec.model,
            "served_model": self.spec.served, "engine": self.spec.engine,
            "revision": self.revision, "gpus": list(self.spec.gpus),
            "url": e.url if e else None, "pid": e.process.pid if e else None,
            "container": e.container.shown() if e and e.container else None,
            "error": self.error, "restarts": self.restarts,
            "startup_phases": dict(e.phases) if e else {},
            "load_path": e.load_path or None if e else None,
            "deploying": self.ticket,
            # the flags the bottleneck's roofline reads (dashboard/bottleneck.py)
            "roofline_args": {k: v for k, v in self.spec.args.items()
                              if k in ("max_model_len", "enforce_eager", "time_scale")},
            "asleep": [p.status() for p in self.sleeping.values()
                       if p.owner.state == State.SLEEPING],
        }  # fmt: skip


class DeployCancelled(DeployError):
    """A deploy stopped on request (``labctl cancel``) or by the daemon's shutdown."""
