"""The report's document as the pages show it: sections of text, tables, charts and code.

Both renderers (:mod:`labctl.report.html`, :mod:`labctl.report.markdown`) draw the same
:class:`Section` list, so the page and the Markdown say the same things; only the HTML draws
the charts. ``rows`` caps the long tables (the Markdown shrinks it until it fits a GitHub
issue; the rest stays in report.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.report import plots
from labctl.report.document import BENCH_FIELDS, CHARTS, FIGURES

#: Table rows beyond which a table is folded (``<details>``).
FOLD_ROWS = 12


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    #: Rows left out (the newest are shown); report.json has them all.
    more: int = 0
    #: Folded whatever its length (the page opens on what matters).
    folded: bool = False
    #: Never folded, however long (a summary the reader came for).
    shown: bool = False

    @property
    def fold(self) -> bool:
        return self.folded or (len(self.rows) > FOLD_ROWS and not self.shown)


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    #: Charts, drawn only by the HTML: (title, draw → SVG).
    charts: list[tuple[str, Callable[[], str]]] = field(default_factory=list)
    #: Folded blocks of verbatim text: (summary, text).
    code: list[tuple[str, str]] = field(default_factory=list)


# -- formatting ------------------------------------------------------------------------------


def gib(n: Any) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, int | float) else "–"


def secs(n: Any) -> str:
    if not isinstance(n, int | float):
        return "–"
    return f"{n * 1000:.0f} ms" if n < 1 else f"{n:.2f} s"


def num(n: Any) -> str:
    if isinstance(n, bool) or n is None:
        return "yes" if n else ("no" if n is False else "–")
    if isinstance(n, int):
        return f"{n:,}"
    if isinstance(n, float):
        return f"{n:,.0f}" if abs(n) >= 1000 else f"{n:.3g}"
    return str(n)


def figure(value: Any, unit: str) -> str:
    if unit == "bytes":
        return gib(value)
    if unit == "s":
        return secs(value)
    if unit == "ratio":
        return f"{value * 100:.1f}%" if isinstance(value, int | float) else "–"
    return num(value)


def _text(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list):
        return ", ".join(_text(x) for x in v) or "–"
    return num(v) if isinstance(v, int | float | bool) else str(v)


# -- sections ----------------------------------------------------------------------------


def sections(doc: dict[str, Any], rows: int = 100, log_lines: int = 40) -> list[Section]:
    """The report's sections, long tables cut to ``rows`` and log tails to ``log_lines``."""
    return [
        _summary(doc), _gpus(doc), _deployments(doc), _history(doc, rows), _fit(doc, rows),
        _bench(doc), _serving(doc), _alerts(doc, rows), _doctor(doc),
        _config(doc, log_lines),
    ]  # fmt: skip


def _summary(doc: dict[str, Any]) -> Section:
    m = doc["meta"]
    s = Section("summary", "Summary")
    s.text.append(f"Period: {m['since']} to {m['generated']} ({m['period_days']:g} days). "
                  f"labctl {m.get('labctl') or '?'}, GPU backend {m.get('gpu_backend')}, "
                  f"configuration: {m.get('config')}.")  # fmt: skip
    deploys = doc["history"]["deploys"]
    fired = len(doc["alerts"])
    doctor = doc.get("doctor") or {}
    fails = (doctor.get("counts") or {}).get("fail", 0)
    s.text.append(f"{len(doc['gpus'])} GPU(s), {len(doc['deployments'])} deployment(s), "
                  f"{len(deploys)} deploy(s) in the period, {len(doc['bench'])} bench run(s), "
                  f"{fired} alert(s) fired, {fails} doctor failure(s).")  # fmt: skip
    red = doc.get("redaction")
    if m.get("public"):
        s.text.append("This is a public report: hostnames, addresses, ports, users, paths, GPU "
                      "identities and credentials were replaced with consistent placeholders "
                      f"({red['summary'] if red else 'nothing to redact'}).")  # fmt: skip
    else:
        s.text.append("This is the operator's report: it keeps hostnames, addresses and paths "
                      "(credentials are still removed). `labctl report --public` writes one to "
                      "share.")  # fmt: skip
    return s


def _gpus(doc: dict[str, Any]) -> Section:
    public = doc["meta"]["public"]
    cols = ["#", "model", "memory", "power limit", "driver"]
    if not public:
        cols += ["UUID", "PCI bus id"]
    rows = []
    for g in doc["gpus"]:
        row = [_text(g.get("index")), _text(g.get("name")), gib(g.get("memory_total_bytes")),
               f"{g['power_limit_watts']:.0f} W" if g.get("power_limit_watts") else "–",
               _text(g.get("driver"))]  # fmt: skip
        if not public:
            row += [_text(g.get("uuid")), _text(g.get("pci_bus_id"))]
        rows.append(row)
    return Section("gpus", "GPUs", tables=[Table("GPUs", cols, rows)])


def _deployments(doc: dict[str, Any]) -> Section:
    rows = [[_text(d["name"]), _text(d["engine"]), _text(d["model"]), _text(d["revision"]),
             _text(d["gpus"]), _text(d["state"]), _text(d["restarts"]), secs(d.get("startup_s")),
             _text(d.get("startup"))] for d in doc["deployments"]]  # fmt: skip
    cols = ["deployment", "engine", "model", "rev", "GPUs", "state", "restarts", "startup",
            "load path"]  # fmt: skip
    return Section("deployments", "Deployments", tables=[Table("Deployments", cols, rows)])


def _history(doc: dict[str, Any], limit: int) -> Section:
    h = doc["history"]
    s = Section("history", "Deploy history")
    rows = []
    for x in h["summary"]:
        o = x["outcomes"]
        rows.append([x["deployment"], num(x["deploys"]), num(o.get("committed", 0)),
                     num(o.get("rolled_back", 0)),
                     num(sum(v for k, v in o.items() if k not in ("committed", "rolled_back"))),
                     num(x["rollbacks"]), num(x["restarts"]), secs(x["median_s"]),
                     secs(x["max_s"]), gib(x["freed_bytes_median"]),
                     f"{secs(x['release_s_median'])} / {secs(x['release_s_max'])}"])  # fmt: skip
    s.tables.append(Table("By deployment", ["deployment", "deploys", "committed", "rolled back",
                                            "other", "rollbacks", "restarts", "median",
                                            "longest", "memory released", "release lag p50 / max"],
                          rows))  # fmt: skip
    steps = sorted({n for x in h["summary"] for n in x["step_median_s"]},
                   key=_step_order)  # fmt: skip
    s.tables.append(Table("Median seconds by step", ["deployment", *steps],
                          [[x["deployment"], *(secs(x["step_median_s"].get(n)) for n in steps)]
                           for x in h["summary"]]))  # fmt: skip
    deploys = h["deploys"]
    shown = deploys[:limit]
    s.tables.append(Table(
        "Deploys (newest first)",
        ["#", "deployment", "kind", "revisions", "outcome", "started", "took", "release lag",
         "freed", "error"],
        [[num(d["id"]), _text(d["deployment"]), _text(d["kind"]),
          f"{_text(d['from_revision'])} → {_text(d['to_revision'])}", _text(d["outcome"]),
          _text(d["started"]), secs(d["duration_s"]), secs(d["release_s"]), gib(d["freed_bytes"]),
          _text(d["error"])] for d in shown],
        more=len(deploys) - len(shown),
    ))  # fmt: skip
    recent = list(reversed(deploys[:40]))
    if recent:
        labels = [f"#{d['id']} {d['deployment']}" for d in recent]
        names = sorted({n for d in recent for n in d["steps"]}, key=_step_order)
        steps_of = [{n: d["steps"].get(n, 0.0) for n in names} for d in recent]
        s.charts.append(("Deploy durations by step",
                         lambda: plots.stacked_steps("Deploy durations by step (oldest left)",
                                                     labels, steps_of)))  # fmt: skip
    return s


#: The order a deploy runs its steps in (others after, by name).
STEP_ORDER = ("preflight", "pull", "drain", "sleep", "stop", "verify_release", "start", "wake",
              "smoke_test", "switch")  # fmt: skip


def _step_order(name: str) -> tuple[int, str]:
    return (STEP_ORDER.index(name) if name in STEP_ORDER else len(STEP_ORDER), name)


def _fit(doc: dict[str, Any], limit: int) -> Section:
    f = doc["fit"]
    s = Section("fit", "Models on disk and what fits where")
    cache = f["cache"]
    if cache.get("read"):
        s.text.append(f"{cache['entries']} model revision(s) on disk, {gib(cache['size_bytes'])}"
                      f" in all, {cache['incomplete']} incomplete; fits planned on "
                      f"{_text(cache['gpus'])}.")  # fmt: skip
    else:
        s.text.append("The models on disk were not read (`labctl report --no-models`).")
    models = f["models"][:limit]
    s.tables.append(Table(
        "Models on disk",
        ["model", "revision", "source", "format", "quantization", "size", "complete", "used by",
         "fits on"],
        [[_text(m["repo_id"]), _text(m["revision"]), _text(m["source"]), _text(m["format"]),
          _text(m["quantization"]), gib(m["size_bytes"]), num(m["complete"]), _text(m["used_by"]),
          _text(m["fits_on"])] for m in models],
        more=len(f["models"]) - len(models),
    ))  # fmt: skip
    s.tables.append(Table(
        "The deployments' models on the lab's GPUs (labctl fit)",
        ["model", "GPU", "fits", "weights", "KV cache", "context", "context that fits",
         "sequences at full context", "note"],
        [[_text(p.get("model")), _text(p.get("gpu")), num(p.get("fits")),
          gib(p.get("weights_bytes")), f"{num(p.get('kv_cache_tokens'))} tokens",
          num(p.get("max_model_len")), num(p.get("max_model_len_fit")),
          num(p.get("max_concurrency")), _text(p.get("note") or "")] for p in f["plans"]],
    ))  # fmt: skip
    needs = {}
    for d in doc["history"]["deploys"]:
        if d.get("need") and d["deployment"] not in needs:
            needs[d["deployment"]] = d["need"]
    if needs:
        s.tables.append(Table("What each deployment's last preflight planned",
                              ["deployment", "needs"],
                              [[k, v] for k, v in sorted(needs.items())]))  # fmt: skip
    return s


def _bench(doc: dict[str, Any]) -> Section:
    s = Section("bench", "Bench results")
    if not doc["bench"]:
        s.text.append("No bench run was recorded in the period (`labctl bench` against the lab "
                      "records its result).")  # fmt: skip
    for b in doc["bench"]:
        fields = [(k, c) for k, c in BENCH_FIELDS  # a backend's own fields: where it set them
                  if any(r.get(k) for r in b["rows"]) or k in ("completed", "failed")]  # fmt: skip
        param = b["parameter"]
        title = (f"Bench #{b['id']} at {b['t']}: {b['model']}"
                 + (f", swept over {param}" if param and param != "run" else ""))  # fmt: skip
        s.tables.append(Table(title, [param or "run", *(c for _, c in fields)],
                              [[_text(r["x"]), *(num(r.get(k)) for k, _ in fields)]
                               for r in b["rows"]]))  # fmt: skip
        if param and param != "run" and len(b["rows"]) > 1:
            xs = [r["x"] for r in b["rows"]]
            rows = b["rows"]
            thr = {
                c: [r.get(k) for r in rows]
                for k, c in fields
                if k in ("output_throughput", "action_throughput", "request_throughput")
            }
            lat = {c: [r.get(k) for r in rows] for k, c in fields
                   if k.endswith("_ms")}  # fmt: skip
            for name, series, unit in (("throughput", thr, "per second"), ("latency", lat, "ms")):
                if series:
                    s.charts.append(
                        (
                            f"Bench #{b['id']} {name}",
                            _chart_against(
                                f"Bench #{b['id']} {name} against {param}", param, unit, xs, series
                            ),
                        )
                    )
    return s


def _chart_against(title: str, x: str, unit: str, xs: list[Any],
                   series: dict[str, list[Any]]) -> Callable[[], str]:  # fmt: skip
    return lambda: plots.against(title, x, unit, xs, series)


def _chart_time(title: str, unit: str, ts: list[float],
                series: dict[str, list[Any]]) -> Callable[[], str]:  # fmt: skip
    return lambda: plots.over_time(title, unit, ts, series)


def _serving(doc: dict[str, Any]) -> Section:
    s = Section("serving", "Serving over the period")
    if not doc["serving"]:
        s.text.append("No serving figures were recorded in the period.")
    labels = {k: (label, unit) for k, label, unit in FIGURES}
    for d in doc["serving"]:
        rows = []
        for key, (label, unit) in labels.items():
            x = d["summary"].get(key)
            if x is not None:
                rows.append([label, figure(x["median"], unit), figure(x["min"], unit),
                             figure(x["max"], unit)])  # fmt: skip
        s.tables.append(Table(f"{d['deployment']}: {d['minutes']} minute(s) recorded, "
                              f"{d['first']} to {d['last']}",
                              ["figure (per minute)", "median", "lowest", "highest"], rows,
                              shown=True))  # fmt: skip
        series = d["series"]
        for title, unit, keys in CHARTS:
            present = {labels[k][0]: series["values"][k] for k in keys
                       if k in series["values"] and any(v is not None for v in series["values"][k])}  # fmt: skip
            if present:
                s.charts.append(
                    (
                        f"{d['deployment']}: {title}",
                        _chart_time(f"{d['deployment']}: {title}", unit, series["t"], present),
                    )
                )
    return s


def _alerts(doc: dict[str, Any], limit: int) -> Section:
    alerts = doc["alerts"]
    s = Section("alerts", "Alerts that fired")
    if not alerts:
        s.text.append("No alert fired in the period.")
        return s
    shown = alerts[-limit:]
    s.tables.append(Table(
        "Alerts", ["alert", "severity", "labels", "started", "ended", "for", "summary"],
        [[_text(a["name"]), _text(a["severity"]),
          ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())) or "–",
          _text(a["started"]), "still firing" if a["firing"] else _text(a["ended"]),
          secs(a["duration_s"]), _text(a["summary"])] for a in shown],
        more=len(alerts) - len(shown),
    ))  # fmt: skip
    return s


def _doctor(doc: dict[str, Any]) -> Section:
    s = Section("doctor", "Doctor findings")
    d = doc.get("doctor")
    if not d:
        s.text.append("The doctor had not run.")
        return s
    order = {"fail": 0, "warn": 1, "info": 2, "ok": 3}
    findings = sorted(d["findings"], key=lambda f: order.get(str(f.get("severity")), 4))
    s.text.append(", ".join(f"{n} {k}" for k, n in sorted(d["counts"].items(),
                                                          key=lambda kv: order.get(kv[0], 4))))  # fmt: skip
    cols = ["severity", "check", "where", "finding", "evidence", "remedy"]

    def row(f: dict[str, Any]) -> list[str]:
        return [_text(f.get(k) or "–") for k in ("severity", "code", "place", "message",
                                                 "evidence", "remedy")]  # fmt: skip

    bad = [row(f) for f in findings if f.get("severity") in ("fail", "warn")]
    rest = [row(f) for f in findings if f.get("severity") not in ("fail", "warn")]
    s.tables.append(Table("Failures and warnings", cols, bad))
    s.tables.append(Table("Other findings", cols, rest, folded=True))
    return s


def _config(doc: dict[str, Any], log_lines: int) -> Section:
    s = Section("config", "Configuration and engine logs")
    s.code.append(("lab.toml", doc.get("config_text") or "(empty)"))
    for name, lines in sorted(doc.get("logs", {}).items()):
        tail = [line[:300] for line in lines[-log_lines:]]
        s.code.append((f"{name}: the engine log's last {len(tail)} lines", "\n".join(tail)))
    return s
