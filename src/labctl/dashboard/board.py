"""The daemon's own view of its metrics: an hour of samples, the panels' history, the alerts.

Every tick (5 s by default) the board takes the daemon's metrics as a scrape would
see them, keeps the series that the rules and panels read in a :class:`Store`,
evaluates every panel query and alert rule on it, and keeps each panel series'
values for the history window. The built-in page loads :meth:`Board.snapshot`
once and then appends each tick's values from the event stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
import math
import re
from typing import Any

from labctl.dashboard.alerts import ALERTS, Firing, RuleEngine
from labctl.dashboard.panels import PANELS, daemon_queries
from labctl.dashboard.promql import Cache, Store, evaluate, metric_names

Sample = tuple[str, dict[str, str], float]


@dataclass
class _History:
    panel: str
    role: str
    legend: str
    labels: dict[str, str]
    values: deque[float | None]


def _num(value: float) -> float | None:
    """A JSON-safe value with four significant digits (NaN and infinities as null)."""
    if math.isnan(value) or math.isinf(value):
        return None
    return float(f"{value:.4g}")


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


class Board:
    def __init__(
        self,
        collect: Callable[[], Iterable[Sample]],
        interval: float = 5.0,
        history: float = 3600.0,
        for_scale: float = 1.0,
    ) -> None:
        self.collect = collect
        self.interval = interval
        self.history = history
        self.queries = daemon_queries()
        names = {n for a in ALERTS for n in metric_names(a.expr)}
        names |= {n for _, _, expr in self.queries for n in metric_names(expr)}
        # The rules look back up to an hour (rate over 1h); keep a little more.
        self.store = Store(retention=max(3900.0, history + 60), names=names)
        self.rules = RuleEngine(ALERTS, for_scale)
        self.points = max(2, int(history / interval) + 1)
        self.times: deque[float] = deque(maxlen=self.points)
        self.series: dict[str, _History] = {}
        self.alerts: list[Firing] = []
        self.errors: dict[str, str] = {}

    def tick(self, now: float) -> dict[str, Any]:
        """Take the metrics at ``now`` (wall clock); returns what changed, for the stream.

        A query or rule that fails is skipped (its error kept in :attr:`errors`); the tick's
        time and every series' value are appended together, so the history stays aligned.
        """
        self.store.add(now, self.collect())
        cache: Cache = {}
        values: dict[str, float | None] = {}
        new: dict[str, _History] = {}
        for panel, query, expr in self.queries:
            try:
                result = evaluate(expr, self.store, now, cache)
            except Exception as exc:
                self.errors[f"panel {panel.id}"] = f"{type(exc).__name__}: {exc}"
                continue
            self.errors.pop(f"panel {panel.id}", None)
            if not isinstance(result, list):
                result = [((), result)]
            for key, value in result:
                labels = {k: v for k, v in key if k != "__name__"}
                sid = "|".join(
                    [panel.id, query.role, *(f"{k}={v}" for k, v in sorted(labels.items()))]
                )
                if sid not in self.series and sid not in new:
                    legend = _legend(query.legend, labels)
                    new[sid] = _History(
                        panel.id, query.role, legend, labels, deque(maxlen=self.points)
                    )
                values[sid] = _num(value)
        self.times.append(now)
        for sid, h in new.items():
            h.values.extend([None] * (len(self.times) - 1))  # aligned with the earlier ticks
            self.series[sid] = h
        for sid, h in list(self.series.items()):
            h.values.append(values.get(sid))
            if sid not in values and all(v is None for v in h.values):
                del self.series[sid]
        self.alerts = self.rules.evaluate(self.store, now, cache)
        for name, error in self.rules.errors.items():
            self.errors[f"rule {name}"] = error
        for gone in [e for e in self.errors if e.startswith("rule ")]:
            if gone.removeprefix("rule ") not in self.rules.errors:
                del self.errors[gone]
        added = {sid: self._meta(h) for sid, h in new.items()}
        return {"t": now, "values": values, "series": added, "alerts": self.alert_docs()}

    def alert_docs(self) -> list[dict[str, Any]]:
        return [f.doc() for f in self.alerts]

    def firing(self) -> list[Firing]:
        return [f for f in self.alerts if f.state == "firing"]

    @staticmethod
    def _meta(h: _History) -> dict[str, Any]:
        return {"panel": h.panel, "role": h.role, "legend": h.legend, "labels": h.labels}

    def latest(self, panel: str) -> list[tuple[dict[str, str], str, float]]:
        """The panel's series with a current value: labels, role, value."""
        out = []
        for h in self.series.values():
            if h.panel == panel and h.values and h.values[-1] is not None:
                out.append((h.labels, h.role, float(h.values[-1])))
        return out

    def gpu_now(self, index: int) -> dict[str, Any]:
        """The board's latest GPU values: memory by owner, utilization, power, temperature."""
        gpu = str(index)
        out: dict[str, Any] = {"memory_by_deployment": {}, "throttle_reasons": []}
        for panel, field in (("gpu_util", "util_percent"), ("gpu_temp", "temperature_c")):
            out[field] = next(
                (v for lab, _, v in self.latest(panel) if lab.get("gpu") == gpu), None
            )
        for labels, role, value in self.latest("gpu_power"):
            if labels.get("gpu") == gpu and role == "draw":
                out["power_watts"] = value
        for labels, role, value in self.latest("gpu_memory"):
            if labels.get("gpu") != gpu:
                continue
            if role == "deployment":
                out["memory_by_deployment"][labels.get("deployment", "")] = value
            elif role == "unaccounted":
                out["unaccounted_bytes"] = value
        for labels, _, value in self.latest("gpu_throttle"):
            if labels.get("gpu") == gpu and value == 1 and labels.get("reason") != "gpu_idle":
                out["throttle_reasons"].append(labels.get("reason"))
        return out

    def serving_now(self) -> dict[str, dict[str, float]]:
        """Per deployment: the board's latest running, waiting, queued, KV, API server CPU
        (``api_cpu``), latency, tokens/s."""
        out: dict[str, dict[str, float]] = {}
        for panel in ("dep_requests", "dep_kv", "dep_api", "dep_ttft", "dep_itl", "dep_e2e",
                      "dep_tokens"):  # fmt: skip
            for labels, role, value in self.latest(panel):
                name = labels.get("deployment") or labels.get("model") or ""
                key = panel.removeprefix("dep_") + (f"_{role}" if role else "")
                out.setdefault(name, {})[key] = value
        return out

    def speech_now(self) -> dict[str, dict[str, Any]]:
        """Per deployment that serves speech: the board's latest RTFx and its floor, audio
        seconds and requests per second, requests queued and in flight, and p50/p95 latency
        by audio length (``latency["<=30s"]["p95"]``), lengths in order."""
        out: dict[str, dict[str, Any]] = {}
        names = {"rtfx": "rtfx", "floor": "rtfx_floor", "audio": "audio_seconds_per_second",
                 "requests": "requests_per_second", "queued": "queued",
                 "in_flight": "in_flight"}  # fmt: skip
        for panel in ("speech_rtfx", "speech_audio", "speech_queue"):
            for labels, role, value in self.latest(panel):
                out.setdefault(labels.get("model", ""), {})[names[role]] = value
        latency: dict[str, dict[str, dict[str, float]]] = {}
        for labels, role, value in self.latest("speech_latency"):
            by_length = latency.setdefault(labels.get("model", ""), {})
            by_length.setdefault(labels.get("audio_length", ""), {})[role] = value
        for name, by_length in latency.items():
            out.setdefault(name, {})["latency"] = {
                length: by_length[length] for length in sorted(by_length, key=length_order)
            }
        return out

    def vla_now(self) -> dict[str, dict[str, float]]:
        """Per deployment that serves actions: the board's latest actions per second (all
        robots together) and the target control rate (``control_hz``, one robot's), action
        latency p50/p90/p99 and the deadline of one action (1/control_hz), the share of
        answers that missed their deadline, and requests queued and in flight."""
        names = {
            ("vla_rate", "actions"): "actions_per_second", ("vla_rate", "target"): "control_hz",
            ("vla_latency", "p50"): "latency_p50", ("vla_latency", "p90"): "latency_p90",
            ("vla_latency", "p99"): "latency_p99", ("vla_latency", "deadline"): "deadline_seconds",
            ("vla_misses", "misses"): "deadline_miss_ratio", ("vla_queue", "queued"): "queued",
            ("vla_queue", "in_flight"): "in_flight",
        }  # fmt: skip
        out: dict[str, dict[str, float]] = {}
        for panel in ("vla_rate", "vla_latency", "vla_misses", "vla_queue"):
            for labels, role, value in self.latest(panel):
                out.setdefault(labels.get("model", ""), {})[names[panel, role]] = value
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "history": self.history,
            "panels": [
                {"id": p.id, "title": p.title, "section": p.section, "unit": p.unit,
                 "description": p.description, "kind": p.kind, "stacked": p.stacked}
                for p in PANELS if not p.grafana_only
            ],
            "times": list(self.times),
            "series": {sid: {**self._meta(h), "values": list(h.values)}
                       for sid, h in self.series.items()},
            "alerts": self.alert_docs(),
            "errors": dict(self.errors),
        }  # fmt: skip


def length_order(label: str) -> tuple[float, str]:
    """Where an ``audio_length`` label (``<=5s`` … ``>60s``, ``unknown``) sorts: by length."""
    m = re.fullmatch(r"(<=|>)(\d+(?:\.\d+)?)s", label)
    if m is None:
        return math.inf, label
    return float(m.group(2)) + (0.5 if m.group(1) == ">" else 0.0), label


def samples(families: Iterable[Any]) -> Iterable[Sample]:
    """(name, labels, value) of every sample in prometheus_client metric families."""
    for family in families:
        for s in family.samples:
            yield s.name, s.labels, s.value
