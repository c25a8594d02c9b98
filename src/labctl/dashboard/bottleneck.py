"""The bottleneck answer for the lab: what limits each deployment now.

Every dashboard tick :class:`Tracker` builds each deployment's :class:`Signals` from what the
board has just read (requests running and waiting in the engine, queued at the gateway, KV
cache usage, prompt and generated tokens/s over the last minute), its GPUs' clock event
reasons, how its start goes (the journal's prediction: is it disk-bound?) and the twin's
roofline for the deployment's model on its GPU at the mean batch of the last minute, and
classifies them. The classes and their rules are ``sim/bottleneck.py``'s (the same
classifier ``labctl sim run --explain`` uses); they are re-exported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import functools
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

__all__ = ["CLASSES", "KV_FULL", "KV_SATURATED", "PREFILL_RATIO", "SERVING", "THROTTLES",
           "Roofline", "Signals", "Tracker", "classify", "deployment_roofline", "roofline"]  # fmt: skip


@functools.cache
def _perf(model: str, gpu_name: str, tp: int, max_model_len: int | None,
          eager: bool) -> tuple[PerfModel, int] | None:  # fmt: skip
    """The perf model and KV cache tokens of ``model`` on ``gpu_name`` (None: not known)."""
    from labctl.cache.resolve import resolve_model
    from labctl.fit.plan import FitRequest, plan

    spec = match_nvml_name(gpu_name)
    if spec is None:
        return None
    try:
        arch = resolve_model(model, hub=False)  # never the network: this runs on the loop
        req = FitRequest.on_gpu(spec, tensor_parallel_size=tp, max_model_len=max_model_len,
                                enforce_eager=eager)  # fmt: skip
        fit = plan(arch, req, suggest=False)
    except (LabError, ValueError):
        return None
    if not fit.fits:
        return None
    return PerfModel.build(arch, fit, spec), fit.kv_cache_tokens


def deployment_roofline(d: Mapping[str, Any], gpu_names: Mapping[int, str],
                        running: float, kv: float | None) -> Roofline | None:  # fmt: skip
    """The roofline of deployment status ``d`` (its model, GPUs and twin args) at the batch."""
    gpus = d.get("gpus") or [0]
    name = gpu_names.get(gpus[0])
    args = d.get("roofline_args") or {}
    if not d.get("model") or name is None:
        return None
    mml = args.get("max_model_len")
    found = _perf(str(d["model"]), name, len(gpus), mml if isinstance(mml, int) else None,
                  bool(args.get("enforce_eager")))  # fmt: skip
    if found is None:
        return None
    perf, kv_tokens = found
    scale = args.get("time_scale") if d.get("engine") == "sim" else 1.0
    scale = float(scale) if isinstance(scale, int | float) else 1.0
    return roofline(perf, running, (kv or 0.0) * kv_tokens, scale)


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

    def on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") == "startup" and event.get("deployment"):
            self.starts[str(event["deployment"])] = dict(event)

    def update(
        self,
        deployments: Sequence[Mapping[str, Any]],
        serving: Mapping[str, Mapping[str, float]],
        gpus: Mapping[int, dict[str, Any]],
        timeline: Sequence[Mapping[str, Any]],
    ) -> dict[str, str]:
        """Classify every deployment; returns deployment → class."""
        names = {int(i): str(g.get("name") or "") for i, g in gpus.items()}
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
            start = None
            if d.get("state") == "starting":
                start = {**self.starts.get(name, {}), **_predicted(name, timeline)}
            sig = Signals(str(d.get("state")), running, s.get("requests_waiting", 0.0),
                          s.get("requests_queued", 0.0), kv, s.get("tokens_prompt", 0.0),
                          s.get("tokens_completion", 0.0), reasons, start,
                          deployment_roofline(d, names, batch, kv), batch)  # fmt: skip
            self.now[name] = classify(sig)
            self.history.setdefault(name, deque(maxlen=self.points)).append(self.now[name]["class"])
        for gone in set(self.now) - {str(d["name"]) for d in deployments}:
            del self.now[gone]
            self.history.pop(gone, None)
            self.batches.pop(gone, None)
        return {n: b["class"] for n, b in self.now.items()}


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
