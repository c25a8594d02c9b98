"""The dashboard's panels, defined once: the built-in page and the exported Grafana dashboard
show the same queries.

A query is written once with placeholders: ``@gpu``, ``@dep``, ``@model`` and ``@i``
inside a selector's braces stand for the dashboard's filters (instance, GPU,
deployment; the gateway's series carry the deployment as ``model``), and ``@w``
for the rate window. :func:`for_grafana` turns them into Grafana variables
(``$instance``, ``$gpu``, ``$deployment``, ``$__rate_interval``);
:func:`for_daemon` drops the filters and uses a one-minute window, which is what
the daemon evaluates every tick for the built-in page.
"""

from __future__ import annotations

from dataclasses import dataclass
import re


@dataclass(frozen=True)
class Query:
    expr: str
    #: Grafana's legend, ``{{label}}`` expanded.
    legend: str
    #: The series' role in a panel (``used``, ``p99``, …); the page styles by it.
    role: str = ""


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    section: str  # gpu, deployment, speech, vla, deploys, alerts
    unit: str  # Grafana's unit id
    queries: tuple[Query, ...]
    description: str = ""
    stacked: bool = False
    #: timeseries, table (current values), state (0/1 over time)
    kind: str = "timeseries"
    #: Shown only in Grafana (the page has its own view of it).
    grafana_only: bool = False


def _q(expr: str, legend: str, role: str = "") -> Query:
    return Query(expr, legend, role)


def _quantiles(metric: str) -> tuple[Query, ...]:
    expr = "histogram_quantile({q}, sum by (le, model) (rate({m}_bucket{{@model}}[@w])))"
    return (
        _q(expr.format(q="0.5", m=metric), "{{model}} p50", "p50"),
        _q(expr.format(q="0.99", m=metric), "{{model}} p99", "p99"),
    )


def _speech_only(metric: str) -> str:
    """``metric`` for the deployments that serve speech: those with an RTFx floor, which the
    gateway exports for speech deployments only."""
    return f"{metric}{{@model}} and on (instance, model) labctl_gateway_rtfx_floor{{@model}}"


def _by_audio_length(q: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, model, audio_length) "
        "(rate(labctl_gateway_audio_request_duration_seconds_bucket{@model}[@w])))"
    )


#: The speech group: one per deployment that serves /v1/audio/transcriptions or translations.
SPEECH: tuple[Panel, ...] = (
    Panel(
        "speech_rtfx",
        "Real-time factor (RTFx)",
        "speech",
        "suffix:×",
        (
            _q("labctl_gateway_realtime_factor{@model}", "{{model}} RTFx", "rtfx"),
            _q("labctl_gateway_rtfx_floor{@model}", "{{model}} floor", "floor"),
        ),
        "Seconds of audio transcribed per wall-clock second over the last minute, and the "
        "deployment's floor: below it while requests queue, speech falls behind.",
    ),
    Panel(
        "speech_audio",
        "Audio seconds and requests per second",
        "speech",
        "short",
        (
            _q(
                "sum by (model) (rate(labctl_gateway_audio_seconds_total{@model}[@w]))",
                "{{model}} audio s/s",
                "audio",
            ),
            _q(
                "sum by (model) "
                "(rate(labctl_gateway_audio_request_duration_seconds_count{@model}[@w]))",
                "{{model}} requests/s",
                "requests",
            ),
        ),
        "Seconds of audio in answered requests per second, and the requests that carried it.",
    ),
    Panel(
        "speech_queue",
        "Speech requests queued and in flight",
        "speech",
        "short",
        (
            _q(_speech_only("labctl_gateway_queue_depth"), "{{model}} queued", "queued"),
            _q(_speech_only("labctl_gateway_in_flight"), "{{model}} in flight", "in_flight"),
        ),
        "Queued requests wait in the gateway for a slot; in flight ones are at the engine.",
    ),
    Panel(
        "speech_latency",
        "Speech latency by audio length",
        "speech",
        "s",
        (
            _q(_by_audio_length("0.5"), "{{model}} {{audio_length}} p50", "p50"),
            _q(_by_audio_length("0.95"), "{{model}} {{audio_length}} p95", "p95"),
        ),
        "Request duration at the gateway (queueing included), by the length of the audio "
        "sent: vLLM cuts a clip over 30 s into 30 s chunks, each its own engine request.",
    ),
)


def _vla_only(metric: str) -> str:
    """``metric`` for the deployments that serve actions: those with a control rate, which the
    gateway exports for VLA deployments only."""
    return f"{metric}{{@model}} and on (instance, model) labctl_vla_control_hz{{@model}}"


def _action_latency(q: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, model) "
        "(rate(labctl_vla_action_latency_seconds_bucket{@model}[@w])))"
    )


#: The VLA group: one per deployment that serves /vla/{deployment}/act. The target is the
#: control rate of one robot; the achieved rate counts every robot's actions together.
VLA: tuple[Panel, ...] = (
    Panel(
        "vla_rate",
        "Actions per second (all robots) and the target (per robot)",
        "vla",
        "hertz",
        (
            _q(
                "sum by (model) (rate(labctl_vla_actions_total{@model}[@w]))",
                "{{model}} actions/s, all robots",
                "actions",
            ),
            _q("labctl_vla_control_hz{@model}", "{{model}} target per robot", "target"),
        ),
        "Actions answered per second, all robots together (a chunk of K actions counts K), "
        "and the deployment's control_hz: the rate one robot runs at. N robots at their "
        "target need N times the line.",
    ),
    Panel(
        "vla_latency",
        "Action latency against the deadline",
        "vla",
        "s",
        (
            _q(_action_latency("0.5"), "{{model}} p50", "p50"),
            _q(_action_latency("0.9"), "{{model}} p90", "p90"),
            _q(_action_latency("0.99"), "{{model}} p99", "p99"),
            _q("1 / labctl_vla_control_hz{@model}", "{{model}} deadline", "deadline"),
        ),
        "From the gateway receiving a camera frame to its action (queueing included), and "
        "the deadline of one action, 1/control_hz (an answer of a chunk of K actions has K "
        "times as long).",
    ),
    Panel(
        "vla_misses",
        "Answers that missed their deadline",
        "vla",
        "percentunit",
        (
            _q(
                "sum by (model) (rate(labctl_vla_deadline_misses_total{@model}[@w])) / "
                "sum by (model) (rate(labctl_vla_action_latency_seconds_count{@model}[@w]))",
                "{{model}} late",
                "misses",
            ),
        ),
        "The share of answers that came after their deadline: the robot waited on them. "
        "No value while no frame arrives (0 of 0 is no share).",
    ),
    Panel(
        "vla_queue",
        "VLA requests queued and in flight",
        "vla",
        "short",
        (
            _q(_vla_only("labctl_gateway_queue_depth"), "{{model}} queued", "queued"),
            _q(_vla_only("labctl_gateway_in_flight"), "{{model}} in flight", "in_flight"),
        ),
        "Queued frames wait in the gateway for a slot, and age toward their deadline as they "
        "wait; in flight ones are at the engine.",
    ),
)

PANELS: tuple[Panel, ...] = (
    Panel(
        "gpu_memory",
        "GPU memory by deployment",
        "gpu",
        "bytes",
        (
            _q(
                "labctl_gpu_deployment_memory_bytes{@gpu}",
                "GPU {{gpu}} {{deployment}}",
                "deployment",
            ),
            _q(
                "labctl_gpu_unaccounted_memory_bytes{@gpu}",
                "GPU {{gpu}} unaccounted",
                "unaccounted",
            ),
            _q("DCGM_FI_DEV_FB_TOTAL{@gpu} * 1048576", "GPU {{gpu}} total", "total"),
        ),
        "Memory held by each deployment's process tree; unaccounted is memory no deployment "
        "holds (orphaned workers, other programs).",
        stacked=True,
    ),
    Panel(
        "gpu_processes",
        "GPU memory by process",
        "gpu",
        "bytes",
        (
            _q(
                "labctl_gpu_process_memory_bytes{@gpu}",
                "{{gpu}} {{pid}} {{process}} {{deployment}}",
            ),
        ),
        "Every process holding GPU memory, with the deployment whose tree it is in.",
        kind="table",
    ),
    Panel(
        "gpu_util",
        "GPU utilization",
        "gpu",
        "percent",
        (_q("DCGM_FI_DEV_GPU_UTIL{@gpu}", "GPU {{gpu}}"),),
    ),
    Panel(
        "gpu_power",
        "GPU power",
        "gpu",
        "watt",
        (
            _q("DCGM_FI_DEV_POWER_USAGE{@gpu}", "GPU {{gpu}} draw", "draw"),
            _q("DCGM_FI_DEV_POWER_MGMT_LIMIT{@gpu}", "GPU {{gpu}} limit", "limit"),
        ),
    ),
    Panel(
        "gpu_temp",
        "GPU temperature",
        "gpu",
        "celsius",
        (_q("DCGM_FI_DEV_GPU_TEMP{@gpu}", "GPU {{gpu}}"),),
    ),
    Panel(
        "gpu_throttle",
        "Clock event reasons",
        "gpu",
        "short",
        (_q("labctl_gpu_clock_event_active{@gpu}", "GPU {{gpu}} {{reason}}"),),
        "1 while the clocks are held back for the reason: thermal and power slowdowns throttle.",
        kind="state",
    ),
    Panel(
        "dep_state",
        "Deployment state",
        "deployment",
        "short",
        (_q("labctl_deployment_state{@dep} == 1", "{{deployment}} {{state}}"),),
        kind="state",
    ),
    Panel(
        "dep_bottleneck",
        "Bottleneck",
        "deployment",
        "short",
        (_q("labctl_deployment_bottleneck{@dep} == 1", "{{deployment}} {{class}}"),),
        "What limits the deployment now: prefill compute, decode bandwidth, KV capacity, "
        "the gateway's admission limit, its API server, its clients, throttled clocks, its "
        "start, or nothing.",
        kind="state",
    ),
    Panel(
        "dep_requests",
        "Requests running and waiting",
        "deployment",
        "short",
        (
            _q("labctl_engine_requests_running{@dep}", "{{deployment}} running", "running"),
            _q(
                "labctl_engine_requests_waiting{@dep}",
                "{{deployment}} waiting in the engine",
                "waiting",
            ),
            _q("labctl_gateway_queue_depth{@model}", "{{model}} queued at the gateway", "queued"),
        ),
        "Running and waiting come from the engine; queued requests wait in the gateway for a slot.",
    ),
    Panel(
        "dep_kv",
        "KV cache usage",
        "deployment",
        "percentunit",
        (_q("labctl_engine_kv_cache_usage_ratio{@dep}", "{{deployment}}"),),
    ),
    Panel(
        "dep_api",
        "API server CPU",
        "deployment",
        "percentunit",
        (
            _q(
                "rate(labctl_engine_api_server_cpu_seconds_total{@dep}[@w])",
                "{{deployment}}",
                "cpu",
            ),
        ),
        "Share of one core the engine's API server process is busy (vLLM with one API server "
        "process exports it): near 100%, it, not the GPU, sets the pace.",
    ),
    Panel(
        "dep_ttft",
        "Time to first token",
        "deployment",
        "s",
        _quantiles("labctl_gateway_time_to_first_token_seconds"),
    ),
    Panel(
        "dep_itl",
        "Inter-token latency",
        "deployment",
        "s",
        _quantiles("labctl_gateway_inter_token_latency_seconds"),
    ),
    Panel(
        "dep_e2e",
        "Request latency (end to end)",
        "deployment",
        "s",
        _quantiles("labctl_gateway_request_duration_seconds"),
    ),
    Panel(
        "dep_queue_wait",
        "Queue wait",
        "deployment",
        "s",
        _quantiles("labctl_gateway_queue_wait_seconds"),
    ),
    Panel(
        "dep_tokens",
        "Tokens per second",
        "deployment",
        "short",
        (
            _q(
                'sum by (model) (rate(labctl_gateway_tokens_total{kind="completion",@model}[@w]))',
                "{{model}} generated",
                "completion",
            ),
            _q(
                'sum by (model) (rate(labctl_gateway_tokens_total{kind="prompt",@model}[@w]))',
                "{{model}} prompt",
                "prompt",
            ),
        ),
    ),
    *SPEECH,
    *VLA,
    Panel(
        "deploys",
        "Deploys in the last hour",
        "deploys",
        "short",
        (
            _q(
                "sum by (outcome) (increase(labctl_deploy_duration_seconds_count{@i}[1h]))",
                "{{outcome}}",
            ),
        ),
    ),
    Panel(
        "deploy_p90",
        "Deploy duration (p90, last hour)",
        "deploys",
        "s",
        (
            _q(
                "histogram_quantile(0.9, sum by (le) (rate(labctl_deploy_duration_seconds_bucket{@i}[1h])))",
                "p90",
            ),
        ),
    ),
    Panel(
        "memory_release",
        "Memory release after a stop (p90, last hour)",
        "deploys",
        "s",
        (
            _q(
                "histogram_quantile(0.9, sum by (le) (rate(labctl_memory_release_seconds_bucket{@i}[1h])))",
                "p90",
            ),
        ),
        "From an engine's exit to its GPU memory being free.",
    ),
    Panel(
        "restarts",
        "Engine restarts in the last hour",
        "deploys",
        "short",
        (
            _q(
                "sum by (deployment) (increase(labctl_engine_restarts_total{@dep}[1h]))",
                "{{deployment}}",
            ),
        ),
    ),
    Panel(
        "alerts",
        "Firing alerts",
        "alerts",
        "short",
        (_q('ALERTS{alertstate="firing",@i}', "{{alertname}}"),),
        "The lab's alert rules, as Prometheus evaluates them.",
        kind="table",
        grafana_only=True,
    ),
    Panel(
        "doctor",
        "Doctor findings",
        "alerts",
        "short",
        (_q('labctl_doctor_findings{severity=~"fail|warn",@i} > 0', "{{severity}} {{code}}"),),
        "Failures and warnings of the lab's latest doctor run, by check (`labctl doctor "
        "--explain CODE`); the page lists each with its message and remedy.",
        kind="table",
        grafana_only=True,
    ),
)

_FILTERS = {
    "@gpu": 'instance=~"$instance",gpu=~"$gpu"',
    "@dep": 'instance=~"$instance",deployment=~"$deployment"',
    "@model": 'instance=~"$instance",model=~"$deployment"',
    "@i": 'instance=~"$instance"',
}


def for_grafana(expr: str) -> str:
    out = expr.replace("[@w]", "[$__rate_interval]")
    for key, value in _FILTERS.items():
        out = out.replace(key, value)
    return out


def for_daemon(expr: str) -> str:
    out = expr.replace("[@w]", "[1m]")
    out = re.sub(r",?@(gpu|dep|model|i)\b", "", out)
    return out.replace("{,", "{").replace("{}", "")


def daemon_queries() -> list[tuple[Panel, Query, str]]:
    """What the daemon evaluates each tick: every panel query the page shows."""
    return [(p, q, for_daemon(q.expr)) for p in PANELS if not p.grafana_only for q in p.queries]
