"""A lab's deployments over its life: started from lab.toml, and stopped within one bound.

At start, each configured deployment is deployed in turn (one that an earlier daemon left
serving, unchanged, is kept). At shutdown, deploys in progress stop where they safely can,
requests in flight get the drain time, then every engine stops at once; all within the
drain time plus the longest stop grace and a few seconds for the memory to come back,
after which whatever still runs is killed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
import contextlib

from labctl.config import DeploymentSpec
from labctl.deploy.controller import Controller
from labctl.deploy.deployment import DeployCancelled, Deployment
from labctl.errors import LabError

#: Seconds a shutdown allows beyond the drain and the longest stop grace (the release wait).
SHUTDOWN_SLACK_S = 5.0


async def start_configured(
    controller: Controller, specs: Sequence[DeploymentSpec], log: Callable[[str], None]
) -> None:
    """Deploy every configured deployment that does not serve as configured already."""
    for spec in specs:
        d = controller.deployments.get(spec.name)
        if d is not None and d.engine is not None and d.spec == spec:
            continue  # adopted, and lab.toml still says what it runs
        try:
            await controller.deploy(spec, kind="start")
        except DeployCancelled:
            return  # the lab is shutting down
        except LabError as exc:
            log(f"{spec.name}: {exc}")


def shutdown_bound(controller: Controller, drain_timeout: float) -> float:
    """Seconds a shutdown may take before what still runs is killed."""
    grace = max((d.spec.stop_grace for d in controller.deployments.values()), default=0.0)
    return drain_timeout + grace + SHUTDOWN_SLACK_S


async def shut_down(
    controller: Controller,
    drain: Callable[[str], Awaitable[None]],
    drain_timeout: float,
    log: Callable[[str], None],
) -> None:
    """Stop the lab's deploys and engines within :func:`shutdown_bound`.

    ``drain(name)`` holds a deployment's new requests and waits for those in flight.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + shutdown_bound(controller, drain_timeout)

    def left() -> float:
        return max(0.0, deadline - loop.time())

    log(f"stopping: requests in flight get {drain_timeout:g} s, then every engine stops")
    closing = asyncio.create_task(controller.close_deploys())
    drains: list[asyncio.Future[None]] = [
        asyncio.ensure_future(drain(name))
        for name, d in controller.deployments.items()
        if d.engine is not None
    ]
    await asyncio.wait([*drains, closing], timeout=min(drain_timeout, left()))
    for task in drains:
        task.cancel()
    await asyncio.wait([closing], timeout=left())
    late = await stop_all(controller, left())
    if late or not closing.done():
        log(f"stopping: {', '.join(late) or 'a deploy'} did not stop in time: killed")
        kill_all(controller)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError, LabError):
            await closing


async def stop_all(controller: Controller, bound: float) -> list[str]:
    """Stop every engine at once (sleeping ones too) and wait for their memory, within
    ``bound`` seconds; returns the deployments whose stop did not finish in time."""

    asleep = {id(p.owner) for p in controller.sleep.all()}

    async def stop(d: Deployment) -> None:
        owner = d.owner
        if owner is None or owner.engine is None or id(owner) in asleep:
            return  # one asleep is stopped with the other sleeping revisions
        with contextlib.suppress(LabError, OSError):
            await owner.stop(controller.engines.stop)
        controller.journal.clear_current(d.name)

    tasks = {asyncio.create_task(stop(d)): d.name for d in controller.deployments.values()}
    tasks[asyncio.create_task(controller.sleep.stop_all())] = "sleeping revisions"
    _, pending = await asyncio.wait(tasks, timeout=bound)
    return [tasks[t] for t in pending]


def kill_all(controller: Controller) -> None:
    """SIGKILL every process of every engine now, starting and sleeping ones too (a second
    Ctrl-C)."""
    processes = set(controller.spawned)
    for d in controller.deployments.values():
        if d.owner is not None and d.owner.engine is not None:
            processes.add(d.owner.engine.process)
    processes |= {p.owner.engine.process for p in controller.sleep.all() if p.owner.engine}
    for process in processes:
        if process.pid is not None:
            process.kill()
