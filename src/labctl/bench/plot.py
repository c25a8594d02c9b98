"""PNG plots of benchmark results (matplotlib, no display needed).

A sweep plots latency percentiles and throughput against the swept rate or
concurrency (for speech also RTFx, and the median E2E latency of each audio-length
bucket); a single run plots its TTFT and ITL distributions and its output
throughput and concurrency over time, rebuilt from per-request timings.

Robots (``--backend openvla``): a sweep over the number of robots plots the achieved
rate per robot against the target and the action latency against the deadline and the
SLO, titled with the robots per GPU it found (:func:`labctl.bench.control.headline`); a
single run plots its latency distribution and each answer's latency over time.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from pathlib import Path
from typing import Any

LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))


def _figure(rows: int, cols: int, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _x(doc: dict[str, Any], parameter: str) -> float:
    value = doc["request_rate"] if parameter == "rate" else doc["max_concurrency"]
    return math.inf if value == "inf" else float(value)


def plot_sweep(runs: Sequence[dict[str, Any]], parameter: str, path: Path) -> None:
    """Median and p99 of each latency, and throughput, against ``rate`` or ``concurrency``;
    for speech runs (``audio_seconds`` in them) RTFx and E2EL by audio length as well."""
    label = "request rate (req/s)" if parameter == "rate" else "max concurrency"
    xs = [_x(d, parameter) for d in runs]
    finite = [x for x in xs if math.isfinite(x)]
    ticks = {x: f"{x:g}" for x in finite}
    if len(finite) < len(xs):  # an unlimited rate goes to the right of the others
        right = max(finite, default=1.0) * 1.5
        xs = [x if math.isfinite(x) else right for x in xs]
        ticks[right] = "inf"
    model = runs[0].get("model_id", "") if runs else ""
    speech = any("audio_seconds" in d for d in runs)
    fig, axes = _figure(2, 4 if speech else 3, f"labctl bench sweep · {model}")
    for ax, (key, name) in zip(axes.flat, LATENCIES, strict=False):
        for stat, style in (("median", "o-"), ("p99", "s--")):
            ys = [d.get(f"{stat}_{key}_ms", math.nan) for d in runs]
            ax.plot(xs, ys, style, label=f"{stat} {name}")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{name} (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    tput = axes.flat[4]
    tput.plot(xs, [d["output_throughput"] for d in runs], "o-", label="output tok/s")
    tput.plot(xs, [d["total_token_throughput"] for d in runs], "s--", label="total tok/s")
    tput.set_xlabel(label)
    tput.set_ylabel("tokens/s")
    tput.grid(alpha=0.3)
    tput.legend()
    req = axes.flat[5]
    req.plot(xs, [d["request_throughput"] for d in runs], "o-", label="requests/s")
    if any(d.get("request_goodput") is not None for d in runs):
        req.plot(xs, [d.get("request_goodput") or 0.0 for d in runs], "s--", label="goodput")
    failed = [x for x, d in zip(xs, runs, strict=True) if d["failed"]]
    if failed:
        req.plot(failed, [0.0] * len(failed), "rx", label="runs with failures")
    req.set_xlabel(label)
    req.set_ylabel("requests/s")
    req.grid(alpha=0.3)
    req.legend()
    if speech:
        _speech_panels(axes.flat[6], axes.flat[7], xs, runs, label)
    spread = len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8
    for ax in axes.flat:
        if spread:
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()
    _save(fig, path)


def _speech_panels(rtfx: Any, buckets: Any, xs: list[float], runs: Sequence[dict[str, Any]],
                   label: str) -> None:  # fmt: skip
    """RTFx, and the median E2E latency of each audio-length bucket, against the swept value."""
    rtfx.plot(xs, [d.get("rtfx", 0.0) for d in runs], "o-", color="#228833", label="RTFx")
    rtfx.set_xlabel(label)
    rtfx.set_ylabel("audio s per s (RTFx)")
    rtfx.grid(alpha=0.3)
    rtfx.legend()
    names: list[str] = []
    for d in runs:
        names += [b for b in d.get("e2el_by_audio_bucket", {}) if b not in names]
    for name in names:
        ys = []
        for d in runs:
            row = d.get("e2el_by_audio_bucket", {}).get(name)
            ys.append(row["median_e2el_ms"] if row and row["completed"] else math.nan)
        buckets.plot(xs, ys, "o-", label=f"audio {name}")
    buckets.set_xlabel(label)
    buckets.set_ylabel("median E2EL (ms)")
    buckets.grid(alpha=0.3)
    if names:
        buckets.legend()


def timeline(doc: dict[str, Any], step: float = 1.0) -> tuple[list[float], list[int], list[int]]:
    """Per ``step`` seconds: streamed chunks, and requests in flight at the bucket's start."""
    starts, ttfts, itls, lats = (doc[k] for k in ("start_times", "ttfts", "itls", "latencies"))
    end = max((s + lat for s, lat in zip(starts, lats, strict=True)), default=0.0)
    n = max(1, math.ceil(end / step))
    chunks = [0] * n
    running = [0] * n
    for s, ttft, gaps, lat in zip(starts, ttfts, itls, lats, strict=True):
        if not lat:
            continue
        t = s + ttft
        chunks[min(n - 1, int(t / step))] += 1
        for g in gaps:
            t += g
            chunks[min(n - 1, int(t / step))] += 1
        for b in range(int(s / step), min(n, int((s + lat) / step) + 1)):
            running[b] += 1
    return [i * step for i in range(n)], chunks, running


def plot_run(doc: dict[str, Any], path: Path) -> None:
    """TTFT and ITL histograms; chunks/s and concurrency over time. Needs the detail arrays."""
    fig, axes = _figure(2, 2, f"labctl bench · {doc.get('model_id', '')}")
    ttfts = [t * 1000 for t, lat in zip(doc["ttfts"], doc["latencies"], strict=True) if lat]
    itls = [g * 1000 for gaps in doc["itls"] for g in gaps]
    for ax, values, name in ((axes[0][0], ttfts, "TTFT"), (axes[0][1], itls, "ITL")):
        if values:
            ax.hist(values, bins=50, color="#4477aa")
            for q, style in ((50, "-"), (99, "--")):
                v = sorted(values)[min(len(values) - 1, int(len(values) * q / 100))]
                ax.axvline(v, color="#cc3311", linestyle=style, label=f"p{q} {v:.2f} ms")
            ax.legend()
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("samples")
        ax.grid(alpha=0.3)
    step = 1.0 if doc["duration"] > 10 else max(0.05, doc["duration"] / 20)
    ts, chunks, running = timeline(doc, step)
    axes[1][0].plot(ts, [c / step for c in chunks], "-", color="#228833")
    axes[1][0].set_xlabel("time (s)")
    axes[1][0].set_ylabel("streamed chunks/s")
    axes[1][0].grid(alpha=0.3)
    axes[1][1].plot(ts, running, "-", color="#aa3377")
    axes[1][1].set_xlabel("time (s)")
    axes[1][1].set_ylabel("requests in flight")
    axes[1][1].grid(alpha=0.3)
    _save(fig, path)


def plot_robots_sweep(runs: Sequence[dict[str, Any]], path: Path, slo_ms: float) -> None:
    """Achieved Hz per robot (per chunk, and per action where chunks hold several) and p50/p99
    action latency against the number of robots, with the target, deadline and SLO drawn."""
    from labctl.bench.control import headline

    xs = [int(d["robots"]) for d in runs]
    hz = runs[0]["target_hz"] if runs else 0.0
    deadline = runs[0]["deadline_ms"] if runs else 0.0
    mode = runs[0].get("mode", "closed") if runs else "closed"
    fig, axes = _figure(1, 3, f"{headline(runs, slo_ms)}  ({mode} loop)")
    rate, latency, misses = axes[0]
    rate.plot(xs, [d["achieved_hz"] for d in runs], "o-", label="achieved (chunks/s)")
    if any(d["actions_per_chunk"] > 1 for d in runs):
        rate.plot(xs, [d["achieved_hz_per_action"] for d in runs], "s--",
                  label="achieved (actions/s)")  # fmt: skip
    rate.axhline(hz, color="#228833", linestyle=":", label=f"target {hz:g} Hz")
    failed = [x for x, d in zip(xs, runs, strict=True) if d["failed"]]
    if failed:
        rate.plot(failed, [0.0] * len(failed), "rx", label="runs with failures")
    rate.set_ylabel("Hz per robot")
    top = max([hz, *(d["achieved_hz"] for d in runs)])
    rate.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # the target line clear of the frame
    for stat, style in (("p50", "o-"), ("p99", "s--")):
        latency.plot(xs, [d[f"action_latency_ms_{stat}"] for d in runs], style,
                     label=f"{stat} action latency")  # fmt: skip
    latency.axhline(deadline, color="#cc3311", linestyle=":", label=f"deadline {deadline:g} ms")
    if abs(slo_ms - deadline) > 1e-9:
        latency.axhline(slo_ms, color="#ee7733", linestyle="-.", label=f"SLO {slo_ms:g} ms")
    latency.set_ylabel("action latency (ms)")
    latency.set_ylim(bottom=0)
    misses.plot(xs, [100.0 * d["deadline_miss_ratio"] for d in runs], "o-", color="#aa3377",
                label="deadline misses")  # fmt: skip
    misses.plot(xs, [d["jitter_ms"] for d in runs], "s--", color="#4477aa", label="jitter (ms)")
    misses.set_ylabel("misses (%) · jitter (ms)")
    misses.set_ylim(bottom=0)
    spread = len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8
    for ax in axes.flat:
        ax.set_xlabel("robots")
        if spread:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_robots_run(doc: dict[str, Any], path: Path) -> None:
    """The action latency histogram and each answer's latency over time, by robot, with the
    deadline. Needs the detail arrays."""
    loop = "closed" if doc.get("mode") == "closed" else "open"
    fig, axes = _figure(1, 2, f"labctl bench · {doc['robots']} robots at {doc['target_hz']:g} Hz "
                              f"({loop} loop) · {doc.get('model_id') or doc['url']}")  # fmt: skip
    hist, over_time = axes[0]
    ok = [i for i, e in enumerate(doc["errors"]) if not e]
    latencies = [doc["latencies"][i] * 1000 for i in ok]
    deadline = doc["deadline_ms"]
    if latencies:
        hist.hist(latencies, bins=50, color="#4477aa")
        for key, style in (("p50", "-"), ("p99", "--")):
            v = doc[f"action_latency_ms_{key}"]
            hist.axvline(v, color="#cc3311", linestyle=style, label=f"{key} {v:.1f} ms")
    hist.axvline(deadline, color="#228833", linestyle=":", label=f"deadline {deadline:g} ms")
    hist.set_xlabel("action latency (ms)")
    hist.set_ylabel("answers")
    for robot in sorted({doc["robot_ids"][i] for i in ok})[:12]:  # more would not be told apart
        mine = [i for i in ok if doc["robot_ids"][i] == robot]
        over_time.plot([doc["start_times"][i] for i in mine],
                       [doc["latencies"][i] * 1000 for i in mine], ".-", label=f"robot {robot}")  # fmt: skip
    over_time.axhline(deadline, color="#228833", linestyle=":", label="deadline")
    over_time.set_xlabel("sent at (s)")
    over_time.set_ylabel("action latency (ms)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)
