"""``labctl sim run``: the twin's scheduler as a discrete-event simulation.

Time jumps from one step's end to the next, so an hour of traffic takes
seconds. Requests are sent on their precomputed schedule; with a concurrency
limit a request waits for a free slot first and its latency counts from when it
is sent, as ``vllm bench serve --max-concurrency`` measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import heapq
from typing import Any

from labctl.sim.engine import Twin
from labctl.sim.perf import FRONTEND_S
from labctl.sim.report import Outcome, summarize
from labctl.sim.scheduler import SimRequest, block_keys
from labctl.sim.workload import Item


@dataclass
class Timeline:
    """Engine state sampled once per simulated ``interval`` seconds."""

    interval: float
    time: list[float] = field(default_factory=list)
    kv_cache_usage: list[float] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    preemptions: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval,
            "time_s": self.time,
            "kv_cache_usage": self.kv_cache_usage,
            "num_requests_running": self.running,
            "num_requests_waiting": self.waiting,
            "num_preemptions_total": self.preemptions,
        }


def simulate(
    twin: Twin,
    items: Sequence[Item],
    send_times: Sequence[float],
    max_concurrency: int | None = None,
    interval: float = 1.0,
) -> tuple[dict[str, Any], Timeline]:
    """Run the workload through the twin; returns the summary and the timeline."""
    sched = twin.scheduler()
    perf = twin.perf
    max_len = twin.fit.max_model_len
    pending = sorted(range(len(items)), key=lambda i: send_times[i])
    order = iter(pending)
    reqs: dict[int, SimRequest] = {}
    sent: dict[int, float] = {}
    rejected: set[int] = set()
    #: (time it may be sent, index): requests scheduled but not yet sent.
    ready: list[tuple[float, int]] = []
    #: (time the engine sees it, index): sent, still in the API server.
    inbound: list[tuple[float, int]] = []
    #: When each concurrency slot became free (one per slot; unlimited without a limit).
    free_at: list[float] = [0.0] * max_concurrency if max_concurrency else []
    timeline = Timeline(interval)
    next_sample = 0.0
    now = 0.0
    nxt = next(order, None)

    def feed(until: float) -> None:
        """Send every request whose time has come and that has a free slot."""
        nonlocal nxt
        while nxt is not None and send_times[nxt] <= until:
            heapq.heappush(ready, (send_times[nxt], nxt))
            nxt = next(order, None)
        while ready and ready[0][0] <= until and (not max_concurrency or free_at):
            t, i = heapq.heappop(ready)
            # Sent when both its time has come and a slot was free (the client waits).
            start = max(t, heapq.heappop(free_at)) if max_concurrency else t
            item = items[i]
            sent[i] = start
            if item.prompt_len + item.output_len > max_len:
                rejected.add(i)  # vLLM answers 400: longer than max_model_len
                if max_concurrency:
                    heapq.heappush(free_at, start)
                continue
            # The API server tokenizes and queues it before the engine sees it.
            keys = (
                block_keys(item.prompt.split(), sched.block_size)
                if sched.prefix_caching and item.prompt
                else ()
            )
            req = SimRequest(i, item.prompt_len, item.output_len, start + FRONTEND_S, keys)
            reqs[i] = req
            heapq.heappush(inbound, (req.arrival, i))
        while inbound and inbound[0][0] <= until:
            sched.add(reqs[heapq.heappop(inbound)[1]])

    done = 0
    total = len(items)
    while done + len(rejected) < total:
        feed(now)
        if sched.idle:
            upcoming = [t for t, _ in inbound[:1]]
            if ready and (not max_concurrency or free_at):
                upcoming.append(ready[0][0])
            if nxt is not None:
                upcoming.append(send_times[nxt])
            if not upcoming:
                break
            now = max(now, min(upcoming))
            continue
        batch = sched.schedule(now)
        if not batch.items:
            raise RuntimeError("the scheduler found nothing to run; the KV cache is too small")
        now += perf.step_seconds(batch.cost)
        finished = sched.complete(batch, now)
        done += len(finished)
        if max_concurrency:
            for _ in finished:
                heapq.heappush(free_at, now)
        while now >= next_sample:
            timeline.time.append(round(next_sample, 6))
            timeline.kv_cache_usage.append(round(sched.usage, 4))
            timeline.running.append(len(sched.running))
            timeline.waiting.append(len(sched.waiting) + len(ready))
            timeline.preemptions.append(sched.preemptions_total)
            next_sample += interval
    outcomes = []
    for i, item in enumerate(items):
        if i in rejected or i not in reqs:
            outcomes.append(Outcome(item.prompt_len, 0, None, None, (), success=False))
            continue
        r = reqs[i]
        assert r.first_token is not None and r.finished is not None
        outcomes.append(
            Outcome(r.prompt_len, r.generated, r.first_token - sent[i], r.finished - sent[i], r.itl,
                    start=sent[i])
        )  # fmt: skip
    first = min(sent.values()) if sent else 0.0
    summary = summarize(outcomes, max(now - first, 1e-9))
    summary["num_preemptions"] = sched.preemptions_total
    summary["kv_cache_tokens"] = twin.fit.kv_cache_tokens
    summary["max_num_seqs"] = twin.fit.max_num_seqs
    summary["max_num_batched_tokens"] = twin.fit.max_num_batched_tokens
    summary["peak_kv_cache_usage"] = max(timeline.kv_cache_usage, default=0.0)
    summary["peak_num_requests_waiting"] = max(timeline.waiting, default=0)
    return summary, timeline
