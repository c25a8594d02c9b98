"""The lab's report as one document: what the lab recorded over a period, in sections.

:func:`assemble` turns the lab's sources (``GET /api/report``: its GPUs, deployments, journal,
alerts, serving rollups, bench results, doctor report, engine log tails), the models on disk
and their fit plans into the sections that ``report.json`` keeps and that the HTML and
Markdown renderers show. A public report goes through :mod:`labctl.report.redact` whole,
after the fields only an operator needs are cut to what is safe to publish (the driver's
major version, a revision's short hash); the private report keeps everything but
credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
import re
import statistics
from typing import Any

#: Serving figures the lab records each minute (``daemon/record.py``), as the report names
#: them: (key, label, unit). Keys not listed stay in report.json only.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("tokens_completion", "generated tokens/s", "tok/s"),
    ("tokens_prompt", "prompt tokens/s", "tok/s"),
    ("ttft_p50", "TTFT p50", "s"),
    ("ttft_p99", "TTFT p99", "s"),
    ("itl_p50", "ITL p50", "s"),
    ("itl_p99", "ITL p99", "s"),
    ("e2e_p50", "request latency p50", "s"),
    ("e2e_p99", "request latency p99", "s"),
    ("requests_running", "requests running", ""),
    ("requests_running_max", "requests running (peak)", ""),
    ("requests_waiting", "requests waiting in the engine", ""),
    ("requests_waiting_max", "requests waiting in the engine (peak)", ""),
    ("requests_queued", "requests queued at the gateway", ""),
    ("requests_queued_max", "requests queued at the gateway (peak)", ""),
    ("kv", "KV cache usage", "ratio"),
    ("kv_max", "KV cache usage (peak)", "ratio"),
    ("gpu_memory_bytes", "GPU memory", "bytes"),
    ("rtfx", "RTFx (speech)", "x"),
    ("rtfx_floor", "RTFx floor (speech)", "x"),
    ("audio_seconds_per_second", "audio seconds per second", "s/s"),
    ("requests_per_second", "requests/s", "req/s"),
    ("actions_per_second", "actions/s (VLA)", "1/s"),
    ("control_hz", "target control rate", "Hz"),
    ("latency_p50", "action latency p50", "s"),
    ("latency_p99", "action latency p99", "s"),
    ("deadline_miss_ratio", "deadline misses", "ratio"),
    ("queued", "queued", ""),
    ("queued_max", "queued (peak)", ""),
    ("in_flight", "in flight", ""),
)
#: The charts drawn over time for each deployment: (title, unit, keys).
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Throughput", "tokens/s", ("tokens_completion", "tokens_prompt")),
    ("Time to first token", "s", ("ttft_p50", "ttft_p99")),
    ("Inter-token latency", "s", ("itl_p50", "itl_p99")),
    (
        "Requests",
        "requests",
        (
            "requests_running",
            "requests_waiting",
            "requests_queued",
            "requests_waiting_max",
            "requests_queued_max",
        ),
    ),
    ("KV cache usage", "ratio", ("kv", "kv_max")),
    ("Real-time factor (speech)", "x", ("rtfx", "rtfx_floor")),
    ("Actions per second (VLA)", "1/s", ("actions_per_second", "control_hz")),
    ("Action latency (VLA)", "s", ("latency_p50", "latency_p99")),
)
#: The points a chart over time keeps (the period's minutes are averaged down to these).
CHART_POINTS = 240
#: Bench fields shown per run: (field, column).
BENCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("completed", "done"), ("failed", "failed"), ("request_throughput", "req/s"),
    ("output_throughput", "out tok/s"), ("median_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"), ("median_tpot_ms", "TPOT p50 ms"),
    ("median_itl_ms", "ITL p50 ms"), ("p99_itl_ms", "ITL p99 ms"), ("rtfx", "RTFx"),
    ("achieved_hz", "Hz/robot"), ("action_throughput", "actions/s"),
    ("deadline_miss_ratio", "deadline misses"),
)  # fmt: skip
#: Fields whose 40- or 64-hex value is a content hash: shortened, never a secret.
HASH_KEYS = ("revision_hash", "commit", "commit_hash", "sha", "blob", "blob_hash", "etag")
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: Characters of a deploy's error the report keeps.
ERROR_CHARS = 400


def iso(t: float | None) -> str | None:
    """A unix time as ``2026-12-03 07:10:00Z`` (UTC, seconds)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def assemble(
    src: dict[str, Any],
    models: dict[str, Any] | None,
    plans: Sequence[dict[str, Any]],
    *,
    public: bool,
) -> dict[str, Any]:
    """The report's sections from the lab's sources (before redaction).

    ``models`` is ``labctl models --json``'s document (None: not read), ``plans`` the fit
    plans of the deployments' models on the lab's GPUs (:func:`labctl.cli.report` makes
    them). Only fields are chosen and cut here; text is left for the redactor.
    """
    lab = src.get("lab") or {}
    since, until = float(src.get("since") or 0), float(src.get("generated") or 0)
    deploys = list(src.get("deploys") or [])
    return {
        "meta": {
            "title": "labctl lab report", "public": public, "labctl": lab.get("version"),
            "generated": iso(until), "since": iso(since),
            "period_days": round((until - since) / 86400, 2),
            "gpu_backend": lab.get("gpu_backend"),
            "config": lab.get("config") or "embedded default",
            "started": iso(lab.get("started")),
        },
        "lab": {} if public else {k: lab.get(k) for k in ("url", "hostname", "fqdn", "user",
                                                            "home")},
        "gpus": [_gpu(g, public) for g in src.get("gpus") or []],
        "deployments": [_deployment(d, public) for d in src.get("deployments") or []],
        "history": {
            "summary": _history_summary(deploys),
            "deploys": [_deploy(d) for d in deploys],
        },
        "fit": {"models": _models(models), "plans": list(plans),
                "cache": _cache(models)},
        "bench": [_bench(b) for b in src.get("bench") or []],
        "serving": _serving(src.get("serving") or [], since, until),
        "alerts": [_alert(a, until) for a in src.get("alerts") or []],
        "doctor": _doctor(src.get("doctor")),
        "config_text": lab.get("config_text") or "",
        "logs": {str(k): [str(x) for x in v] for k, v in (src.get("logs") or {}).items()},
    }  # fmt: skip


def short_hashes(obj: Any, key: str = "") -> Any:
    """``obj`` with each content hash cut to 12 characters: fields named in HASH_KEYS, a
    revision that is a commit id, and ``snapshots/<40 hex>`` or ``blobs/<64 hex>`` in text."""
    if isinstance(obj, dict):
        return {k: short_hashes(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [short_hashes(v, key) for v in obj]
    if isinstance(obj, str):
        if key in (*HASH_KEYS, "revision") and _HEX.fullmatch(obj):
            return obj[:12]
        return re.sub(r"(snapshots|blobs)/([0-9a-f]{12})(?:[0-9a-f]{28}|[0-9a-f]{52})\b",
                      r"\1/\2", obj)  # fmt: skip
    return obj


# -- sections ------------------------------------------------------------------------------


def _gpu(g: dict[str, Any], public: bool) -> dict[str, Any]:
    driver = g.get("driver_version")
    row = {
        "index": g.get("index"), "name": g.get("name"),
        "memory_total_bytes": g.get("memory_total_bytes"),
        "power_limit_watts": g.get("power_limit_watts"),
        "driver": (str(driver).split(".")[0] if public else driver) if driver else None,
    }  # fmt: skip
    if not public:
        row |= {"uuid": g.get("uuid"), "pci_bus_id": g.get("pci_bus_id"),
                "cuda_driver_version": g.get("cuda_driver_version")}  # fmt: skip
    return row


def _deployment(d: dict[str, Any], public: bool) -> dict[str, Any]:
    load = d.get("load_path") or {}
    row = {
        "name": d.get("name"), "engine": d.get("engine"), "model": d.get("model"),
        "served_model": d.get("served_model"), "revision": d.get("revision"),
        "gpus": d.get("gpus"), "state": d.get("state"), "restarts": d.get("restarts"),
        "error": d.get("error"),
        "startup_s": load.get("total_s"), "startup": load.get("verdict"),
        "asleep": [a.get("revision") for a in d.get("asleep") or [] if isinstance(a, dict)],
    }  # fmt: skip
    if not public:
        row |= {"url": d.get("url"), "pid": d.get("pid")}
    return row


def _step_facts(deploy: dict[str, Any]) -> tuple[dict[str, float], int | None, float | None]:
    """A deploy's step durations by name, the memory its release freed and its release lag."""
    steps: dict[str, float] = {}
    freed: int | None = None
    lag: float | None = None
    for s in deploy.get("steps") or []:
        if s.get("duration_s") is not None:
            name = str(s.get("name"))
            steps[name] = steps.get(name, 0.0) + float(s["duration_s"])
        if s.get("name") == "verify_release":
            freed = s.get("freed_bytes")
            lag = (s.get("detail") or {}).get("release_seconds")
    return steps, freed, lag


def _deploy(d: dict[str, Any]) -> dict[str, Any]:
    steps, freed, lag = _step_facts(d)
    error = d.get("error")
    return {
        "id": d.get("id"), "deployment": d.get("deployment"), "kind": d.get("kind"),
        "from_revision": d.get("from_revision"), "to_revision": d.get("to_revision"),
        "started": iso(d.get("started")), "outcome": d.get("outcome") or "unfinished",
        "duration_s": d.get("duration_s"), "steps": steps, "freed_bytes": freed,
        "release_s": lag,
        "error": error[:ERROR_CHARS] + ("…" if len(error) > ERROR_CHARS else "") if error else None,
        "need": _need(d),
    }  # fmt: skip


def _need(d: dict[str, Any]) -> str | None:
    for s in d.get("steps") or []:
        if s.get("name") == "preflight":
            need = (s.get("detail") or {}).get("need")
            return str(need) if need else None
    return None


def _median(values: Iterable[float | None]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return statistics.median(xs) if xs else None


def _history_summary(deploys: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for d in deploys:
        by_name.setdefault(str(d.get("deployment")), []).append(d)
    out = []
    for name, ds in sorted(by_name.items()):
        facts = [_step_facts(d) for d in ds]
        step_names = sorted({n for steps, _, _ in facts for n in steps})
        outcomes: dict[str, int] = {}
        for d in ds:
            o = d.get("outcome") or "unfinished"
            outcomes[o] = outcomes.get(o, 0) + 1
        lags = [lag for _, _, lag in facts if lag is not None]
        out.append({
            "deployment": name, "deploys": len(ds), "outcomes": outcomes,
            "rollbacks": sum(1 for d in ds if d.get("kind") == "rollback"),
            "restarts": sum(1 for d in ds if d.get("kind") == "restart"),
            "median_s": _median(d.get("duration_s") for d in ds),
            "max_s": max((float(d["duration_s"]) for d in ds if d.get("duration_s") is not None),
                         default=None),
            "step_median_s": {n: _median(s.get(n) for s, _, _ in facts) for n in step_names},
            "freed_bytes_median": _median(f for _, f, _ in facts),
            "release_s_median": _median(lags), "release_s_max": max(lags, default=None),
        })  # fmt: skip
    return out


def _models(models: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not models:
        return []
    keys = ("repo_id", "revision", "source", "format", "quantization", "size_bytes",
            "complete", "used_by", "fits_on", "path")  # fmt: skip
    return [{k: m.get(k) for k in keys} for m in models.get("models") or []]


def _cache(models: dict[str, Any] | None) -> dict[str, Any]:
    if not models:
        return {"read": False}
    rows = models.get("models") or []
    return {
        "read": True, "entries": len(rows),
        "size_bytes": sum(int(m.get("size_bytes") or 0) for m in rows),
        "incomplete": sum(1 for m in rows if not m.get("complete")),
        "gpus": list(models.get("gpus") or []), "warnings": list(models.get("warnings") or []),
    }  # fmt: skip


def bench_runs(result: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """A bench result's swept parameter (None: one run) and its runs."""
    runs = result.get("runs")
    if isinstance(runs, list):
        sweep = result.get("sweep") or {}
        parameter = sweep.get("parameter") if isinstance(sweep, dict) else None
        return (str(parameter) if parameter else "run"), [r for r in runs if isinstance(r, dict)]
    return None, [result]


def _bench(b: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = b["result"] if isinstance(b.get("result"), dict) else {}
    parameter, runs = bench_runs(result)
    rows = []
    for i, r in enumerate(runs):
        row: dict[str, Any] = {"x": _x(r, parameter, i)}
        row |= {f: r.get(f) for f, _ in BENCH_FIELDS if isinstance(r.get(f), int | float)}
        rows.append(row)
    first = runs[0] if runs else {}
    return {
        "id": b.get("id"), "t": iso(b.get("t")),
        "model": b.get("model") or first.get("model_id") or first.get("model"),
        "backend": first.get("backend"), "parameter": parameter, "rows": rows,
        "input_len": first.get("input_len") or first.get("mean_input_tokens"),
        "output_len": first.get("output_len") or first.get("mean_output_tokens"),
        "headline": result.get("headline"),
    }  # fmt: skip


def _x(run: dict[str, Any], parameter: str | None, index: int) -> Any:
    if parameter == "rate":
        return run.get("request_rate")
    if parameter == "concurrency":
        return run.get("max_concurrency")
    if parameter == "robots":
        return run.get("robots")
    return index + 1


def _serving(rows: Sequence[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    """Per deployment: each figure's median, low and high over the period's minutes, and the
    charts' series averaged down to :data:`CHART_POINTS` points."""
    by_name: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for r in rows:
        figures: dict[str, Any] = r["figures"] if isinstance(r.get("figures"), dict) else {}
        by_name.setdefault(str(r.get("deployment")), []).append((float(r.get("t") or 0), figures))
    out = []
    for name, points in sorted(by_name.items()):
        keys = sorted({k for _, f in points for k, v in f.items() if isinstance(v, int | float)})
        summary = {}
        for k in keys:
            xs = [float(f[k]) for _, f in points if isinstance(f.get(k), int | float)]
            summary[k] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                          "minutes": len(xs)}  # fmt: skip
        out.append({"deployment": name, "minutes": len(points), "first": iso(points[0][0]),
                    "last": iso(points[-1][0]), "summary": summary,
                    "series": _downsample(points, keys, since, until)})  # fmt: skip
    return out


def _downsample(
    points: Sequence[tuple[float, dict[str, Any]]], keys: Sequence[str], since: float, until: float
) -> dict[str, Any]:
    """Times and each key's values, averaged into at most CHART_POINTS buckets."""
    lo = min(since, points[0][0]) if points else since
    width = max((until - lo) / CHART_POINTS, 60.0)
    buckets: dict[int, list[dict[str, Any]]] = {}
    for t, f in points:
        buckets.setdefault(int((t - lo) // width), []).append(f)
    order = sorted(buckets)
    values: dict[str, list[float | None]] = {}
    for k in keys:
        col: list[float | None] = []
        for b in order:
            xs = [float(f[k]) for f in buckets[b] if isinstance(f.get(k), int | float)]
            col.append(round(statistics.fmean(xs), 6) if xs else None)
        values[k] = col
    return {"t": [round(lo + (b + 0.5) * width, 1) for b in order], "values": values}


def _alert(a: dict[str, Any], until: float) -> dict[str, Any]:
    started, ended = a.get("started"), a.get("ended")
    end = ended if ended is not None else until
    return {
        "name": a.get("name"), "severity": a.get("severity"), "labels": a.get("labels") or {},
        "summary": a.get("summary"), "started": iso(started), "ended": iso(ended),
        "duration_s": None if started is None else max(0.0, float(end) - float(started)),
        "firing": ended is None,
    }  # fmt: skip


def _doctor(report: Any) -> dict[str, Any] | None:
    if not isinstance(report, dict):
        return None
    findings = []
    for f in report.get("findings") or []:
        if not isinstance(f, dict):
            continue
        findings.append({k: f.get(k) for k in ("severity", "code", "place", "message",
                                               "evidence", "remedy")})  # fmt: skip
    counts: dict[str, int] = {}
    for f in findings:
        counts[str(f.get("severity"))] = counts.get(str(f.get("severity")), 0) + 1
    return {"counts": counts, "findings": findings, "skipped": report.get("skipped") or []}
