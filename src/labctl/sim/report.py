"""Summaries in `vllm bench serve`'s field names and definitions.

TTFT is from sending the request to the first token; ITL is the gap between
consecutive streamed tokens (every gap of every request is one sample); TPOT
is per request ``(e2el − ttft) / (output tokens − 1)``; E2EL is from sending
to the last token. Times are reported in milliseconds, as vLLM does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import statistics
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One request as a client saw it (seconds, from when it was sent)."""

    prompt_len: int
    output_len: int
    ttft: float | None
    e2el: float | None
    itl: Sequence[float]
    success: bool = True
    #: When it was sent, seconds from the start of the run.
    start: float = 0.0
    #: Time it waited for a concurrency slot before it was sent (not in its latencies).
    queue_time: float = 0.0
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, as numpy's default."""
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats(name: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0,
    }
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = percentile(ms, p)
    return out


def _tpot(o: Outcome) -> float | None:
    if o.output_len > 1 and o.e2el is not None and o.ttft is not None:
        return (o.e2el - o.ttft) / (o.output_len - 1)
    return None


def peaks(outcomes: Sequence[Outcome]) -> tuple[float, int]:
    """vLLM's peak output rate (streamed messages in the busiest 1-s bucket) and peak concurrency.

    Token times are rebuilt as start + TTFT + the running sum of ITLs; concurrency
    is a sweep over each request's [start, start + E2EL).
    """
    ok = [o for o in outcomes if o.success and o.ttft is not None and o.e2el is not None]
    buckets: dict[int, int] = {}
    edges: list[tuple[float, int]] = []
    for o in ok:
        assert o.ttft is not None and o.e2el is not None
        t = o.start + o.ttft
        buckets[int(t)] = buckets.get(int(t), 0) + 1
        for gap in o.itl:
            t += gap
            buckets[int(t)] = buckets.get(int(t), 0) + 1
        edges += [(o.start, 1), (o.start + o.e2el, -1)]
    level = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return float(max(buckets.values(), default=0)), peak


def summarize(
    outcomes: Sequence[Outcome],
    duration: float,
    percentiles: Sequence[float] = (99,),
    goodput: dict[str, float] | None = None,
    client_queue: bool = False,
    queue_inclusive: bool = False,
) -> dict[str, Any]:
    """The fields of `vllm bench serve`'s result JSON for these outcomes.

    ``request_goodput`` is ``None`` without SLOs, as in vLLM; ``client_queue``
    adds the percentiles of the time requests waited for a concurrency slot and
    ``queue_inclusive`` those of E2EL plus that wait (vLLM: with a finite rate).
    """
    ok = [o for o in outcomes if o.success]
    out_tokens = sum(o.output_len for o in ok)
    in_tokens = sum(o.prompt_len for o in ok)
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    tpots = [t for o in ok if (t := _tpot(o)) is not None]
    itls = [x for o in ok for x in o.itl]
    e2els = [o.e2el for o in ok if o.e2el is not None]
    doc: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": out_tokens / duration if duration > 0 else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else 0.0,
    }
    doc["request_goodput"] = None
    if goodput:
        good = 0
        for o in ok:
            checks = {"ttft": o.ttft, "e2el": o.e2el, "tpot": _tpot(o) or 0.0}
            if all((checks[k] or 0.0) * 1000.0 <= limit_ms for k, limit_ms in goodput.items()):
                good += 1
        doc["request_goodput"] = good / duration if duration > 0 else 0.0
    doc["max_output_tokens_per_s"], doc["max_concurrent_requests"] = peaks(outcomes)
    doc |= _stats("ttft", ttfts, percentiles)
    doc |= _stats("tpot", tpots, percentiles)
    doc |= _stats("itl", itls, percentiles)
    doc |= _stats("e2el", e2els, percentiles)
    if client_queue:
        doc |= _stats("client_queue_time", [o.queue_time for o in ok], percentiles)
    if queue_inclusive:
        doc |= _stats("e2el_including_client_queue",
                      [o.e2el + o.queue_time for o in ok if o.e2el is not None], percentiles)  # fmt: skip
    return doc
