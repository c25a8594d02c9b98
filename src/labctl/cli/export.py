"""``labctl export prometheus|grafana --out DIR``: monitoring for a running lab; the\ngroup the other exports join."""

from __future__ import annotations

import json
import os
from pathlib import Path
import urllib.parse

import click

from labctl.cli.lab import DEFAULT_URL
from labctl.errors import UsageError

PROMETHEUS = """\
# Prometheus for a labctl lab: `prometheus --config.file={dir}/prometheus.yml`.
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
rule_files:
  - labctl-rules.yml
scrape_configs:
  # The daemon: GPU and host telemetry (DCGM names), deployments, deploys, gateway.
  - job_name: labctl
    static_configs:
      - targets: ["{target}"]
  # Every serving engine's own /metrics (vllm:*, llamacpp:*), found through the daemon.
  - job_name: engines
    http_sd_configs:
      - url: {url}/sd/engines
        refresh_interval: 10s
"""


@click.group()
def export() -> None:
    """Write what runs or watches the lab elsewhere: monitoring (prometheus, grafana), the
    lab as a systemd unit (systemd), its deployments as Kubernetes manifests (kubernetes)."""


_out = click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="folder to write"
)


@export.command()
@_out
@click.option("--url", envvar="LABCTL_URL", default=DEFAULT_URL, show_default=True,
              help="the lab daemon to scrape [env LABCTL_URL]")  # fmt: skip
@click.option("--scrape-interval", default="5s", show_default=True,
              help="Prometheus's scrape and rule evaluation interval")  # fmt: skip
@click.option("--alert-for-scale", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="multiply every rule's for: (0 fires at once; for tests and demos)")  # fmt: skip
def prometheus(out: Path, url: str, scrape_interval: str, alert_for_scale: float) -> None:
    """A Prometheus configuration that scrapes the daemon and every engine, the alert rules
    and their promtool tests; check them with `promtool check config OUT/prometheus.yml` and
    `promtool test rules OUT/labctl-rules.test.yml`."""
    make_out(out)
    _prometheus(out, url, scrape_interval, alert_for_scale)


@export.command()
@_out
@click.option("--prometheus-url", default="http://127.0.0.1:9090", show_default=True,
              help="where Grafana reaches Prometheus")  # fmt: skip
def grafana(out: Path, prometheus_url: str) -> None:
    """The Grafana dashboard (the built-in page's panels, with instance, GPU and deployment
    variables) and provisioning files for its data source and folder."""
    make_out(out)
    _grafana(out, prometheus_url)


def make_out(out: Path) -> None:
    """``--out``, made if missing; a file there, or no right to write, is a usage error."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: not writable")


def _prometheus(out: Path, url: str, interval: str, for_scale: float) -> None:
    from labctl.dashboard.alerts import ALERTS, promtool_tests_yaml, rules_yaml
    from labctl.dashboard.promql import PromQLError, parse_duration

    target = urllib.parse.urlsplit(url).netloc
    if not target:
        raise UsageError(f"--url {url!r} is not a URL; e.g. http://127.0.0.1:8080")
    try:
        parse_duration(interval)
    except PromQLError:
        raise UsageError(
            f"--scrape-interval {interval!r}: give a duration such as 5s or 1m"
        ) from None
    (out / "prometheus.yml").write_text(
        PROMETHEUS.format(dir=out, target=target, url=url.rstrip("/"), interval=interval)
    )
    (out / "labctl-rules.yml").write_text(rules_yaml(for_scale))
    tested = "labctl-rules.yml"
    if for_scale != 1:
        # The tests state the shipped timings; keep them beside the scaled rules.
        tested = "labctl-rules.shipped.yml"
        (out / tested).write_text(rules_yaml())
    (out / "labctl-rules.test.yml").write_text(promtool_tests_yaml(tested))
    click.echo(f"wrote {out}/prometheus.yml, labctl-rules.yml ({len(ALERTS)} alerts) and "
               "labctl-rules.test.yml")  # fmt: skip


def _grafana(out: Path, prometheus_url: str) -> None:
    from labctl.dashboard.grafana import UID, dashboard_json, provisioning

    if not urllib.parse.urlsplit(prometheus_url).netloc:
        raise UsageError(
            f"--prometheus-url {prometheus_url!r} is not a URL; e.g. http://127.0.0.1:9090"
        )
    doc = dashboard_json()
    dashboards = out / "dashboards"
    dashboards.mkdir(exist_ok=True)
    (dashboards / f"{UID}.json").write_text(json.dumps(doc, indent=2) + "\n")
    for name, text in provisioning(prometheus_url, str(dashboards.resolve())).items():
        folder = (
            out
            / "provisioning"
            / ("datasources" if name.startswith("datasource") else "dashboards")
        )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labctl.yml").write_text(text)
    panels = sum(1 for p in doc["panels"] if p.get("type") != "row")
    click.echo(f"wrote {dashboards}/{UID}.json ({panels} panels) and "
               f"{out}/provisioning/{{datasources,dashboards}}/labctl.yml")  # fmt: skip
