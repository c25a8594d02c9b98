"""A robot control loop's figures from its requests: latency, achieved rate, jitter, misses.

Each request a robot sends is an :class:`Answer`: when it was due (its tick), when it
was sent, when its action arrived in full, and how many actions came back. From them:

- ``action_latency_ms_*``: from sending a frame to having the whole answer (one per answer,
  successful ones only).
- ``achieved_hz``: per robot, answers per second over the span of its answers (``n − 1``
  intervals between its first and last, so the edges of the run do not count), averaged
  over the robots; per chunk, i.e. answers (= control steps) per second.
  ``achieved_hz_per_action`` multiplies each robot's by its actions per answer: a 7-vector
  is one action, a K×D chunk (OpenVLA-OFT) K. "Hz" means either in VLA reports; the two
  are kept apart and labelled.
- ``jitter_ms``: the standard deviation of each robot's intervals between answers (two or
  more intervals), averaged over the robots.
- a deadline miss: an answer whose latency exceeded one control period (1/target Hz), or
  that arrived after the tick following the one it was due at (in a closed loop a late
  answer delays the robot's next frame). ``deadline_miss_ratio`` is over the answers that
  came back, as the gateway's ``labctl_vla_deadline_misses_total`` counts them; failed
  requests are counted apart.

:func:`robots_per_gpu` reads a sweep over the number of robots: the most robots served
at the target rate with p99 latency within the SLO, as the sweep's plot titles it;
:func:`summary_lines` writes one run's figures for people.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
import itertools
import statistics
from typing import Any

from labctl.sim.report import percentile

#: A run serves its robots "at the target rate" when each gets at least this share of it.
RATE_TOLERANCE = 0.95
LATENCY_PERCENTILES = (50, 90, 99)


@dataclass
class Answer:
    """One request of one robot; times in seconds from the start of the run."""

    robot: int
    #: When the robot's schedule had it sent.
    tick: float
    sent: float
    #: When the answer was read in full; None when none came (connection lost, timeout).
    arrived: float | None = None
    #: Actions in the answer: 1 for a vector, K for a K×D chunk; 0 when it failed.
    actions: int = 0
    #: Values per action (7 for OpenVLA); 0 when it failed.
    dim: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.arrived is not None

    @property
    def latency(self) -> float | None:
        return None if self.arrived is None else self.arrived - self.sent

    def missed(self, period: float) -> bool:
        """Whether this answer came back too late for the control loop (see the module)."""
        if self.arrived is None:
            return False
        return self.arrived - self.sent > period or self.arrived > self.tick + period


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def robot_figures(answers: Sequence[Answer], duration: float) -> dict[str, Any]:
    """One robot's figures: its answers' count, rate per chunk and per action, jitter."""
    ok = sorted((a for a in answers if a.ok), key=lambda a: a.arrived or 0.0)
    times = [a.arrived or 0.0 for a in ok]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    if span > 0:
        hz = len(gaps) / span
    else:  # one answer (or none): its count over the run
        hz = len(ok) / duration if duration > 0 else 0.0
    actions = sum(a.actions for a in ok)
    per_chunk = actions / len(ok) if ok else 0.0
    return {
        "completed": len(ok),
        "failed": len(answers) - len(ok),
        "achieved_hz": hz,
        "achieved_hz_per_action": hz * per_chunk,
        "jitter_ms": _ms(statistics.pstdev(gaps)) if len(gaps) >= 2 else None,
        "interval_ms_mean": _ms(statistics.fmean(gaps)) if gaps else None,
    }


def summarize(
    answers: Sequence[Answer], robots: int, target_hz: float, duration: float
) -> dict[str, Any]:
    """The control-loop figures of a run (the report's VLA fields, see the module)."""
    period = 1.0 / target_hz
    ok = [a for a in answers if a.ok]
    latencies = [_ms(a.latency or 0.0) for a in ok]
    per_robot = [
        {"robot": r} | robot_figures([a for a in answers if a.robot == r], duration)
        for r in range(robots)
    ]
    jitters = [p["jitter_ms"] for p in per_robot if p["jitter_ms"] is not None]
    misses = sum(1 for a in ok if a.missed(period))
    actions = sum(a.actions for a in ok)
    chunks = Counter(a.actions for a in ok)
    doc: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(answers) - len(ok),
        "duration": duration,
        "robots": robots,
        "target_hz": target_hz,
        "deadline_ms": _ms(period),
        "achieved_hz": statistics.fmean(p["achieved_hz"] for p in per_robot) if robots else 0.0,
        "achieved_hz_per_action": (
            statistics.fmean(p["achieved_hz_per_action"] for p in per_robot) if robots else 0.0
        ),
        "actions_per_chunk": actions / len(ok) if ok else 0.0,
        "actions_per_chunk_seen": sorted(chunks),
        "action_dim": max((a.dim for a in ok), default=0),
        "total_actions": actions,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "action_throughput": actions / duration if duration > 0 else 0.0,
        "action_latency_ms_mean": statistics.fmean(latencies) if latencies else 0.0,
    }
    for q in LATENCY_PERCENTILES:
        doc[f"action_latency_ms_p{q}"] = percentile(latencies, q)
    doc |= {
        "action_latency_ms_max": max(latencies, default=0.0),
        "jitter_ms": statistics.fmean(jitters) if jitters else 0.0,
        "deadline_misses": misses,
        "deadline_miss_ratio": misses / len(ok) if ok else 0.0,
        "per_robot": per_robot,
    }
    return doc


def meets(doc: dict[str, Any], slo_ms: float) -> bool:
    """Whether a run served its robots: no failures, every answer's p99 within ``slo_ms``,
    and the robots at (:data:`RATE_TOLERANCE` of) the target rate."""
    return bool(
        doc["completed"] > 0
        and doc["failed"] == 0
        and doc["action_latency_ms_p99"] <= slo_ms
        and doc["achieved_hz"] >= RATE_TOLERANCE * doc["target_hz"]
    )


def robots_per_gpu(runs: Sequence[dict[str, Any]], slo_ms: float) -> int:
    """The most robots a sweep served (:func:`meets`), counting up until the first run that
    did not: a count that passes only beyond a failing one is luck, not capacity."""
    best = 0
    for doc in sorted(runs, key=lambda d: int(d["robots"])):
        if not meets(doc, slo_ms):
            break
        best = int(doc["robots"])
    return best


def headline(runs: Sequence[dict[str, Any]], slo_ms: float) -> str:
    """The sweep's answer in one line, e.g. "robots per GPU at 5 Hz with p99 under 200 ms: 4"."""
    hz = runs[0]["target_hz"] if runs else 0.0
    return (
        f"robots per GPU at {hz:g} Hz with p99 under {slo_ms:g} ms: {robots_per_gpu(runs, slo_ms)}"
    )


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A run's summary for people, in the layout of the serving report, rates labelled per
    chunk (answers) and per action, since "Hz" means either in VLA serving."""
    out = ["========= Robot Control Loop Benchmark Result ========="]
    loop = "closed loop" if doc["mode"] == "closed" else "open loop"
    rows: list[tuple[str, Any]] = [
        ("Backend:", f"openvla, {loop}, {doc['url']}{doc['endpoint']}"),
        ("Robots:", doc["robots"]),
        ("Target rate per robot (Hz, chunks/s):", f"{doc['target_hz']:.2f}"),
        ("Successful requests:", doc["completed"]),
        ("Failed requests:", doc["failed"]),
        ("Benchmark duration (s):", f"{doc['duration']:.2f}"),
    ]
    if doc["completed"]:
        dim = f" (of {doc['action_dim']} values)" if doc["action_dim"] else ""
        rows += [
            ("Actions per chunk:", f"{doc['actions_per_chunk']:g}{dim}"),
            ("Achieved rate per robot (Hz, chunks/s):", f"{doc['achieved_hz']:.2f}"),
            ("Achieved rate per robot (Hz, actions/s):", f"{doc['achieved_hz_per_action']:.2f}"),
            ("Total answers (chunks/s):", f"{doc['request_throughput']:.2f}"),
            ("Total actions/s:", f"{doc['action_throughput']:.2f}"),
        ]
    out += [f"{name:<44} {value}" for name, value in rows]
    if doc["completed"]:
        out.append(f"{' Action Latency ':-^54}")
        for key in ("mean", "p50", "p90", "p99", "max"):
            name = key.capitalize() if key in ("mean", "max") else key.upper()
            out.append(
                f"{name + ' action latency (ms):':<44} {doc[f'action_latency_ms_{key}']:.2f}"
            )
        out.append(f"{'Jitter (ms, stdev of action interval):':<44} {doc['jitter_ms']:.2f}")
        out.append(f"{' Deadlines ':-^54}")
        out.append(f"{'Deadline (ms, one period at target):':<44} {doc['deadline_ms']:.2f}")
        out.append(f"{'Deadline misses:':<44} {doc['deadline_misses']} of {doc['completed']} "
                   f"({doc['deadline_miss_ratio']:.1%})")  # fmt: skip
        within = f"P99 within {doc['slo_ms']:g} ms at target rate:"
        out.append(f"{within:<44} {'yes' if doc['meets_slo'] else 'no'}")
    check = doc["client_check"]
    error = check["timestamp_error_p99_ms"]
    out += [
        f"{' Client self-check ':-^54}",
        f"{'P99 send slip behind tick (ms):':<44} {check['send_slip_p99_ms']:.3f}",
        f"{'P99 timestamp error (ms):':<44} {'n/a' if error is None else f'{error:.3f}'}",
        f"{'Timestamps from:':<44} {check['timestamps']}",
        f"{'Client limited:':<44} {'YES' if doc['client_limited'] else 'no'}",
    ]
    if doc["errors_by_reason"]:
        out.append(f"{' Failures ':-^54}")
        out += [f"{n:>6}  {reason}" for reason, n in doc["errors_by_reason"].items()]
    out.append("=" * 54)
    return out
