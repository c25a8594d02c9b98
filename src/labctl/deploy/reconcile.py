"""Engine processes the lab owns but no daemon runs: found after a crash, and stopped.

Two sources name them. The journal: every step that acts on an engine records the
process (pid and start time) before it acts, and each deployment's current engine
is recorded when it is switched in. And the processes themselves: the runtime marks
every engine it starts (``ENGINE_MARK`` in its environment, which its workers
inherit), so an engine spawned the instant before its daemon was killed, or a
worker that outlived its engine, is found even where no row names it. A pid is
acted on only with its start time, so a reused pid is never mistaken for the lab's. A
container engine's container is found by its labels: one no adopted engine runs in is
stopped and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from labctl.deploy.containers import InContainer
from labctl.deploy.controller import Controller
from labctl.deploy.engines import Engine
from labctl.deploy.journal import Journal
from labctl.engines import adapter
from labctl.errors import LabError
from labctl.gpu.procs import marked, read_stat
from labctl.runtime.container import Runtime
from labctl.runtime.process import ENGINE_MARK, EngineProcess


def leftovers(journal: Journal, home: Path, keep: set[int]) -> dict[int, tuple[float, str]]:
    """The lab's engine processes alive now but not in ``keep``: pid → (start, deployment)."""
    found = dict(journal.processes())
    for mark in marked(f"{ENGINE_MARK}={home}"):
        found.setdefault(mark.pid, (mark.start, "unjournaled"))
    out = {}
    for pid, (start, name) in found.items():
        st = read_stat(pid)
        if pid not in keep and st is not None and st.alive and st.start == start:
            out[pid] = (start, name)
    return out


async def stop_leftovers(
    processes: dict[int, tuple[float, str]], home: Path, grace: float = 5.0
) -> list[str]:
    """Stop each process (its whole tree); returns a line for each one stopped."""
    done = []
    for pid, (start, name) in sorted(processes.items()):
        try:
            leftover = EngineProcess.adopt(pid, start, home / "logs" / f"{name}-leftover-{pid}.log")
        except LabError:
            continue  # gone meanwhile (a group stopped before it took this one with it)
        leftover.track()
        with contextlib.suppress(LabError):
            await leftover.stop(grace=grace)
        done.append(f"stopped pid {pid} ({name})")
    return done


async def stop_containers(controller: Controller, home: Path) -> list[str]:
    """Stop and remove the lab's containers (found by their ``labctl.lab`` label) that no
    adopted engine runs in: those whose runtime's client died with the daemon, or before."""
    adopted = {d.engine.container.name for d in controller.deployments.values()
               if d.engine is not None and d.engine.container is not None}  # fmt: skip
    done = []
    for kind in sorted({d.spec.runtime for d in controller.deployments.values() if d.spec.runtime}):
        runtime = Runtime(kind, *controller.engines.containers)
        try:
            found = await asyncio.to_thread(runtime.containers, str(home))
        except LabError as exc:
            done.append(f"could not list {kind} containers: {exc}")
            continue
        for c in found:
            if c.name not in adopted:
                await runtime.astop(c.name, 5.0)
                done.append(f"removed container {c.name} ({c.image}), left by an earlier daemon")
    return done


async def reconcile(controller: Controller, home: Path, wanted: set[str]) -> list[str]:
    """Make the journal and the running processes agree after a start; returns what was done.

    A healthy engine that a wanted deployment was serving is adopted; a deploy left
    unfinished is closed (committed if what it switched in is what now serves, else
    interrupted); every other process of the lab's is stopped, its whole tree.
    """
    journal = controller.journal
    flags = controller.engines.containers
    done: list[str] = []
    serving: dict[str, int] = {}
    for cur in journal.current():
        log = home / "logs" / f"{cur.deployment}-r{cur.revision}.log"
        engine = None
        if cur.engine_pid and cur.engine_start is not None:
            with contextlib.suppress(LabError):
                engine = EngineProcess.adopt(cur.engine_pid, cur.engine_start, log)
        spec = None
        with contextlib.suppress(LabError, KeyError):
            spec = await controller.planner.resolve(  # GPUs named by UUID: their index now
                controller.revisions.restore(cur.deployment, cur.revision)
            )
        found = None
        if engine is not None and spec is not None and cur.url is not None:
            found = Engine(cur.revision, spec, engine, cur.url,
                           key=controller.engines.key_for(spec, cur.revision))  # fmt: skip
        healthy = (
            found is not None and cur.deployment in wanted
            and await controller.engines.probe(
                found.url, adapter(found.spec.engine).health_of(found.spec.to_dict()))
            and (found.key is None or found.spec.served in await controller.engines.models(found))
        )  # fmt: skip
        if not healthy or found is None:
            journal.clear_current(cur.deployment)
            continue  # its engine, if alive, is stopped with the other leftovers below
        found.process.track()
        if found.spec.runtime:  # in a container: it, and its processes' host pids
            found.container = InContainer.of(found.spec, cur.revision, flags)
            await controller.engines.container_pids(found)
        controller.adopt(found.spec, found)
        serving[cur.deployment] = cur.revision
        rec = journal.begin(cur.deployment, "reconcile", cur.revision, cur.revision)
        with journal.step(rec, "adopt", pid=cur.engine_pid, start=cur.engine_start, url=cur.url):
            pass
        journal.finish(rec, "committed")
        done.append(f"adopted {cur.deployment} revision {cur.revision} (pid {cur.engine_pid})")
    owned = set(controller.owned_pids())
    stray = leftovers(journal, home, owned)
    for pending in journal.unfinished():
        name, to = pending["deployment"], pending["to_revision"]
        if (
            serving.get(name) == to
            and pending["steps"]
            and pending["steps"][-1]["name"] == "switch"
        ):
            journal.finish(pending["id"], "committed")  # switched in, then the daemon died
            done.append(f"closed deploy {pending['id']} of {name} as committed")
        else:
            journal.finish(pending["id"], "interrupted",
                                "the daemon stopped during the deploy")  # fmt: skip
            done.append(f"closed deploy {pending['id']} of {name} as interrupted")
    for line in await stop_leftovers(stray, home):
        done.append(f"{line}, left running by an earlier daemon")
    done += await stop_containers(controller, home)
    if done:
        rec = journal.begin("*", "reconcile", None, 0)
        with journal.step(rec, "cleanup", actions=list(done)):
            pass
        journal.finish(rec, "committed")
    return done
