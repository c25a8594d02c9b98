"""The bottleneck classifier: what limits a vLLM-like engine, with the numbers that say so.

One classifier for two callers: the lab puts each deployment in one class every dashboard
tick (``dashboard/bottleneck.py``), and ``labctl sim run --explain`` puts each interval of a
simulated run in one (``sim/explain.py``). Either reads requests running and waiting in the
engine, queued at the gateway, KV cache usage, prompt and generated tokens/s over a window,
how busy the API server was over it, the GPUs' clock event reasons, how a start goes, and the
twin's roofline for the batch. The first rule that holds wins:

1. ``starting``: the deployment is starting. Its start is *disk-bound* when the prediction
   (``deploy/loadpath.py``) has reading weights as the longest phase and the disk, not the
   loader, as the slower of the two rates.
2. ``idle`` (not serving): stopped, failed or asleep.
3. ``throttled``: a thermal or power clock event reason (``sw_power_cap``, ``hw_slowdown``,
   ``sw_thermal_slowdown``, ``hw_thermal_slowdown``, ``hw_power_brake_slowdown``) is active
   on one of its GPUs: whatever runs, runs at lower clocks.
4. ``kv_capacity``: KV cache usage at or above :data:`KV_FULL` (90%) with requests waiting in
   the engine, or at or above :data:`KV_SATURATED` (97%) whatever waits: the cache, not the
   GPU's speed, decides how many sequences run.
5. ``api_server``: requests run, queue at the gateway or (in a simulation) are still being
   taken in, and the API server's process had
   work at least :data:`API_SERVER_BUSY` (90%) of the window: it takes the requests in and
   streams every token out on one core, so past that it, not the GPU, sets the pace, and a
   queue at the gateway grows because requests wait in it, not because of the gateway's
   limit. The evidence says how far the GPU side is from its roofline, and the class's
   ``roofline_fraction`` is that side's. vLLM's API server exports its process's
   ``process_cpu_seconds_total`` when it runs one process (``--api-server-count 1``, the
   default); the twin exports its simulated API server's busy time under the same name, and
   ``sim run``'s timeline has it per interval.
6. ``admission``: requests queue at the gateway while the engine has none waiting and KV
   room: the gateway's concurrency limit holds them back, below what the engine could take.
7. ``prefill_compute`` / ``decode_bandwidth``: requests run. Each side's share of the
   engine's time is its live tokens/s over the twin's roofline tokens/s for the batch
   (prefill at the compute roofline, decode at the bandwidth one); the larger share names
   the class and is its ``roofline_fraction``. Tokens/s are rates over a window (the last
   minute on the dashboard, one interval of a simulated run), so the batch is the mean of
   requests running over the same window, not this instant's. Without a roofline (a model
   or GPU the catalog does not know), prefill when prompt tokens/s exceed
   :data:`PREFILL_RATIO` (20) times generated tokens/s.
8. ``client``: tokens flowed in the window but nothing runs, waits or queues now: the
   engine waits on its clients.
9. ``idle``: no traffic at all.

The roofline (:func:`roofline`) is the twin's perf model (``sim/perf.py``) for the
deployment's model on its GPU: decode tokens/s = batch / (bytes one step reads at the
achievable bandwidth: weights, plus the KV cache in use), prefill tokens/s = achievable
FLOP/s (peak × MFU × the GPU architecture's ``GEMM_SHARE``) / FLOPs per token. A twin with
a ``time_scale`` runs its clock that much slower, so its roofline is divided by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labctl.sim.perf import PerfModel

#: Every class, in the order ``labctl_deployment_bottleneck{class}`` lists them.
CLASSES = ("prefill_compute", "decode_bandwidth", "kv_capacity", "admission", "api_server",
           "client", "throttled", "starting", "idle")  # fmt: skip
#: Clock event reasons that hold clocks back for heat or power.
THROTTLES = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown",
                       "hw_thermal_slowdown", "hw_power_brake_slowdown"})  # fmt: skip
#: KV usage that, with requests waiting, makes the cache the limit; and usage that alone does.
KV_FULL = 0.90
KV_SATURATED = 0.97
#: Share of the time the API server's process has work from which it sets the pace.
API_SERVER_BUSY = 0.9
#: Without a roofline: prompt tokens/s over generated tokens/s above which prefill dominates.
PREFILL_RATIO = 20.0
#: States that serve requests.
SERVING = frozenset({"ready", "draining"})


@dataclass(frozen=True)
class Roofline:
    """The hardware limit for the live batch, in tokens/s."""

    prefill_tps: float
    decode_tps: float


@dataclass(frozen=True)
class Signals:
    """What the classifier reads for one deployment."""

    state: str
    running: float = 0.0
    waiting: float = 0.0
    queued: float = 0.0
    kv: float | None = None
    prompt_tps: float = 0.0
    completion_tps: float = 0.0
    #: Clock event reasons active on its GPUs.
    reasons: tuple[str, ...] = ()
    #: The start in progress: ``phase`` (the last one done), ``elapsed`` (s), ``disk_bound``
    #: (bool or None: not known), ``why`` (the prediction's weights line).
    start: Mapping[str, Any] | None = None
    roofline: Roofline | None = None
    #: The mean batch over the tokens/s window (the roofline is for it); default: ``running``.
    batch: float | None = None
    #: Share of the time the API server's process had work over the same window (its CPU
    #: seconds per second); None: not known.
    api_busy: float | None = None
    #: Requests the API server holds that the engine has not seen yet (the simulation knows;
    #: a live deployment's is not measured: 0).
    intake: float = 0.0


def _n(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def classify(s: Signals) -> dict[str, Any]:
    """The class, a one-line evidence and the roofline fraction (None when not measured)."""

    def out(cls: str, evidence: str, fraction: float | None = None) -> dict[str, Any]:
        frac = None if fraction is None else round(fraction, 3)
        return {"class": cls, "evidence": evidence, "roofline_fraction": frac}

    if s.state == "starting":
        st = s.start or {}
        phase = st.get("phase") or "process start"
        took = f", {st['elapsed']:.1f} s in" if isinstance(st.get("elapsed"), int | float) else ""
        disk = st.get("disk_bound")
        verdict = "disk not known" if disk is None else "disk-bound" if disk else "not disk-bound"
        why = f" ({st['why']})" if st.get("why") else ""
        return out("starting", f"starting: past {phase}{took}; {verdict}{why}")
    if s.state not in SERVING:
        return out("idle", f"{s.state}: not serving")
    hot = sorted(r for r in s.reasons if r in THROTTLES)
    if hot:
        return out("throttled", f"clocks held back: {', '.join(hot)}; {_n(s.running)} running")
    kv = s.kv or 0.0
    if (kv >= KV_FULL and s.waiting > 0) or kv >= KV_SATURATED:
        return out("kv_capacity", f"KV cache {kv:.0%} full, {_n(s.waiting)} waiting in the "
                                  f"engine, {_n(s.running)} running")  # fmt: skip
    if (
        s.api_busy is not None
        and s.api_busy >= API_SERVER_BUSY
        and (s.running or s.queued or s.intake)
    ):
        fraction: float | None = None
        if s.running or s.queued:
            _, evidence, fraction = _gpu_side(s)
        else:
            evidence = f"{_n(s.intake)} requests being taken in, none running yet"
        return out("api_server", f"API server busy {s.api_busy:.0%} of the time: it sets the "
                                 f"pace, not the GPU; {evidence}; give it more processes "
                                 "(--api-server-count)", fraction)  # fmt: skip
    if s.queued > 0 and s.waiting == 0:
        return out("admission", f"{_n(s.queued)} queued at the gateway, engine below its limit "
                                f"({_n(s.running)} running, 0 waiting, KV {kv:.0%})")  # fmt: skip
    if s.running > 0:
        return out(*_gpu_side(s))
    if s.prompt_tps > 0 or s.completion_tps > 0:
        return out("client", f"engine idle between requests ({_n(s.completion_tps)} generated "
                             "tok/s over the last minute, nothing running or queued)")  # fmt: skip
    return out("idle", "no requests")


def _gpu_side(s: Signals) -> tuple[str, str, float | None]:
    """Prefill or decode, whichever takes more of the engine's time, with its evidence and
    roofline fraction (None without a roofline)."""
    tps = f"{_n(s.prompt_tps)} prompt tok/s, {_n(s.completion_tps)} generated tok/s"
    r = s.roofline
    if r is not None and r.prefill_tps > 0 and r.decode_tps > 0:
        pre, dec = s.prompt_tps / r.prefill_tps, s.completion_tps / r.decode_tps
        if pre > dec:
            return ("prefill_compute", f"prefill at {pre:.0%} of the compute roofline "
                                       f"({tps}; {_n(s.running)} running)", pre)  # fmt: skip
        batch = s.running if s.batch is None else s.batch
        return ("decode_bandwidth", f"decode at {dec:.0%} of the bandwidth roofline "
                                    f"({tps}; mean batch {_n(batch)})", dec)  # fmt: skip
    if s.prompt_tps > PREFILL_RATIO * s.completion_tps:
        return "prefill_compute", f"prefill-heavy: {tps}; no roofline", None
    return "decode_bandwidth", f"decode-heavy: {tps}; no roofline", None


def roofline(perf: PerfModel, batch: float, kv_tokens: float, time_scale: float = 1.0) -> Roofline:
    """The twin's limits for ``batch`` running sequences holding ``kv_tokens`` in the cache
    (zero, meaning none known, for a model whose weights or FLOPs round to nothing)."""
    seqs = max(1.0, batch)
    read = (perf.dense_bytes + perf.expert_bytes * perf.experts_touched(int(seqs))
            + perf.full_kv_bytes_per_token * kv_tokens
            + perf.state_bytes_per_sequence * seqs)  # fmt: skip
    if read <= 0 or perf.flops_per_token <= 0:  # a toy model: no limit the twin can name
        return Roofline(0.0, 0.0)
    decode = seqs / (read / perf.bandwidth)
    prefill = perf.mfu / perf.peak_seconds_per_token
    scale = time_scale if time_scale > 0 else 1.0
    return Roofline(prefill / scale, decode / scale)
