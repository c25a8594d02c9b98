"""The gateway's series, and each deployment's children of them bound once.

The relay observes a latency per streamed token, on the event loop. prometheus_client's
histogram takes a lock and scans its buckets in Python per observation, and ``labels()``
looks a child up under a lock each call: on a path that costs a few microseconds per
chunk in all, that was a large share. So the latency histograms here are
:class:`LoopHistogram` (observed only from the event loop's thread: no lock, one
``bisect``), exposed exactly as prometheus_client's are (``_bucket``, ``_count``,
``_sum``; no ``_created``), and :meth:`GatewayMetrics.bound` keeps each deployment's
children after its first request.

Every series is per deployment, in the label ``model`` (the deployment's name). Speech
deployments (``/v1/audio/…``) add:

- ``labctl_gateway_audio_seconds_total{model}``: seconds of audio in requests answered 200;
- ``labctl_gateway_audio_request_duration_seconds{model, audio_length}``: request duration
  by the clip's length (``<=5s``, ``<=10s``, ``<=30s``, ``<=60s``, ``>60s``, ``unknown``);
- ``labctl_gateway_realtime_factor{model}``: audio seconds answered per wall second over the
  last minute (RTFx, live);
- ``labctl_gateway_rtfx_floor{model}``: the deployment's ``rtfx_floor`` from lab.toml (1.0
  unless set), below which it falls behind while requests queue.

VLA deployments (``/vla/{model}/act``) add:

- ``labctl_vla_action_latency_seconds{model}``: from the gateway receiving a camera frame to
  its action (time held through a swap included), buckets for 5-50 Hz control;
- ``labctl_vla_actions_total{model}``: actions answered (a chunk of K counts K);
- ``labctl_vla_deadline_misses_total{model}``: answers later than their deadline, which is
  1/control_hz per action they carry (a chunk of K covers K ticks);
- ``labctl_vla_control_hz{model}``: the deployment's ``control_hz`` (5 unless set).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
import math
import time
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, utils
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from labctl.audio import bucket
from labctl.gateway.relay import usage_counts
from labctl.sim.live import ITL_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS

#: How prometheus_client writes a bucket's ``le`` (so the series match its own exactly).
_le: Callable[[float], str] = cast(Callable[[float], str], utils.floatToGoString)


class HistogramChild:
    """One label set of a :class:`LoopHistogram`."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value``."""
        if value <= 0.0:  # events read together: no gap between them
            self.counts[0] += count
            return
        self.counts[bisect_left(self.bounds, value)] += count  # le: the first bound ≥ value
        self.sum += value * count


class LoopHistogram(Collector):
    """A histogram with labels, for observations made on the event loop's thread only.

    Scrapes may come from any thread: what they read is at worst one observation behind
    in some bucket, as with prometheus_client's own.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        self._le = [_le(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            total, buckets = 0, []
            for le, n in zip(self._le, list(child.counts), strict=True):
                total += n
                buckets.append((le, float(total)))
            family.add_metric(list(values), buckets, child.sum)
        return [family]


class Bound:
    """One deployment's children of the gateway's series."""

    __slots__ = ("duration", "itl", "ok", "queue_wait", "tokens", "ttft")

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self.queue_wait = metrics.queue_wait.labels(name)
        self.ttft = metrics.ttft.labels(name)
        self.itl = metrics.itl.labels(name)
        self.duration = metrics.duration.labels(name)
        self.ok: Any = metrics.requests.labels(name, "200")
        self.tokens: dict[str, Any] = {
            kind: metrics.tokens.labels(name, kind) for kind in ("prompt", "completion")
        }

    def count_usage(self, data: bytes) -> None:
        """Token counts from a usage event or a whole answer (``prompt``, ``completion``)."""
        for kind, n in usage_counts(data).items():
            self.tokens[kind].inc(n)


#: Request durations of speech (seconds): a short clip on a fast GPU to a long file queued.
AUDIO_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: The window of the live real-time factor (seconds).
RTF_WINDOW = 60.0


class AudioBound:
    """One speech deployment's audio series, and the answers of the last minute."""

    __slots__ = ("by_length", "clock", "recent", "seconds")

    def __init__(self, metrics: GatewayMetrics, name: str, clock: Callable[[], float]) -> None:
        self.seconds = metrics.audio_seconds.labels(name)
        self.by_length = {b: metrics.audio_duration.labels(name, b)
                          for b in (*(bucket(e) for e in (0, 6, 11, 31, 61)), "unknown")}  # fmt: skip
        self.clock = clock
        #: (when answered, audio seconds), oldest first.
        self.recent: deque[tuple[float, float]] = deque()
        metrics.realtime.labels(name).set_function(self.realtime_factor)

    def observe(self, audio_seconds: float | None, duration: float) -> None:
        """A request answered 200: its audio's length (None: unknown) and its duration."""
        self.by_length[bucket(audio_seconds)].observe(duration)
        if audio_seconds:
            self.seconds.inc(audio_seconds)
            self.recent.append((self.clock(), audio_seconds))

    def realtime_factor(self) -> float:
        """Audio seconds answered per wall second over the last minute."""
        cutoff = self.clock() - RTF_WINDOW
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()
        return sum(s for _, s in list(self.recent)) / RTF_WINDOW


#: Action latency (seconds): 50 Hz control to a request held through a swap.
ACTION_BUCKETS = (0.01, 0.02, 0.033, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class VlaBound:
    """One VLA deployment's series."""

    __slots__ = ("actions", "latency", "misses")

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self.latency = metrics.action_latency.labels(name)
        self.actions = metrics.actions.labels(name)
        self.misses = metrics.deadline_misses.labels(name)

    def observe(self, seconds: float, actions: int, control_hz: float) -> None:
        """An action answered after ``seconds``: ``actions`` of them (a chunk's rows)."""
        self.latency.observe(seconds)
        self.actions.inc(actions)
        if seconds > actions / control_hz:
            self.misses.inc()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter("labctl_gateway_requests", "Requests answered, by model and status.",
                                ["model", "code"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("labctl_gateway_queue_depth", "Requests waiting for a slot.",
                                 ["model"], registry=r)  # fmt: skip
        self.in_flight = Gauge("labctl_gateway_in_flight", "Requests running upstream.",
                               ["model"], registry=r)  # fmt: skip

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> LoopHistogram:
            return LoopHistogram(f"labctl_gateway_{name}", doc, ["model"], buckets, r)

        self.queue_wait = hist("queue_wait_seconds",
                               "Time requests waited for a slot (held through swaps included).",
                               TTFT_BUCKETS)  # fmt: skip
        self.ttft = hist(
            "time_to_first_token_seconds",
            "From the gateway receiving a request to its first token.",
            TTFT_BUCKETS,
        )
        self.itl = hist("inter_token_latency_seconds", "Between streamed events of a response.",
                        ITL_BUCKETS)  # fmt: skip
        self.duration = hist("request_duration_seconds",
                             "From the gateway receiving a request to its last byte.",
                             REQUEST_BUCKETS)  # fmt: skip
        self.tokens = Counter("labctl_gateway_tokens", "Tokens, by kind (prompt, completion).",
                              ["model", "kind"], registry=r)  # fmt: skip
        self.audio_seconds = Counter("labctl_gateway_audio_seconds",
                                     "Seconds of audio in speech requests answered 200.",
                                     ["model"], registry=r)  # fmt: skip
        self.audio_duration = LoopHistogram(
            "labctl_gateway_audio_request_duration_seconds",
            "Speech request duration, by the length of its audio.",
            ["model", "audio_length"], AUDIO_BUCKETS, r)  # fmt: skip
        self.realtime = Gauge("labctl_gateway_realtime_factor",
                              "Audio seconds answered per wall second over the last minute (RTFx).",
                              ["model"], registry=r)  # fmt: skip
        self.rtfx_floor = Gauge("labctl_gateway_rtfx_floor",
                                "The real-time factor below which a speech deployment falls "
                                "behind while requests queue (lab.toml rtfx_floor).",
                                ["model"], registry=r)  # fmt: skip
        self.action_latency = LoopHistogram(
            "labctl_vla_action_latency_seconds",
            "From the gateway receiving a camera frame to its action.", ["model"], ACTION_BUCKETS, r)  # fmt: skip
        self.actions = Counter("labctl_vla_actions", "Actions answered (a chunk of K counts K).",
                               ["model"], registry=r)  # fmt: skip
        self.deadline_misses = Counter("labctl_vla_deadline_misses",
                                       "Answers later than 1/control_hz per action they carry.",
                                       ["model"], registry=r)  # fmt: skip
        self.control_hz = Gauge("labctl_vla_control_hz",
                                "The control rate a VLA deployment's robots run at (lab.toml).",
                                ["model"], registry=r)  # fmt: skip
        self._bound: dict[str, Bound] = {}
        self._audio: dict[str, AudioBound] = {}
        self._vla: dict[str, VlaBound] = {}

    def audio(self, name: str, clock: Callable[[], float] = time.monotonic) -> AudioBound:
        """``name``'s audio series, made at its first speech request (or route)."""
        a = self._audio.get(name)
        if a is None:
            a = self._audio[name] = AudioBound(self, name, clock)
        return a

    def vla(self, name: str) -> VlaBound:
        """``name``'s VLA series, made at its first route."""
        v = self._vla.get(name)
        if v is None:
            v = self._vla[name] = VlaBound(self, name)
        return v

    def bound(self, name: str) -> Bound:
        """``name``'s children, looked up once."""
        b = self._bound.get(name)
        if b is None:
            b = self._bound[name] = Bound(self, name)
        return b
