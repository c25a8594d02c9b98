"""The bottleneck answer for the lab: what limits each deployment now.

Every dashboard tick :class:`Tracker` builds each deployment's :class:`Signals` from what the
board has just read (requests running and waiting in the engine, queued at the gateway, KV
cache usage, prompt and generated tokens/s and the API server's CPU over the last minute),
its GPUs' clock event reasons, how its start goes (the journal's prediction: is it
disk-bound?) and the twin's roofline for the deployment's model on its GPU at the mean batch
of the last minute, and classifies them. The classes and their rules are
``sim/bottleneck.py``'s (the same classifier ``labctl sim run --explain`` uses); they are
re-exported here.

The roofline needs the planner's fit and the twin's perf model for the deployment's model,
GPUs and flags: hundreds of milliseconds or more, too slow for the daemon's event loop.
:class:`Perfs` builds each one once, on a worker thread, from the moment a deployment starts;
until it is there the tick classifies without a roofline, as for a model the catalog does
not know, and the next tick after it is built uses it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
import logging
from typing import Any

from labctl.catalog.gpus import match_nvml_name
from labctl.errors import LabError
from labctl.sim.bottleneck import (
    CLASSES,
    KV_FULL,
    KV_SATURATED,
    PREFILL_RATIO,
    SERVING,
    THROTTLES,
    Roofline,
    Signals,
    classify,
    roofline,
)
from labctl.sim.perf import PerfModel

__all__ = ["CLASSES", "KV_FULL", "KV_SATURATED", "PREFILL_RATIO", "SERVING", "THROTTLES", "Built",
           "PerfKey", "Perfs", "Roofline", "Signals", "Tracker", "build_perf", "classify",
           "deployment_roofline", "perf_key", "roofline"]  # fmt: skip

#: What a perf model is built from: model, GPU name, tensor parallel size, max model length
#: (None: the model's own), enforce eager.
PerfKey = tuple[str, str, int, int | None, bool]
#: A built perf model and the KV cache tokens it has room for.
Built = tuple[PerfModel, int]


def perf_key(d: Mapping[str, Any], gpu_names: Mapping[int, str]) -> PerfKey | None:
    """What the roofline of deployment status ``d`` is built from (None: no model or GPU)."""
    gpus = d.get("gpus") or [0]
    name = gpu_names.get(gpus[0])
    args = d.get("roofline_args") or {}
    if not d.get("model") or not name:
        return None
    mml = args.get("max_model_len")
    return (str(d["model"]), name, len(gpus), mml if isinstance(mml, int) else None,
            bool(args.get("enforce_eager")))  # fmt: skip


def build_perf(key: PerfKey) -> Built | None:
    """The perf model and KV cache tokens for ``key`` (None: not known, or it does not fit).
    Slow (the planner and the perf model): never on the event loop."""
    from labctl.cache.resolve import resolve_model
    from labctl.fit.plan import FitRequest, plan

    model, gpu_name, tp, max_model_len, eager = key
    spec = match_nvml_name(gpu_name)
    if spec is None:
        return None
    try:
        arch = resolve_model(model, hub=False)  # never the network
        req = FitRequest.on_gpu(spec, tensor_parallel_size=tp, max_model_len=max_model_len,
                                enforce_eager=eager)  # fmt: skip
        fit = plan(arch, req, suggest=False)
    except (LabError, ValueError):
        return None
    if not fit.fits:
        return None
    return PerfModel.build(arch, fit, spec), fit.kv_cache_tokens


@dataclass
class Perfs:
    """The perf models the rooflines need, each built once on a worker thread: asking never
    blocks, and one key is never built twice at a time. Used from the event loop only."""

    build: Callable[[PerfKey], Built | None] = build_perf
    #: Where a build that fails for a reason other than an unknown model goes, once per key.
    log: Callable[[str], None] = logging.getLogger(__name__).warning
    built: dict[PerfKey, Built | None] = field(default_factory=dict)
    building: dict[PerfKey, Future[Built | None]] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def get(self, key: PerfKey) -> Built | None:
        """The perf model for ``key`` if it is built; else None, its build started."""
        if key in self.built:
            return self.built[key]
        job = self.building.get(key)
        if job is None:
            if self._pool is None:  # one thread: the builds are CPU-bound, the host's is shared
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="labctl-roofline")
            self.building[key] = self._pool.submit(self.build, key)
            return None
        if not job.done():
            return None
        del self.building[key]
        try:
            self.built[key] = job.result()
        except Exception as exc:  # a failed build leaves the deployment without a roofline
            self.log(f"dashboard: the roofline of {key[0]} on {key[1]} failed "
                     f"({type(exc).__name__}: {exc}); classified without it")  # fmt: skip
            self.built[key] = None
        return self.built[key]


def deployment_roofline(
    d: Mapping[str, Any], gpu_names: Mapping[int, str], running: float, kv: float | None,
    perf: Callable[[PerfKey], Built | None] = build_perf,
) -> Roofline | None:  # fmt: skip
    """The roofline of deployment status ``d`` (its model, GPUs and twin args) at the batch,
    its perf model from ``perf`` (by default built here and now: slow)."""
    key = perf_key(d, gpu_names)
    found = None if key is None else perf(key)
    if found is None:
        return None
    model, kv_tokens = found
    scale = (d.get("roofline_args") or {}).get("time_scale") if d.get("engine") == "sim" else 1.0
    scale = float(scale) if isinstance(scale, int | float) else 1.0
    return roofline(model, running, (kv or 0.0) * kv_tokens, scale)


@dataclass
class Tracker:
    """Each deployment's class now, and the classes over the board's history window."""

    points: int = 721
    #: Ticks in the tokens/s window (a minute): the batch the roofline is for is their mean.
    window: int = 12
    now: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Requests running at each tick of the window.
    batches: dict[str, deque[float]] = field(default_factory=dict)
    history: dict[str, deque[str]] = field(default_factory=dict)
    #: The latest startup progress of each deployment (its ``startup`` events).
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The perf models of the deployments' rooflines, built off the event loop.
    perfs: Perfs = field(default_factory=Perfs)

    def on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") == "startup" and event.get("deployment"):
            self.starts[str(event["deployment"])] = dict(event)

    def warm(self, deployments: Sequence[Mapping[str, Any]],
             gpus: Mapping[int, Mapping[str, Any]]) -> None:  # fmt: skip
        """Start building the roofline of each deployment that starts or serves, so that it
        is there by the tick after it is ready."""
        names = _names(gpus)
        for d in deployments:
            key = perf_key(d, names)
            if key is not None and (d.get("state") == "starting" or d.get("state") in SERVING):
                self.perfs.get(key)

    def update(
        self,
        deployments: Sequence[Mapping[str, Any]],
        serving: Mapping[str, Mapping[str, float]],
        gpus: Mapping[int, dict[str, Any]],
        timeline: Sequence[Mapping[str, Any]],
    ) -> dict[str, str]:
        """Classify every deployment; returns deployment → class. Never waits for a
        roofline: one still being built is left out until a later tick."""
        names = _names(gpus)
        for d in deployments:
            name = str(d["name"])
            s = serving.get(name, {})
            running, kv = s.get("requests_running", 0.0), s.get("kv")
            seen = self.batches.setdefault(name, deque(maxlen=max(1, self.window)))
            if seen.maxlen != max(1, self.window):
                seen = self.batches[name] = deque(seen, maxlen=max(1, self.window))
            seen.append(running)
            batch = sum(seen) / len(seen)
            reasons = tuple(r for i in d.get("gpus") or [] for r in
                            (gpus.get(i) or {}).get("throttle_reasons") or [])  # fmt: skip
            start = roof = None
            if d.get("state") == "starting":
                start = {**self.starts.get(name, {}), **_predicted(name, timeline)}
            elif d.get("state") in SERVING:  # only the serving classes read the roofline
                roof = deployment_roofline(d, names, batch, kv, self.perfs.get)
            sig = Signals(str(d.get("state")), running, s.get("requests_waiting", 0.0),
                          s.get("requests_queued", 0.0), kv, s.get("tokens_prompt", 0.0),
                          s.get("tokens_completion", 0.0), reasons, start, roof,
                          batch, s.get("api_cpu"))  # fmt: skip
            self.now[name] = classify(sig)
            self.history.setdefault(name, deque(maxlen=self.points)).append(self.now[name]["class"])
        for gone in set(self.now) - {str(d["name"]) for d in deployments}:
            del self.now[gone]
            self.history.pop(gone, None)
            self.batches.pop(gone, None)
        return {n: b["class"] for n, b in self.now.items()}


def _names(gpus: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
    """GPU index → its name, as the rooflines look the GPU up."""
    return {int(i): str(g.get("name") or "") for i, g in gpus.items()}


def _predicted(name: str, timeline: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the start of ``name`` in progress should be disk-bound, by its prediction (the
    newest deploy's start step in the journal's ``timeline``)."""
    for deploy in timeline:
        if deploy.get("deployment") != name:
            continue
        for step in reversed(deploy.get("steps") or []):
            p = (step.get("detail") or {}).get("predicted")
            if not isinstance(p, dict):
                continue
            phases = p.get("phases") or {}
            disk, loader = p.get("disk_gbps"), p.get("loader_gbps")
            if not phases or not disk:
                return {"disk_bound": None}
            weights_first = max(phases, key=lambda k: phases[k]) == "weights"
            slower = loader is None or disk < loader
            why = (p.get("basis") or {}).get("weights")
            return {"disk_bound": bool(weights_first and slower), "why": why}
        return {}
    return {}
