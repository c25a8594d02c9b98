"""The daemon's own series: deployment states, deploy and startup durations, memory release,
restarts, the doctor's findings, and each engine's gauges and counters under labctl names
(scraped from the engine every 2 s).

Engines speak their own metric names (vLLM's ``vllm:*``, llama.cpp's ``llamacpp:*``); the
dashboard and the alert rules read one set, so the few series they need are normalised here,
by each engine adapter's map (``engines/``): gauges stay gauges, and a counter (its labctl
name ends in ``_total``, as vLLM's API server process's ``process_cpu_seconds_total`` →
``labctl_engine_api_server_cpu_seconds_total``) stays a counter with the engine's value.
The controller leaves what it timed in ``observations``; they become histogram samples on
the next scrape, tick or API answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
import functools
import re
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from labctl.dashboard.bottleneck import CLASSES
from labctl.deploy.controller import Controller
from labctl.deploy.deployment import STATES
from labctl.deploy.journal import OUTCOMES
from labctl.doctor.finding import SEVERITIES, Report
from labctl.engines import adapter, adapters

DEPLOY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
RELEASE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
#: Kinds of swap a deploy is counted as: a start (cold) or a wake of a sleeping revision (warm).
SWAPS = ("cold", "warm")


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.state = Gauge("labctl_deployment_state", "1 for the state each deployment is in.",
                           ["deployment", "state"], registry=r)  # fmt: skip
        self.bottleneck = Gauge("labctl_deployment_bottleneck",
                                "1 for what limits each deployment now (its bottleneck class).",
                                ["deployment", "class"], registry=r)  # fmt: skip
        self.deploy = Histogram("labctl_deploy_duration_seconds",
                                "Time a deploy took, by outcome and kind of swap (warm: it "
                                "woke a sleeping revision; cold: anything else).",
                                ["outcome", "swap"], buckets=DEPLOY_BUCKETS, registry=r)  # fmt: skip
        self.startup = Histogram("labctl_engine_startup_seconds", "Engine startup time, by phase.",
                                 ["phase"], buckets=DEPLOY_BUCKETS, registry=r)  # fmt: skip
        self.release = Histogram("labctl_memory_release_seconds",
                                 "Time from an engine's exit to its GPU memory being free.",
                                 buckets=RELEASE_BUCKETS, registry=r)  # fmt: skip
        self.release_failures = Counter("labctl_memory_release_failures_total",
                                        "Stopped engines whose GPU memory was still held after "
                                        "the release timeout.", registry=r)  # fmt: skip
        self.restarts = Counter("labctl_engine_restarts_total",
                                "Engine restarts outside a deploy, by reason.",
                                ["deployment", "reason"], registry=r)  # fmt: skip
        self.doctor = Gauge("labctl_doctor_findings",
                            "Findings of the lab's latest doctor run, by severity and check.",
                            ["severity", "code"], registry=r)  # fmt: skip
        for outcome in OUTCOMES:  # each from 0, so increase() sees the first
            for swap in SWAPS:
                self.deploy.labels(outcome, swap)
        mapped = sorted({v for a in adapters().values() for v in a.metrics.values()})
        self.engine = {
            name: Gauge(name, f"Normalised from the engine's own {name.split('_', 2)[-1]}.",
                        ["deployment"], registry=r)
            for name in mapped if not name.endswith("_total")
        }  # fmt: skip
        #: The engines' counters (names ending in ``_total``), each deployment's last value.
        self.engine_counters = _Counters([n for n in mapped if n.endswith("_total")])
        r.register(self.engine_counters)

    def restarts_of(self, name: str) -> None:
        """A deployment's engine exited and is being restarted."""
        self.restarts.labels(name, "exited").inc()

    def on_state(self, event: dict[str, Any]) -> None:
        """A deployment changed state: its state gauge, and its restart counter from 0."""
        self.restarts.labels(event["deployment"], "exited")  # a 0 from the start
        for state in STATES:
            self.state.labels(event["deployment"], state).set(1 if state == event["state"] else 0)

    def on_bottlenecks(self, classes: dict[str, str]) -> None:
        """Each deployment's bottleneck class this tick (1; its other classes 0), the
        deployments that are gone dropped."""
        self.bottleneck.clear()
        for name, now in classes.items():
            for cls in CLASSES:
                self.bottleneck.labels(name, cls).set(1 if cls == now else 0)

    def on_doctor(self, report: Report) -> None:
        """A new doctor report: each check's findings by severity (0 included), the checks it
        skipped gone."""
        self.doctor.clear()
        for code in {f.code for f in report.findings}:
            for severity in SEVERITIES:
                n = sum(1 for f in report.findings if (f.code, f.severity) == (code, severity))
                self.doctor.labels(severity, code).set(n)

    def drain(self, observations: list[tuple[str, dict[str, Any]]]) -> None:
        """What the controller timed since the last call, into the histograms."""
        for kind, data in observations:
            if kind == "deploy":
                self.deploy.labels(data["outcome"], data.get("swap", "cold")).observe(
                    data["seconds"]
                )
            elif kind == "release":
                self.release.observe(data["seconds"])
            elif kind == "release_failed":
                self.release_failures.inc()
            elif kind == "startup":
                for phase, seconds in data.items():
                    self.startup.labels(phase).observe(seconds)
        observations.clear()

    async def scrape_engines(self, controller: Controller) -> None:
        """Every 2 s: each running engine's gauges under labctl names."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self.drain(controller.observations)
                for d in list(controller.deployments.values()):
                    e = d.engine
                    if e is None or e.process.returncode is not None:
                        continue
                    e.process.track()  # remember workers while they are still its children
                    names = adapter(d.spec.engine).metrics
                    if not names:
                        continue  # it has no /metrics (whisper-server): the gateway's carry it
                    try:
                        async with http.get(e.url + "/metrics", headers=e.headers()) as r:
                            text = await r.text() if r.status == 200 else ""
                    except (aiohttp.ClientError, TimeoutError):
                        continue
                    try:
                        gauges = engine_gauges(text, names)
                    except ValueError:
                        continue  # not Prometheus text (a command engine's own page)
                    for target, value in gauges.items():
                        if target in self.engine:
                            self.engine[target].labels(d.name).set(value)
                        else:
                            self.engine_counters.values[target][d.name] = value
                await asyncio.sleep(2.0)


class _Counters(Collector):
    """Engine counters under labctl names: each deployment's value as its engine's page last
    gave it (a restarted engine's starts again from 0, which ``rate()`` takes as a reset)."""

    def __init__(self, names: list[str]) -> None:
        self.values: dict[str, dict[str, float]] = {name: {} for name in names}

    def collect(self) -> Iterable[Metric]:
        for name, by_deployment in self.values.items():
            family = CounterMetricFamily(name.removesuffix("_total"), "Normalised from the "
                                         f"engine's own {name.split('_', 2)[-1]}.",
                                         labels=["deployment"])  # fmt: skip
            for deployment, value in sorted(by_deployment.items()):
                family.add_metric([deployment], value)
            yield family


@functools.lru_cache(maxsize=16)
def _wanted(names: frozenset[str]) -> re.Pattern[str]:
    """The lines of a page that are about ``names``: their samples, HELP and TYPE."""
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    return re.compile(rf"^(?:# (?:HELP|TYPE) )?(?:{alternatives})[ \t{{].*$", re.MULTILINE)


def engine_gauges(text: str, names: Mapping[str, str]) -> dict[str, float]:
    """The gauges and counters an engine adapter maps (engine name → labctl name) off its
    /metrics page, each summed over its samples (a data-parallel vLLM has one per engine core).

    Only the lines about those names are parsed, found by one regular expression: the rest
    of the page, mostly histograms, would otherwise be parsed in Python on the event loop at
    every scrape (the twin's page, vLLM's metric set at 32 KB: 9 ms parsed whole, 0.4 ms
    this way). A gauge's samples are named as it is, a counter's with its ``_total``.

    Raises:
        ValueError: a line about one of the names is not Prometheus text.
    """
    lines = _wanted(frozenset(names)).findall(text)
    out: dict[str, float] = {}
    if not lines:
        return out
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        # a counter's family is named without its samples' "_total"
        target = names.get(family.name) or names.get(family.name + "_total")
        own = [s for s in family.samples if s.name in (family.name, family.name + "_total")]
        if target and own:
            out[target] = sum(s.value for s in own)
    return out
