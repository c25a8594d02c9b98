"""``labctl report``: the lab's report over a period, as HTML, Markdown and JSON; with
``--public``, with nothing private in it.

The lab's records come from the daemon (``GET /api/report``); the models on disk and the
fit plans are read here, on the lab's machine, as ``labctl models`` and ``labctl fit``
read them. A public report's map of what was replaced goes to a 0600 file beside it and
never into it.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
import socket
from typing import Any

import click

from labctl.cli.lab import call, url_option
from labctl.cli.output import console, emit_json, warn
from labctl.config import LabConfig, load_config
from labctl.errors import LabError, UsageError
from labctl.home import write_private
from labctl.units import format_bytes, parse_duration

#: The private map's file name (beside the report; never share it).
MAP_FILE = "PRIVATE-redaction-map.json"
#: At most this far back (the lab keeps 35 days of records).
MAX_SINCE_S = 400 * 86400.0


@click.command()
@click.option("--public", is_flag=True,
              help="replace hostnames, addresses, ports, users, paths, GPU identities and "
              "credentials with consistent placeholders, for sharing")  # fmt: skip
@click.option("--since", default="7d", show_default=True, metavar="DURATION",
              help="the period: e.g. 90m, 24h, 7d")  # fmt: skip
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("lab-report"),
              show_default=True, help="the folder for report.html, report.md and report.json")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml for the models on disk and the GPUs (default: the lab's own, "
              "else the embedded default)")  # fmt: skip
@click.option("--no-models", is_flag=True, help="leave out the models on disk and fit plans")
@url_option
@click.option("--json", "as_json", is_flag=True, help="print what was written as JSON")
def report(public: bool, since: str, out_dir: Path, config_path: Path | None, no_models: bool,
           url: str, as_json: bool) -> None:  # fmt: skip
    """Write the lab's report: its GPUs, the models on disk and what fits where, the
    deployments and their deploy history (durations by step, memory released, release lag,
    rollbacks, restarts), bench results the lab recorded (with sweep plots), serving figures
    over the period (throughput, TTFT/ITL, queue, KV usage, RTFx, action rate), alerts that
    fired, and the doctor's findings.

    report.html is one self-contained page (plots inline, no request leaves it), report.md
    fits a GitHub issue (under 60,000 characters, long tables folded), report.json holds the
    data. With --public every hostname, address, port, user, path, GPU UUID, serial, PCI bus
    id and credential is replaced, the same value by the same placeholder throughout; the
    map of replacements is written to PRIVATE-redaction-map.json (0600) beside the report.
    """
    from labctl.report.build import build
    from labctl.report.html import render_html
    from labctl.report.markdown import render_markdown

    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise UsageError(f"--since {since!r}: {exc}") from None
    if not 0 < seconds <= MAX_SINCE_S:
        raise UsageError(f"--since {since!r}: give a period between 1 s and 400 days")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: it is a file; give a folder")
    src = call(url, "GET", f"/api/report?since={seconds:g}", timeout=120)
    if not isinstance(src, dict) or "lab" not in src:
        raise LabError(f"the lab at {url} sent no report data; is it a labctl of this version?")
    models: dict[str, Any] | None = None
    plans: list[dict[str, Any]] = []
    if not no_models:
        models, plans = _models(src, config_path)
    doc, scrubber = build(src, models, plans, public=public, env=os.environ,
                          hosts=(socket.gethostname(), socket.getfqdn()),
                          users=(getpass.getuser(),))  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(doc, indent=1, ensure_ascii=False) + "\n",
        "report.html": render_html(doc),
        "report.md": render_markdown(doc),
    }
    written: list[str] = []
    for name, text in files.items():
        path = out_dir / name
        if public:
            path.write_text(text, encoding="utf-8")
        else:  # the operator's report keeps hostnames and paths: private to the user
            write_private(path, text)
        written.append(str(path))
    if scrubber is not None:
        scrubber.write_map(out_dir / MAP_FILE)
    summary = doc["redaction"]["summary"] if public else None
    if as_json:
        emit_json({"out": str(out_dir), "files": written, "public": public,
                   "map": str(out_dir / MAP_FILE) if public else None,
                   "redacted": scrubber.counts() if scrubber else None,
                   "markdown_chars": len(files["report.md"])})  # fmt: skip
        return
    for shown in written:
        console().print(f"wrote {shown} ({format_bytes(Path(shown).stat().st_size)})")
    if public:
        console().print(f"public: {summary}")
        console().print(f"the map of replacements is in {out_dir / MAP_FILE} (0600): keep it "
                      "private, never attach it")  # fmt: skip
    else:
        console().print("private: hostnames, addresses and paths kept (files 0600); "
                      "--public writes one to share")  # fmt: skip


def _models(src: dict[str, Any], config_path: Path | None) -> tuple[dict[str, Any] | None,
                                                                   list[dict[str, Any]]]:  # fmt: skip
    """The models on disk (``labctl models --json``) and the deployments' fit plans; a failure
    is a warning and an empty section."""
    from labctl.cli.modelfit import lab_gpus
    from labctl.cli.models import disk_models, inventory_doc

    path = config_path
    lab_path = (src.get("lab") or {}).get("config")
    if path is None and isinstance(lab_path, str) and Path(lab_path).is_file():
        path = Path(lab_path)
    try:
        config = load_config(path, check_host=False)
        gpus = lab_gpus(config, ())
        inv, rows, fits = disk_models(config, gpus)
        models = inventory_doc(config, gpus, inv, rows, fits)
    except LabError as exc:
        warn(f"the models on disk were not read: {exc}")
        return None, []
    return models, _plans(src, config)


def _plans(src: dict[str, Any], config: LabConfig) -> list[dict[str, Any]]:
    """Each vLLM (or twin) deployment's model planned on the lab's GPUs it names."""
    from labctl.cache.resolve import resolve_model
    from labctl.cli.modelfit import lab_gpus
    from labctl.fit.plan import plan

    gpus = lab_gpus(config, ())
    out = []
    seen: set[tuple[str, str]] = set()
    for d in src.get("deployments") or []:
        model = str(d.get("model") or "")
        if d.get("engine") not in ("vllm", "sim") or not model:
            continue
        for i in d.get("gpus") or [0]:
            if not isinstance(i, int) or not 0 <= i < len(gpus) or (model, gpus[i].label) in seen:
                continue
            seen.add((model, gpus[i].label))
            row: dict[str, Any] = {"model": model, "gpu": gpus[i].label}
            try:
                r = plan(resolve_model(model, config.models, hub=False), gpus[i].request,
                         suggest=False)  # fmt: skip
            except LabError as exc:
                out.append(row | {"note": str(exc).splitlines()[0][:200]})
                continue
            row |= {k: getattr(r, k) for k in ("fits", "weights_bytes", "kv_cache_tokens",
                                                "max_model_len", "max_model_len_fit",
                                                "max_concurrency")}  # fmt: skip
            row["note"] = r.reasons[0] if r.reasons else ""
            out.append(row)
    return out
