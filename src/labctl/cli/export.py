"""``labctl export prometheus --out DIR``: a Prometheus setup for a running lab."""

from __future__ import annotations

from pathlib import Path
import urllib.parse

import click

from labctl.cli.lab import DEFAULT_URL
from labctl.errors import UsageError

PROMETHEUS = """\
# Prometheus for a labctl lab: `prometheus --config.file={dir}/prometheus.yml`.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
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


@click.command()
@click.argument("what", type=click.Choice(["prometheus"]))
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="folder to write"
)
@click.option("--url", envvar="LABCTL_URL", default=DEFAULT_URL, show_default=True,
              help="the lab daemon to scrape [env LABCTL_URL]")  # fmt: skip
def export(what: str, out: Path, url: str) -> None:
    """Write a Prometheus configuration, the alert rules and their promtool tests to OUT.

    Check them with `promtool check config OUT/prometheus.yml` and
    `promtool test rules OUT/labctl-rules.test.yml`.
    """
    from labctl.dashboard.alerts import ALERTS, promtool_tests_yaml, rules_yaml

    target = urllib.parse.urlsplit(url).netloc
    if not target:
        raise UsageError(f"--url {url!r} is not a URL; e.g. http://127.0.0.1:8080")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "prometheus.yml").write_text(
            PROMETHEUS.format(dir=out, target=target, url=url.rstrip("/"))
        )
        (out / "labctl-rules.yml").write_text(rules_yaml())
        (out / "labctl-rules.test.yml").write_text(promtool_tests_yaml("labctl-rules.yml"))
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {out}/prometheus.yml, labctl-rules.yml ({len(ALERTS)} alerts) and "
               "labctl-rules.test.yml")  # fmt: skip
