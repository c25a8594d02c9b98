"""Rollbacks: the old revision brought back after a failed deploy, and ``labctl rollback``.

A deploy that fails after the old revision drained, slept or stopped brings it back through
the same checks as any start: a sleeping one is woken, one never stopped serves again, a
stopped one is started again from the engine it ran (its settings, planned need and flags).
``labctl rollback`` is a deploy of the revision before the one serving.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labctl.config import DeploymentSpec
from labctl.deploy.deployment import Deployment
from labctl.deploy.owner import EngineOwner, State
from labctl.deploy.preflight import Need
from labctl.errors import DeployError

if TYPE_CHECKING:
    from labctl.deploy.controller import Controller


async def roll_back(c: Controller, d: Deployment, old: EngineOwner | None, deploy_id: int) -> bool:
    """Bring the old revision back after a failed deploy; True if it serves again."""
    woken = None
    if old is not None and old.state == State.SLEEPING:  # this deploy put it to sleep
        woken = await c.sleep.wake_back(d, old, deploy_id)
    if old is not None and woken is not None:
        c.journal.set_current(d.name, old.revision, woken.process.pid,
                              woken.process.start_time, woken.url)  # fmt: skip
        c.show_owner(d, old)
        return True
    if old is not None and old.engine is not None:
        old.undrain()  # never stopped: it kept serving
        c.show_owner(d, old)
        return True
    last = old.last_engine if old is not None else None
    if old is None or last is None:
        return False
    back = c.new_owner(d, old.revision)
    spec = last.spec
    need = Need(last.need_bytes, "", last.recommended, None, last.weight_bytes)
    try:
        engine = await back.start(
            lambda: c.bring_up(spec, back.revision, need, deploy_id, "rollback")
        )
    except Exception:
        c.show_owner(d, back)  # failed too
        return False
    c.journal.set_current(d.name, back.revision, engine.process.pid,
                          engine.process.start_time, engine.url)  # fmt: skip
    c.show_owner(d, back)
    return True


async def rollback(
    c: Controller,
    name: str,
    check: Callable[[DeploymentSpec, DeploymentSpec], Awaitable[None]] | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    """Deploy the revision before the one serving (a new deploy of an old revision).

    ``check(current, earlier)`` may refuse it (raising), as it would refuse the same
    change asked for directly. Without ``wait``, returns its ticket at once.

    Raises:
        DeployError: unknown deployment, or no earlier revision.
    """
    d = c.deployments.get(name)
    if d is None or d.revision is None:
        raise DeployError(f"{name!r} is not serving a revision; see `labctl status`")
    earlier = [r for r in c.journal.history(name, limit=200)
               if r["outcome"] == "committed" and r["to_revision"] != d.revision]  # fmt: skip
    if not earlier:
        raise DeployError(f"{name} has no earlier committed revision to roll back to")
    target = int(earlier[0]["to_revision"])
    spec = c.revisions.restore(name, target)
    if check is not None:
        await check(d.spec, spec)
    if not wait:
        return {"deployment": name, "ticket": c.submit(spec, "rollback", target)}
    return await c.deploy(spec, kind="rollback", revision=target)
