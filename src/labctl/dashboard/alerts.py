"""The alert rules labctl ships, with a promtool unit test for each: one that fires, one that does not.

The rules watch the failures users of local inference actually report (memory
not released, restart flapping, slow or failed swaps, requests queueing, KV
saturation, speech falling behind real time, robots' actions missing their deadline,
throttling, XIDs, a stale exporter, a failure the doctor found),
on the metric names the daemon exports. Counters are queried with their ``_total``
names, so they can fire. Annotations use only ``$labels``, so a test can state them
exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import json
import math
import re
from typing import Any

from labctl.dashboard.promql import Cache, Labels, Store, evaluate, parse_duration

GiB = 2**30


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    runbook: str
    #: A test where it fires: series → promtool values, and the labels the alert carries.
    fire: Mapping[str, str]
    labels: Mapping[str, str]
    #: A test where it does not.
    quiet: Mapping[str, str]
    eval_time: str = "10m"
    #: More cases where it must not fire: series and the time to evaluate at.
    also_quiet: tuple[tuple[Mapping[str, str], str], ...] = ()


ALERTS: tuple[Alert, ...] = (
    Alert(
        "LabGpuMemoryNearFull",
        "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) > 0.97",
        "5m",
        "warning",
        "GPU {{ $labels.gpu }} memory is over 97% used",
        "See `labctl gpus` for who holds it; lower gpu_memory_utilization or move a deployment.",
        {'DCGM_FI_DEV_FB_USED{gpu="0"}': "23900+0x20", 'DCGM_FI_DEV_FB_FREE{gpu="0"}': "100+0x20"},
        {"gpu": "0"},
        {
            'DCGM_FI_DEV_FB_USED{gpu="0"}': "12000+0x20",
            'DCGM_FI_DEV_FB_FREE{gpu="0"}': "12000+0x20",
        },
    ),
    Alert(
        "LabGpuUnaccountedMemory",
        f"labctl_gpu_unaccounted_memory_bytes > {GiB // 2}",
        "2m",
        "warning",
        "GPU {{ $labels.gpu }} has memory no deployment accounts for",
        "An orphaned worker or a process outside the lab holds it: `labctl gpus` names the pid.",
        {'labctl_gpu_unaccounted_memory_bytes{gpu="0"}': f"{4 * GiB}+0x20"},
        {"gpu": "0"},
        {'labctl_gpu_unaccounted_memory_bytes{gpu="0"}': "0+0x20"},
    ),
    Alert(
        "LabMemoryNotReleased",
        "increase(labctl_memory_release_failures_total[15m]) > 0",
        "0m",
        "critical",
        "A stopped engine's GPU memory was not released",
        "`labctl history` shows the deploy; kill the pids it names or reset the GPU.",
        {"labctl_memory_release_failures_total": "0+0x5 1+0x15"},
        {},
        {"labctl_memory_release_failures_total": "0+0x20"},
    ),
    Alert(
        "LabEngineDown",
        'labctl_deployment_state{state="failed"} == 1',
        "1m",
        "critical",
        "Deployment {{ $labels.deployment }} has no engine serving",
        "`labctl status` and the engine's log in $LABCTL_HOME/logs say why.",
        {'labctl_deployment_state{deployment="chat",state="failed"}': "1+0x20"},
        {"deployment": "chat", "state": "failed"},
        {'labctl_deployment_state{deployment="chat",state="failed"}': "0+0x20"},
    ),
    Alert(
        "LabEngineRestartFlapping",
        "increase(labctl_engine_restarts_total[15m]) > 3",
        "0m",
        "warning",
        "The engine of {{ $labels.deployment }} keeps restarting",
        "Read its log for the crash; the restart backoff is growing meanwhile.",
        {'labctl_engine_restarts_total{deployment="chat",reason="exited"}': "0+1x20"},
        {"deployment": "chat", "reason": "exited"},
        {'labctl_engine_restarts_total{deployment="chat",reason="exited"}': "0+0x20"},
    ),
    Alert(
        "LabDeployFailed",
        'increase(labctl_deploy_duration_seconds_count{outcome=~"failed|rolled_back"}[15m]) > 0',
        "0m",
        "warning",
        "A deploy ended {{ $labels.outcome }}",
        "`labctl history` shows the failed step and the log lines that came with it.",
        {'labctl_deploy_duration_seconds_count{outcome="rolled_back",swap="warm"}': "0+0x5 1+0x15"},
        {"outcome": "rolled_back", "swap": "warm"},
        {'labctl_deploy_duration_seconds_count{outcome="committed",swap="cold"}': "0+1x20"},
    ),
    Alert(
        "LabSwapSlow",
        'histogram_quantile(0.9, sum by (le) (rate(labctl_deploy_duration_seconds_bucket{outcome="committed"}[1h]))) > 300',
        "0m",
        "warning",
        "Swaps take more than 5 minutes (p90 over the last hour)",
        "Compare the start step with the weights' size: a slow disk or a cold cache.",
        {
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="300"}': "0+0x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="600"}': "0+1x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="+Inf"}': "0+1x20",
        },
        {},
        {  # slow cold starts, but most swaps wake a sleeping revision in seconds
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="300"}': "0+0x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="600"}': "0+1x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="cold",le="+Inf"}': "0+1x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="warm",le="300"}': "0+9x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="warm",le="600"}': "0+9x20",
            'labctl_deploy_duration_seconds_bucket{outcome="committed",swap="warm",le="+Inf"}': "0+9x20",
        },
    ),
    Alert(
        "LabRequestsQueueing",
        "labctl_gateway_queue_depth > 10",
        "2m",
        "warning",
        "Requests for {{ $labels.model }} are queueing",
        "The deployment is at its concurrency limit: add capacity or lower the load.",
        {'labctl_gateway_queue_depth{model="chat"}': "50+0x20"},
        {"model": "chat"},
        {'labctl_gateway_queue_depth{model="chat"}': "2+0x20"},
    ),
    Alert(
        "LabTtftSloBurn",
        "histogram_quantile(0.99, sum by (le, model) (rate(labctl_gateway_time_to_first_token_seconds_bucket[5m]))) > 2",
        "5m",
        "warning",
        "p99 time to first token for {{ $labels.model }} is over 2 s",
        "Check queueing and KV cache use of the deployment; prefill may be starved.",
        {
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="1"}': "0+0x20",
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="5"}': "0+10x20",
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="+Inf"}': "0+10x20",
        },
        {"model": "chat"},
        {
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="1"}': "0+10x20",
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="5"}': "0+10x20",
            'labctl_gateway_time_to_first_token_seconds_bucket{model="chat",le="+Inf"}': "0+10x20",
        },
    ),
    Alert(
        "LabItlSloBurn",
        "histogram_quantile(0.99, sum by (le, model) (rate(labctl_gateway_inter_token_latency_seconds_bucket[5m]))) > 0.2",
        "5m",
        "warning",
        "p99 inter-token latency for {{ $labels.model }} is over 200 ms",
        "Batches are too large for the card, or prefills interrupt decoding.",
        {
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="0.1"}': "0+0x20",
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="0.5"}': "0+10x20",
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="+Inf"}': "0+10x20",
        },
        {"model": "chat"},
        {
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="0.1"}': "0+10x20",
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="0.5"}': "0+10x20",
            'labctl_gateway_inter_token_latency_seconds_bucket{model="chat",le="+Inf"}': "0+10x20",
        },
    ),
    Alert(
        "LabKvCacheSaturated",
        "labctl_engine_kv_cache_usage_ratio > 0.95 and on (deployment) labctl_engine_requests_waiting > 0",
        "5m",
        "warning",
        "The KV cache of {{ $labels.deployment }} is full and requests wait",
        "Expect preemptions: lower max_num_seqs or max_model_len, or add memory.",
        {
            'labctl_engine_kv_cache_usage_ratio{deployment="chat"}': "0.99+0x20",
            'labctl_engine_requests_waiting{deployment="chat"}': "5+0x20",
        },
        {"deployment": "chat"},
        {
            'labctl_engine_kv_cache_usage_ratio{deployment="chat"}': "0.99+0x20",
            'labctl_engine_requests_waiting{deployment="chat"}': "0+0x20",
        },
    ),
    Alert(
        "LabSpeechFallingBehind",
        # RTFx alone is low whenever little audio arrives; with requests queueing the
        # deployment is saturated, so its RTFx is what it can do.
        "labctl_gateway_realtime_factor < on (instance, model) labctl_gateway_rtfx_floor "
        "and on (instance, model) labctl_gateway_queue_depth > 0",
        "5m",
        "warning",
        "Speech on {{ $labels.model }} is transcribed slower than its real-time floor "
        "while requests queue",
        "Audio arrives faster than the engine transcribes it: add a GPU or replica, use a "
        "faster model (large-v3-turbo), raise max_num_batched_tokens, or lower the load "
        "(the floor is the deployment's rtfx_floor in lab.toml).",
        {
            'labctl_gateway_realtime_factor{model="asr"}': "0.6+0x20",
            'labctl_gateway_rtfx_floor{model="asr"}': "1+0x20",
            'labctl_gateway_queue_depth{model="asr"}': "12+0x20",
        },
        {"model": "asr"},
        # Below the floor but nothing waits: little audio arrives, nothing falls behind.
        {
            'labctl_gateway_realtime_factor{model="asr"}': "0.6+0x20",
            'labctl_gateway_rtfx_floor{model="asr"}': "1+0x20",
            'labctl_gateway_queue_depth{model="asr"}': "0+0x20",
        },
        also_quiet=(
            # Requests queue, but it keeps ahead of its floor.
            (
                {
                    'labctl_gateway_realtime_factor{model="asr"}': "40+0x20",
                    'labctl_gateway_rtfx_floor{model="asr"}': "1+0x20",
                    'labctl_gateway_queue_depth{model="asr"}': "12+0x20",
                },
                "10m",
            ),
            # Another deployment queues (a chat model): not this speech deployment's queue.
            (
                {
                    'labctl_gateway_realtime_factor{model="asr"}': "0.6+0x20",
                    'labctl_gateway_rtfx_floor{model="asr"}': "1+0x20",
                    'labctl_gateway_queue_depth{model="asr"}': "0+0x20",
                    'labctl_gateway_queue_depth{model="chat"}': "50+0x20",
                },
                "10m",
            ),
            # Behind and queueing for only two minutes: not yet five.
            (
                {
                    'labctl_gateway_realtime_factor{model="asr"}': "40+0x7 0.6+0x13",
                    'labctl_gateway_rtfx_floor{model="asr"}': "1+0x20",
                    'labctl_gateway_queue_depth{model="asr"}': "12+0x20",
                },
                "10m",
            ),
        ),
    ),
    Alert(
        "LabVlaDeadlineMisses",
        # The share of answers (not of actions: a late chunk of K actions is one miss) later
        # than their deadline. A few tries by hand, whose first answer is slow while the engine
        # warms up, would be a large share of few: it takes at least 15 answers in five
        # minutes, half what a loop at the slowest control_hz lab.toml takes (0.1 Hz) asks.
        "rate(labctl_vla_deadline_misses_total[5m]) / rate(labctl_vla_action_latency_seconds_count[5m]) "
        "> 0.05 and rate(labctl_vla_action_latency_seconds_count[5m]) > 0.05",
        "2m",
        "warning",
        "Over 5% of the answers of {{ $labels.model }} come after their deadline "
        "(1/control_hz per action)",
        "Robots wait on late actions: `labctl status` shows p99 against the deadline and the "
        "queue. Serve fewer robots per deployment or add a GPU (queued frames age toward their "
        "deadline), use a faster card, or run the robots slower and set control_hz to match.",
        {
            'labctl_vla_action_latency_seconds_count{model="arm"}': "0+300x20",
            'labctl_vla_deadline_misses_total{model="arm"}': "0+30x20",
        },
        {"model": "arm"},
        # 2% late: within what a control loop tolerates.
        {
            'labctl_vla_action_latency_seconds_count{model="arm"}': "0+300x20",
            'labctl_vla_deadline_misses_total{model="arm"}': "0+6x20",
        },
        also_quiet=(
            # Tries by hand, one a minute, each late: too few to be a control loop.
            (
                {
                    'labctl_vla_action_latency_seconds_count{model="arm"}': "0+1x20",
                    'labctl_vla_deadline_misses_total{model="arm"}': "0+1x20",
                },
                "10m",
            ),
            # Late for ten minutes, then the robots stopped: no answer, no share.
            (
                {
                    'labctl_vla_action_latency_seconds_count{model="arm"}': "0+300x10 3000+0x10",
                    'labctl_vla_deadline_misses_total{model="arm"}': "0+150x10 1500+0x10",
                },
                "20m",
            ),
        ),
    ),
    Alert(
        "LabGpuThrottled",
        'labctl_gpu_clock_event_active{reason=~"sw_thermal_slowdown|hw_thermal_slowdown|hw_slowdown|hw_power_brake_slowdown|sw_power_cap"} == 1',
        "5m",
        "warning",
        "GPU {{ $labels.gpu }} is throttled ({{ $labels.reason }})",
        "Check cooling and the power limit (DCGM_FI_DEV_POWER_MGMT_LIMIT).",
        {'labctl_gpu_clock_event_active{gpu="0",reason="sw_thermal_slowdown"}': "1+0x20"},
        {"gpu": "0", "reason": "sw_thermal_slowdown"},
        {'labctl_gpu_clock_event_active{gpu="0",reason="gpu_idle"}': "1+0x20"},
    ),
    Alert(
        "LabGpuXidErrors",
        # A GPU's first XID of a kind starts a new series at 1, which increase() cannot see:
        # the second half fires on a series that had no sample in the 50 minutes before the
        # last ten (over a range, so a missed scrape's staleness marker is not "new").
        "increase(labctl_gpu_xid_errors_total[10m]) > 0 or (labctl_gpu_xid_errors_total > 0 "
        "unless max_over_time(labctl_gpu_xid_errors_total[50m] offset 10m))",
        "0m",
        "critical",
        "GPU {{ $labels.gpu }} reported XID {{ $labels.xid }}",
        "Look the XID up in NVIDIA's table; 48, 63, 64, 79 and 94/95 need the card checked.",
        {'labctl_gpu_xid_errors_total{gpu="0",xid="79"}': "_x5 1+0x15"},
        {"gpu": "0", "xid": "79"},
        {'labctl_gpu_xid_errors_total{gpu="0",xid="79"}': "3+0x20"},
        # A missed scrape ten minutes back is no new XID.
        also_quiet=(
            ({'labctl_gpu_xid_errors_total{gpu="0",xid="79"}': "3+0x4 stale 3+0x20"}, "15m"),
        ),
    ),
    Alert(
        "LabTelemetryStale",
        "labctl_gpu_sample_age_seconds > 30 or labctl_gpu_up == 0",
        "2m",
        "warning",
        "GPU telemetry is stale",
        "The sampler cannot read the GPUs: check the driver (`nvidia-smi`) and the daemon's log.",
        {"labctl_gpu_up": "0+0x20", "labctl_gpu_sample_age_seconds": "1+0x20"},
        {},
        {"labctl_gpu_up": "1+0x20", "labctl_gpu_sample_age_seconds": "1+0x20"},
    ),
    Alert(
        "LabDoctorFail",
        # By check: the gauge's own severity label would clash with the alert's.
        'sum by (code) (labctl_doctor_findings{severity="fail"}) > 0',
        "1m",
        "critical",
        "The doctor found a failure: {{ $labels.code }}",
        "`labctl doctor --explain {{ $labels.code }}` says what it means and the fix; "
        "`labctl doctor` (or /api/doctor) shows the evidence. Deploys it explains are refused.",
        {'labctl_doctor_findings{code="container-no-gpus",severity="fail"}': "1+0x20"},
        {"code": "container-no-gpus"},
        {
            'labctl_doctor_findings{code="container-no-gpus",severity="fail"}': "0+0x20",
            'labctl_doctor_findings{code="container-no-gpus",severity="ok"}': "1+0x20",
        },
        also_quiet=(  # a warning is no failure
            ({'labctl_doctor_findings{code="shm-small",severity="warn"}': "1+0x20"}, "10m"),
        ),
    ),
)


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def rule_groups(for_scale: float = 1.0) -> list[dict[str, Any]]:
    """The rule groups, as ``rules_yaml()`` writes them and a PrometheusRule carries them
    (``labctl export kubernetes``); ``for_scale`` as for :func:`rules_yaml`."""
    rules = [{"alert": a.name, "expr": a.expr,
              "for": a.for_ if for_scale == 1 else scaled_for(a, for_scale),
              "labels": {"severity": a.severity},
              "annotations": {"summary": a.summary, "runbook": a.runbook}}
             for a in ALERTS]  # fmt: skip
    return [{"name": "labctl", "rules": rules}]


def rules_yaml(for_scale: float = 1.0) -> str:
    """The rules file (:func:`rule_groups`); ``for_scale`` multiplies each rule's ``for``
    (as lab.toml's ``dashboard.alert_for_scale`` does for the daemon's own evaluation)."""
    lines = ["groups:"]
    for group in rule_groups(for_scale):
        lines += [f"  - name: {group['name']}", "    rules:"]
        for r in group["rules"]:
            lines += [f"      - alert: {r['alert']}", f"        expr: {_q(r['expr'])}",
                      f"        for: {r['for']}", "        labels:"]  # fmt: skip
            lines += [f"          {k}: {v}" for k, v in r["labels"].items()]
            lines += ["        annotations:"]
            lines += [f"          {k}: {_q(v)}" for k, v in r["annotations"].items()]
    return "\n".join(lines) + "\n"


def _render(text: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def promtool_tests_yaml(rules_file: str = "labctl-rules.yml") -> str:
    lines = [f"rule_files:\n  - {rules_file}", "evaluation_interval: 1m", "tests:"]
    for a in ALERTS:
        cases = [(a.fire, True, a.eval_time), (a.quiet, False, a.eval_time),
                 *((q, False, at) for q, at in a.also_quiet)]  # fmt: skip
        for series, expect, eval_time in cases:
            lines += ["  - interval: 1m", "    input_series:"]
            for s, values in series.items():
                lines += [f"      - series: {_q(s)}", f"        values: {_q(values)}"]
            lines += ["    alert_rule_test:", f"      - eval_time: {eval_time}",
                      f"        alertname: {a.name}"]  # fmt: skip
            if not expect:
                lines.append("        exp_alerts: []")
                continue
            labels = {**a.labels, "severity": a.severity}
            lines += ["        exp_alerts:", "          - exp_labels:"]
            lines += [f"              {k}: {_q(v)}" for k, v in labels.items()]
            lines += ["            exp_annotations:",
                      f"              summary: {_q(_render(a.summary, labels))}",
                      f"              runbook: {_q(_render(a.runbook, labels))}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def scaled_for(a: Alert, scale: float) -> str:
    """The rule's ``for`` with ``scale`` applied (0 fires on the first evaluation)."""
    seconds = parse_duration(a.for_) * scale
    return f"{seconds:g}s" if seconds else "0s"


@dataclass
class Firing:
    alert: Alert
    labels: dict[str, str]
    value: float
    since: float
    state: str = "pending"
    #: Seconds the condition must hold before the alert fires (the rule's scaled ``for``).
    hold: float = 0.0

    def doc(self) -> dict[str, Any]:
        """The alert as the page, the status and the event stream show it: ``since`` is when
        the condition became true (Prometheus's activeAt), ``fires_at`` when a pending alert
        fires if it still holds (for a firing one, when it did)."""
        labels = {**self.labels, "severity": self.alert.severity}
        return {
            "name": self.alert.name, "state": self.state, "severity": self.alert.severity,
            "labels": self.labels, "since": self.since, "fires_at": self.since + self.hold,
            "value": self.value if math.isfinite(self.value) else None,
            "summary": _render(self.alert.summary, labels),
            "runbook": _render(self.alert.runbook, labels),
        }  # fmt: skip


class RuleEngine:
    """Evaluates the shipped rules over a :class:`Store`, as Prometheus does: an alert is
    pending from its first true evaluation and firing once it has held for ``for``."""

    def __init__(self, alerts: tuple[Alert, ...] = ALERTS, for_scale: float = 1.0) -> None:
        self.alerts = alerts
        self.hold = {a.name: parse_duration(a.for_) * for_scale for a in alerts}
        self.active: dict[tuple[str, Labels], Firing] = {}
        self.errors: dict[str, str] = {}

    def evaluate(self, store: Store, t: float, cache: Cache | None = None) -> list[Firing]:
        seen = set()
        for a in self.alerts:
            try:
                result = evaluate(a.expr, store, t, cache)
            except Exception as exc:  # as Prometheus does: the rule's alerts stay as they were
                self.errors[a.name] = f"{type(exc).__name__}: {exc}"
                seen |= {key for key in self.active if key[0] == a.name}
                continue
            self.errors.pop(a.name, None)
            if not isinstance(result, list):
                continue
            for labels, value in result:
                key = (a.name, tuple(kv for kv in labels if kv[0] != "__name__"))
                seen.add(key)
                f = self.active.get(key)
                if f is None:
                    f = self.active[key] = Firing(a, dict(key[1]), value, t, hold=self.hold[a.name])
                f.value = value
                if t - f.since >= self.hold[a.name]:
                    f.state = "firing"
        for key in list(self.active):
            if key not in seen:
                del self.active[key]
        order = {a.name: i for i, a in enumerate(self.alerts)}
        return sorted(self.active.values(),
                      key=lambda f: (f.state != "firing", order[f.alert.name], sorted(f.labels.items())))  # fmt: skip


def expand_series(values: str, interval: float = 60.0) -> list[tuple[float, float]]:
    """promtool's input notation (``0+1x20``, ``5+0x3 1+0x15``, ``_x5 1+0x15``) as (time,
    value) samples; ``_`` is a missing sample and ``stale`` a staleness marker (NaN)."""
    out: list[tuple[float, float | None]] = []  # None: a missing sample
    for part in values.split():
        gap = re.fullmatch(r"_(?:x(\d+))?", part)
        if gap:  # missing samples: `_` is one, `_x3` three
            out += [(0.0, None)] * int(gap.group(1) or 1)
            continue
        if part == "stale":
            out.append((len(out) * interval, math.nan))
            continue
        m = re.fullmatch(r"(-?[\d.e+]+?)(?:([+-][\d.e]+)x(\d+))?", part)
        if not m:
            raise ValueError(f"cannot read series values {part!r}")
        start = float(m.group(1))
        step = float(m.group(2) or 0)
        for i in range(int(m.group(3) or 0) + 1):
            out.append((len(out) * interval, start + i * step))
    return [(t, v) for t, v in out if v is not None]


def series_labels(series: str) -> tuple[str, dict[str, str]]:
    """``name{a="b"}`` as its name and labels."""
    name, _, rest = series.partition("{")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return name, labels
