"""``labctl bench --record``: a result kept by the lab (``POST /api/bench``) for its reports.

By default a bench records its result when it ran against the lab itself: its
``--base-url`` has the scheme, host and port of the lab's URL (``LABCTL_URL``, else the URL
the running lab wrote in its home; ``localhost`` and ``127.0.0.1`` are one host). Recording
is a courtesy: when it fails the bench says so and still succeeds.
"""

from __future__ import annotations

import json
import os
from typing import Any
import urllib.parse

import click

from labctl.cli.output import warn
from labctl.config import state_dir
from labctl.errors import LabError
from labctl.home import URL_FILE

record_option = click.option(
    "--record/--no-record", default=None,
    help="keep the result in the lab for its reports (default: when --base-url is the lab's "
    "URL: LABCTL_URL, else the running lab's)",
)  # fmt: skip

_LOOPBACK = {"localhost", "127.0.0.1"}
_PORTS = {"http": 80, "https": 443}


def lab_url() -> str | None:
    """The lab's URL: ``LABCTL_URL``, else the one the running lab wrote in its home."""
    if url := os.environ.get("LABCTL_URL"):
        return url
    try:
        return (state_dir() / URL_FILE).read_text().strip() or None
    except OSError:
        return None


def same_server(a: str, b: str) -> bool:
    """Whether URLs ``a`` and ``b`` have one scheme, host and port (paths aside)."""
    x, y = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    try:
        ports = [u.port or _PORTS.get(u.scheme.lower()) for u in (x, y)]
    except ValueError:  # a port that is not a number
        return False
    hosts = {(x.hostname or "").lower(), (y.hostname or "").lower()}
    return (
        x.scheme.lower() == y.scheme.lower()
        and ports[0] == ports[1]
        and (len(hosts) == 1 or hosts <= _LOOPBACK)
    )


def record(kw: dict[str, Any], runs: list[dict[str, Any]], result: Any, interrupted: bool) -> None:
    """Post ``result`` to the lab as ``--record`` (``kw["record"]``) says; a run interrupted
    or with nothing completed is not kept."""
    asked, lab = kw["record"], lab_url()
    if asked is False or (asked is None and (lab is None or not same_server(kw["base_url"], lab))):
        return
    if interrupted or all(doc["completed"] == 0 for doc in runs):
        if asked:
            warn("the result was not recorded in the lab: the run was interrupted or failed")
        return
    from labctl.cli.lab import DEFAULT_URL, call

    url = lab or DEFAULT_URL
    if not same_server(kw["base_url"], url):
        click.echo(f"labctl: recording in the lab at {url} (--record), although the bench ran "
                   f"against {kw['base_url']}", err=True)  # fmt: skip
    try:
        doc = call(url, "POST", "/api/bench", json.loads(json.dumps(result, default=str)), 30)
        click.echo(f"labctl: recorded in the lab as bench #{doc['id']}", err=True)
    except (LabError, TypeError, KeyError) as exc:
        warn(f"the result was not recorded in the lab at {url}: {exc}")
