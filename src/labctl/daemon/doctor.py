"""The doctor inside the lab: run at start and on demand (``/api/doctor``), its findings as
a metric, a dashboard panel and an alert, and the failures that refuse a deploy.

The checks read the machine the daemon runs on. Tests point them at a fixture host instead:
``LABCTL_DOCTOR_ROOT`` (a directory standing for ``/``: its ``proc``, ``sys``, ``dev``,
``etc``) and ``LABCTL_DOCTOR_PATH`` (the PATH its commands are found on). Under a fixture
root NVML is not read. These are testing hooks, not settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import os
from pathlib import Path
import re
from typing import Any

from labctl.config import DeploymentSpec, LabConfig
from labctl.doctor.container_checks import needs_gpu
from labctl.doctor.finding import (
    SEVERITIES,
    Context,
    Finding,
    Report,
    checks,
    ignored_checks,
    run_checks,
)
from labctl.doctor.host import HostView

ROOT_ENV = "LABCTL_DOCTOR_ROOT"
PATH_ENV = "LABCTL_DOCTOR_PATH"
#: Seconds a caller waits for a run (each check bounds its own commands; this bounds them all).
RUN_TIMEOUT_S = 30.0
#: Failures outside the GPU checks that keep every engine needing a GPU from starting.
GPU_BLOCKERS = frozenset({"container-no-gpus", "nvidia-uvm-missing", "secure-boot-unsigned-module"})


def host_view(environ: Mapping[str, str] = os.environ) -> HostView:
    """This machine, or the fixture host the testing hooks name."""
    root, path = environ.get(ROOT_ENV), environ.get(PATH_ENV)
    if not root and not path:
        return HostView()
    return HostView(root=Path(root or "/"), path=path or None, nvml=None if root else ...)


def blocking(findings: Iterable[Finding], spec: DeploymentSpec, lab: LabConfig) -> list[Finding]:
    """The failures that explain why ``spec``'s engine cannot start: those that name the
    deployment (``lab: deployment NAME``), and, for an engine that needs a real GPU in
    ``lab``, those of the GPUs it runs on, of the driver (every check whose place is ``gpu``)
    and the few host and container ones without which no GPU is reached."""
    known = checks()
    gpu = needs_gpu(spec, lab)
    out = []
    for f in findings:
        if f.severity != "fail" or f.code in lab.doctor_ignore:
            continue
        if f.place == f"lab: deployment {spec.name}":
            out.append(f)
            continue
        if not gpu:
            continue
        on = re.fullmatch(r"gpu (\d+)", f.place)
        if on is not None:
            if int(on.group(1)) in spec.gpus:
                out.append(f)
        elif f.code in GPU_BLOCKERS or (f.code in known and known[f.code].place == "gpu"):
            out.append(f)
    return out


def refusal(found: Sequence[Finding]) -> str:
    """What a refused deploy says: each failure's message and remedy, and the way past a
    doctor that is wrong about this machine."""
    if not found:
        return ""
    text = "; ".join(
        f"{f.message} [{f.code}]" + (f"; fix: {f.remedy}" if f.remedy else "") for f in found
    )
    # the machine's checks only: a deployment's own (its model, its binary) would fail it anyway
    codes = list(dict.fromkeys(f.code for f in found if not f.place.startswith("lab")))
    if codes:
        text += (f"; if the doctor is wrong about this machine, lab.doctor_ignore = {codes} in "
                 "lab.toml lets deploys go ahead")  # fmt: skip
    return text


class LabDoctor:
    """The lab's doctor: one run at a time, in a worker thread; the latest report kept.

    Args:
        lab: the lab's config, for the lab's own checks and for which failures block which
            deploys.
        listeners: told of each new report (the metric, the page).
        host: the machine to check (a fresh view per run: commands run again).
    """

    def __init__(
        self,
        lab: LabConfig,
        listeners: Iterable[Callable[[Report], None]] = (),
        host: Callable[[], HostView] = host_view,
        timeout: float = RUN_TIMEOUT_S,
    ) -> None:
        ignored_checks(lab)  # a code that names no check is refused before anything starts
        self.lab = lab
        self.listeners = list(listeners)
        self.host = host
        self.timeout = timeout
        #: The latest report (None until the first run ends).
        self.report: Report | None = None
        self._running: asyncio.Task[Report] | None = None

    async def run(self) -> Report:
        """A fresh report; a run already under way is joined, not doubled.

        Raises:
            TimeoutError: the run took longer than ``timeout`` (it goes on, and its report
                is kept when it ends).
        """
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())
        return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)

    async def _run(self) -> Report:
        report = await asyncio.to_thread(lambda: run_checks(Context(self.host(), self.lab)))
        self.report = report
        for tell in self.listeners:
            tell(report)
        return report

    async def latest(self) -> Report:
        """The latest report, or the first run's once it ends."""
        return self.report if self.report is not None else await self.run()

    async def start(self, log: Callable[[str], None]) -> None:
        """The run at the daemon's start; its failures go to the log."""
        try:
            report = await self.run()
        except TimeoutError:
            log(f"doctor: no report after {self.timeout:g} s; /api/doctor shows it when it ends")
            return
        except Exception as exc:  # a bug of its own must not take the lab down
            log(f"doctor: the run failed: {type(exc).__name__}: {exc}")
            return
        for f in report.findings:
            if f.severity == "fail":
                log(f"doctor: {f.severity} {f.code}: {f.message}")

    async def refusal(self, spec: DeploymentSpec) -> str:
        """Why ``spec``'s engine cannot start here ("" if nothing stands in the way, or the
        doctor has not answered or failed).

        The latest report names the candidates; their checks run again, on the machine as it
        is now and for this revision (the report may be older than a fix, and was made for
        the deployments as lab.toml has them), and only what still fails refuses it.
        """
        lab = self._with(spec)
        try:
            report = await self.latest()
            found = blocking(report.findings, spec, lab)
            if not found:
                return ""
            codes = sorted({f.code for f in found})
            again = await asyncio.wait_for(
                asyncio.to_thread(lambda: run_checks(Context(self.host(), lab), codes)),
                self.timeout,
            )
        except Exception:  # late, or a bug of its own: the doctor never stops a deploy then
            return ""
        return refusal(blocking(again.findings, spec, lab))

    def _with(self, spec: DeploymentSpec) -> LabConfig:
        """The lab's config with ``spec`` in place of its deployment of that name."""
        others = tuple(d for d in self.lab.deployments if d.name != spec.name)
        return dataclasses.replace(self.lab, deployments=(*others, spec))

    def page(self) -> dict[str, Any] | None:
        """The dashboard's panel: the findings that are not ok, and how many checks were."""
        r = self.report
        if r is None:
            return None
        shown = sorted((f for f in r.findings if f.severity != "ok"),
                       key=lambda f: -SEVERITIES.index(f.severity))  # fmt: skip
        return {"findings": [f.to_json() for f in shown],
                "counts": {s: sum(1 for f in r.findings if f.severity == s) for s in SEVERITIES},
                "skipped": len(r.skipped), "seconds": round(r.seconds, 3)}  # fmt: skip
