"""``labctl up`` and the commands that talk to it: down, status, ps, deploy, cancel, rollback,
history, dashboard.

The admin token comes from ``LABCTL_TOKEN``, else from the file the lab generated in
``$LABCTL_HOME`` (the CLI on the lab's own machine needs nothing set)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
import sys
import time
from typing import Any
import urllib.error
import urllib.request

import click

from labctl.cli import follow, loadpath
from labctl.cli.output import console, emit_json
from labctl.config import load_config, state_dir
from labctl.doctor.finding import ignored_checks
from labctl.errors import DeployError, LabError, UsageError
from labctl.home import lock_holder, read_token, same_lab

DEFAULT_URL = "http://127.0.0.1:8080"

url_option = click.option(
    "--url", envvar="LABCTL_URL", default=DEFAULT_URL, show_default=True,
    help="the lab daemon [env LABCTL_URL]",
)  # fmt: skip


def auth_headers(url: str) -> dict[str, str]:
    """The admin token for ``url``: LABCTL_TOKEN, else the token this machine's lab made, which
    goes to that lab only, never to another --url."""
    home = state_dir()
    if token := os.environ.get("LABCTL_TOKEN") or (same_lab(url, home) and read_token(home)):
        return {"Authorization": f"Bearer {token}"}
    return {}


def call(url: str, method: str, path: str, body: Any = None, timeout: float | None = 600) -> Any:
    """One request to the daemon's admin API; errors become one-line LabErrors."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **auth_headers(url)}
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code} from {url}{path}"
        if exc.code == 409:
            raise DeployError(message) from None
        if exc.code in (401, 403):
            raise UsageError(
                f"{message}: set LABCTL_TOKEN to the lab's admin token ({state_dir()}/admin-token "
                "on the lab's machine, or lab.toml's gateway.admin_token)"
            ) from None
        raise UsageError(message) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoLab(
            f"no lab answers at {url} ({reason}); start one with `labctl up`, or pass --url"
        ) from None


class NoLab(LabError):
    """Nothing answers at the lab's URL."""


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml (default: the embedded default lab)")  # fmt: skip
@click.option("--listen", help="HOST:PORT for the daemon (default: lab.listen, 127.0.0.1:8080)")
def up(config_path: Path | None, listen: str | None) -> None:
    """Run the lab: its deployments, telemetry and admin API, until Ctrl-C."""
    from labctl.daemon.app import Daemon
    from labctl.daemon.listener import event_loop

    config = load_config(config_path)
    ignored_checks(config)  # lab.doctor_ignore names checks the doctor has
    if config.models.hf_cache:  # the cache the lab checks is the one its engines read
        os.environ["HF_HUB_CACHE"] = str(Path(config.models.hf_cache).expanduser())
    daemon = Daemon(config, state_dir(), listen)

    def listening(url: str) -> None:
        names = ", ".join(d.name for d in config.deployments) or "none"
        click.echo(f"labctl: lab at {url} ({config.source}; deployments: {names})")
        click.echo(f"  dashboard  {daemon.login_url()}  (a one-time login link)")
        click.echo(f"  admin API  {url}/api/status")
        click.echo(f"  metrics    {url}/metrics")
        click.echo(f"  status     labctl status{'' if url == DEFAULT_URL else f' --url {url}'}")
        click.echo("  Ctrl-C stops every engine and waits for their memory; twice kills them.")

    with asyncio.Runner(loop_factory=event_loop) as runner:  # uvloop where installed
        runner.run(daemon.run(listening))
    click.echo("labctl: lab stopped")


@click.command()
@url_option
def down(url: str) -> None:
    """Stop the lab: every engine first, then the daemon; then any engine process the lab's
    journal owns that is still running (left by a daemon that was killed)."""
    home = state_dir()
    try:
        call(url, "POST", "/api/shutdown", timeout=10)
        click.echo(f"labctl: stopping the lab at {url}")
        deadline = time.monotonic() + 120
        while lock_holder(home) is not None and time.monotonic() < deadline:
            time.sleep(0.2)  # the daemon stops its engines and waits for their memory
    except NoLab:
        holder = lock_holder(home)
        if holder is not None:
            raise LabError(
                f"the lab's daemon (pid {holder}) runs on LABCTL_HOME={home} but does not answer "
                f"at {url}; pass its --url, or stop it with `kill {holder}`"
            ) from None
    if not (home / "journal.db").exists() or lock_holder(home) is not None:
        return
    from labctl.deploy.journal import Journal
    from labctl.deploy.reconcile import leftovers, stop_leftovers

    journal = Journal(home / "journal.db")
    try:
        stray = leftovers(journal, home, keep=set())
        for line in asyncio.run(stop_leftovers(stray, home)):
            click.echo(f"labctl: {line}, left running by a daemon that is gone")
        for cur in journal.current():
            journal.clear_current(cur.deployment)
    finally:
        journal.close()


@click.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def status(url: str, as_json: bool) -> None:
    """One screen: GPUs, deployments (state, requests, queue, KV, latency; for speech, the
    real-time factor and latency by audio length; for VLA, actions per second against the
    control rate, action latency against the deadline and the share late) and alerts."""
    doc = call(url, "GET", "/api/status", timeout=10)
    if as_json:
        emit_json(doc)
        return
    out = console()
    out.print(f"lab {doc['url']} (pid {doc['pid']}, {doc['config']}, GPUs: {doc['gpu_backend']})")
    for g in doc.get("gpus", []):
        total = g.get("memory_total_bytes")
        owners = dict(g.get("memory_by_deployment") or {})
        if g.get("unaccounted_bytes"):
            owners["unaccounted"] = g["unaccounted_bytes"]
        used = sum(owners.values())
        split = ", ".join(f"{k} {_gib(v)}" for k, v in owners.items()) or "nothing held"
        reasons = ", ".join(g.get("throttle_reasons") or []) or "none"
        out.print(
            f"GPU {g['index']} {g['name']}: {_gib(used)} of {_gib(total)} GiB ({split}) · "
            f"util {_num(g.get('util_percent'), '%')} · {_num(g.get('power_watts'), ' W')} · "
            f"{_num(g.get('temperature_c'), ' °C')} · throttled: {reasons}"
        )
    out.print(f"{'NAME':<12}{'STATE':<10}{'REV':>4}  {'MODEL':<28}{'RUN':>5}{'WAIT':>5}{'QUEUE':>6}"
              f"{'KV':>6}  {'TTFT p50/p99':<16}{'ITL p50/p99':<15}{'TOK/S':>7}")  # fmt: skip
    serving = doc.get("serving", {})
    for d in doc["deployments"]:
        s = serving.get(d["name"], {})
        ttft = f"{_ms(s.get('ttft_p50'))}/{_ms(s.get('ttft_p99'))}"
        itl = f"{_ms(s.get('itl_p50'))}/{_ms(s.get('itl_p99'))}"
        kv = s.get("kv")
        out.print(
            f"{d['name']:<12}{d['state']:<10}{d['revision'] or '-':>4}  {str(d['model'] or '-')[:27]:<28}"
            f"{_num(s.get('requests_running')):>5}{_num(s.get('requests_waiting')):>5}"
            f"{_num(s.get('requests_queued')):>6}{'-' if kv is None else f'{kv:.0%}':>6}  "
            f"{ttft + ' ms':<16}{itl + ' ms':<15}{_num(s.get('tokens_completion')):>7}"
        )
        sp = doc.get("speech", {}).get(d["name"])
        if sp:
            p95 = ", ".join(f"{length} {_ms(v.get('p95'))} ms"
                            for length, v in (sp.get("latency") or {}).items()
                            if v.get("p95") is not None)  # fmt: skip
            out.print(f"  speech: RTFx {_x(sp.get('rtfx'))} (floor {_x(sp.get('rtfx_floor'))}) · "
                      f"{_fixed(sp.get('requests_per_second'))} requests/s"
                      + (f" · p95 by length: {p95}" if p95 else ""))  # fmt: skip
        vla = doc.get("vla", {}).get(d["name"])
        if vla:
            out.print(f"  vla: {_fixed(vla.get('actions_per_second'))} actions/s all robots "
                      f"(target {_fixed(vla.get('control_hz'))} Hz per robot) · latency p50/p99 "
                      f"{_ms(vla.get('latency_p50'))}/{_ms(vla.get('latency_p99'))} ms "
                      f"(deadline {_ms(vla.get('deadline_seconds'))} ms) · "
                      f"{_pct(vla.get('deadline_miss_ratio'))} of answers late")  # fmt: skip
        if bn := d.get("bottleneck"):  # under the speech and robot lines, which follow the row
            out.print(f"  bottleneck: {bn['class']} · {bn['evidence']}")
        if start := loadpath.summary(d.get("load_path")):
            out.print(f"  {start}")
        for p in d.get("asleep") or []:  # revisions kept asleep for a warm swap back
            out.print(f"  asleep: r{p['revision']} {p['model']} (level {p['level']}, "
                      f"{_gib(p['gpu_bytes'])} GiB on its GPUs, {_gib(p['host_bytes'])} GiB "
                      "of host RAM)")  # fmt: skip
        if d["error"]:
            out.print(f"  {d['error']}")
    alerts = doc.get("alerts", [])
    firing = [a for a in alerts if a["state"] == "firing"]
    pending = len(alerts) - len(firing)
    out.print(f"alerts: {len(firing)} firing, {pending} pending" if alerts else "alerts: none")
    for a in alerts:
        out.print(f"  {a['state'].upper():<8}{a['name']} ({a['severity']}): {a['summary']}")
        fires = a.get("fires_at") if a["state"] == "pending" else None
        at = "" if fires is None else time.strftime("%H:%M:%S", time.localtime(fires))
        out.print(f"          {a['runbook']}" + (f" (fires at {at} if it holds)" if at else ""))


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


@click.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def ps(url: str, as_json: bool) -> None:
    """Every engine process and worker the lab runs, with its GPU memory."""
    doc = call(url, "GET", "/api/ps", timeout=10)
    if as_json:
        emit_json(doc)
        return
    out = console()
    boxed = any(p.get("container") for p in doc["processes"])
    extra = "  CONTAINER ID (IMAGE)" if boxed else ""
    out.print(f"{'DEPLOYMENT':<14}{'REV':>4}  {'PID':>8}  {'ROLE':<10}{'GPU MEMORY':>10}{extra}")
    for p in doc["processes"]:
        box = (f"  {p['container']} {(p.get('container_id') or '')[:12]} ({p['image']})"
               if p.get("container") else "")  # fmt: skip
        out.print(f"{p['deployment']:<14}{p['revision'] or '-':>4}  {p['pid']:>8}  {p['role']:<10}"
                  f"{p['gpu_memory_bytes'] / 2**30:>6.2f} GiB{box}")  # fmt: skip


def _value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.command()
@click.argument("name")
@click.option("--model", help="the model of the new revision")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="a setting or engine flag, e.g. max_model_len=8192 or args.enforce_eager=true")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="only check that it would fit (preflight)")
@click.option("--detach", is_flag=True, help="start it and return its ticket at once")
@click.option("--cancel", "cancelling", is_flag=True,
              help="cancel NAME's deploy in progress instead (as `labctl cancel NAME`)")  # fmt: skip
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def deploy(name: str, model: str | None, settings: tuple[str, ...], dry_run: bool, detach: bool,
           cancelling: bool, url: str, as_json: bool) -> None:  # fmt: skip
    """Replace NAME's running revision: preflight, drain, stop, verify release, start, smoke
    test, switch, or roll back. It is followed live until it ends; Ctrl-C stops following and
    leaves it running."""
    if cancelling:
        if model or settings or dry_run or detach:
            raise UsageError("--cancel takes only NAME (and --url, --json)")
        _cancel(name, url, as_json)
        return
    values = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: use KEY=VALUE, e.g. max_model_len=8192")
        values[key] = _value(value)
    body = {"model": model, "set": values, "dry_run": dry_run}
    if dry_run:
        record = call(url, "POST", f"/api/deployments/{name}/deploy", body, timeout=60)
        if as_json:
            emit_json(record)
        else:
            click.echo(f"{name}: fits ({record['need']})")
            line = loadpath.predicted_line(record.get("predicted"))
            if line:
                click.echo(f"  {line}")
        return
    _follow(url, name, "deploy", body, as_json, detach)


def _follow(url: str, name: str, action: str, body: dict[str, Any], as_json: bool,
            detach: bool) -> None:  # fmt: skip
    """Start ``action`` (deploy, rollback) and follow it to its end (or only start it)."""
    if detach:
        doc = call(url, "POST", f"/api/deployments/{name}/{action}", {**body, "wait": False},
                   timeout=60)  # fmt: skip
        if as_json:
            emit_json(doc)
        else:
            click.echo(f"{name}: {action} started (ticket {doc['ticket']}); follow it with "
                       f"`labctl history {name}`, cancel it with `labctl deploy --cancel {name}`")  # fmt: skip
        return
    try:
        done = follow.watch(url, name, action, body, call, auth_headers(url),
                            follow.stream_for(as_json))  # fmt: skip
    except follow.Detached as gone:
        if gone.ticket is None:
            click.echo(f"interrupted before the lab answered; `labctl history {name}` shows "
                       f"whether the {action} began", err=True)  # fmt: skip
        else:
            click.echo(f"detached: the deploy goes on in the lab; follow it with `labctl "
                       f"history {name}`, cancel it with `labctl deploy --cancel {name}` (or "
                       f"`labctl cancel {name}`)", err=True)  # fmt: skip
        sys.exit(130)  # Ctrl-C's status; the deploy is not cancelled
    record = done.get("record")
    error = done.get("error")
    if error is None and (record is None or record.get("outcome") != "committed"):
        error = f"{name}: the {action} ended {(record or {}).get('outcome') or 'unfinished'}"
    if as_json and record is not None:
        emit_json(record)
    elif record is not None and error is None:
        _print_deploy(record)
    if error is not None:
        raise DeployError(str(error))


def _cancel(name: str, url: str, as_json: bool) -> None:
    doc = call(url, "POST", f"/api/deployments/{name}/cancel", {}, timeout=10)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"{name}: deploy cancelled; it rolls back to the revision that served before")


@click.command()
@click.argument("name")
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def cancel(name: str, url: str, as_json: bool) -> None:
    """Cancel NAME's deploy in progress: it stops where it safely can and rolls back."""
    _cancel(name, url, as_json)


@click.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def dashboard(url: str, as_json: bool) -> None:
    """Print a one-time link that logs a browser in to the lab's dashboard."""
    doc = call(url, "POST", "/api/login-link", {}, timeout=10)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"{doc['url']}  (works once, for ten minutes)")


@click.command()
@click.argument("name")
@click.option("--detach", is_flag=True, help="start it and return its ticket at once")
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def rollback(name: str, detach: bool, url: str, as_json: bool) -> None:
    """Deploy the revision NAME served before this one, followed live as `labctl deploy`."""
    _follow(url, name, "rollback", {}, as_json, detach)


@click.command()
@click.argument("name", required=False)
@url_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def history(name: str | None, url: str, as_json: bool) -> None:
    """Deploys, newest first, with every step's duration and the memory released."""
    doc = call(url, "GET", "/api/history" + (f"?deployment={name}" if name else ""), timeout=10)
    if as_json:
        emit_json(doc)
        return
    for record in doc["deploys"]:
        _print_deploy(record)


def _print_deploy(r: dict[str, Any]) -> None:
    out = console()
    took = f"{r['duration_s']:.2f} s" if r["duration_s"] is not None else "unfinished"
    frm = f"r{r['from_revision']}" if r["from_revision"] else "-"
    out.print(f"#{r['id']} {r['deployment']} {r['kind']} {frm} → r{r['to_revision']}: "
              f"{r['outcome'] or 'in progress'} ({took})")  # fmt: skip
    if r["error"]:
        out.print(f"    {_clip(r['error'])}")
    for s in r["steps"]:
        dur = f"{s['duration_s']:.3f} s" if s["duration_s"] is not None else "…"
        freed = f", released {s['freed_bytes'] / 2**30:.2f} GiB" if s["freed_bytes"] else ""
        err = f": {_clip(s['error'])}" if s["error"] and s["error"] != r["error"] else ""
        level = (s.get("detail") or {}).get("level") if s["name"] in ("sleep", "wake") else None
        freed += f", level {level}" if level else ""
        out.print(f"    {s['name']:<15}{s['outcome'] or '…':<8}{dur:>10}{freed}{err}")
        for line in loadpath.step_lines(s.get("detail") or {}):
            out.print(f"    {'':<15}{line}")


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
