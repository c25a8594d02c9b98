"""``labctl doctor``: checks of the host, GPUs, container runtime and the lab, with remedies."""

from __future__ import annotations

from pathlib import Path
import sys

import click
from rich.markup import escape
from rich.table import Table

from labctl.cli.output import console, emit_json
from labctl.config import load_config
from labctl.daemon.doctor import host_view
from labctl.doctor.finding import PLACES, Context, Report, checks, run_checks
from labctl.errors import UsageError

_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml, as `labctl up` takes it (default: the embedded default lab)")  # fmt: skip
@click.option("--only", "only", multiple=True, metavar="CODE",
              help="run only this check (repeatable, or comma-separated)")  # fmt: skip
@click.option("--explain", "explain", metavar="CODE", is_flag=False, flag_value="",
              default=None, help="what a check detects and how to fix it (no CODE: list them)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def doctor(
    config_path: Path | None, only: tuple[str, ...], explain: str | None, as_json: bool
) -> None:
    """Check drivers, CUDA, NVML, containers, the host and the lab; each finding has its
    evidence and a remedy. Exits 1 when any finding is a failure."""
    if explain is not None:
        _explain(explain, as_json)
        return
    codes = [c.strip() for part in only for c in part.split(",") if c.strip()]
    lab = load_config(config_path, check_host=False)
    report = run_checks(Context(host_view(), lab), codes)  # or the testing hooks' fixture host
    if as_json:
        emit_json(report.to_json())
    else:
        render(report)
    if report.failed:
        sys.exit(1)  # click's Exit is a return value under the group's standalone_mode=False


def _explain(code: str, as_json: bool) -> None:
    known = checks()
    if code and code not in known:
        raise UsageError(f"no check named {code}; `labctl doctor --explain` lists them")
    chosen = [known[code]] if code else sorted(known.values(), key=lambda c: (c.place, c.code))
    if as_json:
        emit_json({"checks": [{"code": c.code, "place": c.place, "title": c.title,
                               "explain": c.explain, "rows": list(c.rows)} for c in chosen]})  # fmt: skip
        return
    out = console()
    if not code:
        t = Table(title="checks (labctl doctor --explain CODE for one)")
        for col in ("code", "place", "what"):
            t.add_column(col)
        for c in chosen:
            t.add_row(c.code, c.place, c.title)
        out.print(t)
        return
    c = chosen[0]
    out.print(f"[bold]{c.code}[/bold] ({c.place}): {escape(c.title)}", markup=True)
    out.print(escape(c.explain), markup=True)


def render(report: Report) -> None:
    out = console()
    places = sorted({f.place for f in report.findings},
                    key=lambda p: (PLACES.index(p.split()[0].rstrip(":")) if p.split()[0].rstrip(":") in PLACES else 9, p))  # fmt: skip
    for place in places:
        out.print(f"[bold]{escape(place)}[/bold]", markup=True)
        for f in (f for f in report.findings if f.place == place):
            style = _STYLE[f.severity]
            out.print(
                f"  [{style}]{f.severity:<4}[/{style}] {f.code}: {escape(f.message)}", markup=True
            )
            if f.severity != "ok":
                out.print(f"       [dim]evidence:[/dim] {escape(f.evidence)}", markup=True)
                if f.remedy:
                    out.print(f"       [dim]remedy:[/dim]   {escape(f.remedy)}", markup=True)
    counts = {s: sum(1 for f in report.findings if f.severity == s)
              for s in ("fail", "warn", "info", "ok")}  # fmt: skip
    if report.skipped:
        out.print("[bold]skipped[/bold]", markup=True)
        by_reason: dict[str, list[str]] = {}
        for s in report.skipped:  # one line per reason: "no driver" skips a dozen checks
            by_reason.setdefault(s.reason, []).append(s.code)
        for reason, codes in by_reason.items():
            out.print(f"  {', '.join(codes)}: {escape(reason)}", markup=True)
    out.print(", ".join(f"{n} {s}" for s, n in counts.items()) +
              f", {len(report.skipped)} skipped ({report.seconds:.2f} s)")  # fmt: skip
