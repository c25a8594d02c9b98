"""The lab as a systemd service: ``labctl.service`` and its drop-in of the user's paths.

The unit is ``Type=notify``: the daemon sends READY=1 once the deployments lab.toml lists
have started (or failed to), so ``TimeoutStartSec`` covers their startups, one after
another; and STOPPING=1 as it drains. It stops its engines itself, so ``KillMode=mixed``
sends SIGTERM to the daemon alone, and SIGKILL to whatever is left only after
``TimeoutStopSec``, which is longer than the daemon's own bound (the drain, the longest
stop grace, the memory's release). The limits are the doctor's advice (``open-files-limit``,
``memlock-limit``). The drop-in (``labctl.service.d/paths.conf``) holds what belongs to the
user who exported it: the account the lab runs as, its model cache and ``PATH`` (where the
engines' binaries are); ``systemctl edit labctl`` changes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
import math
from pathlib import Path
import re

from labctl.config import LabConfig
from labctl.errors import UsageError

#: The unit's file name, and its drop-in folder's and file's.
UNIT = "labctl.service"
DROPIN = f"{UNIT}.d/paths.conf"

#: Seconds a deployment without ``startup_timeout`` gets to start (vLLM's own unit example).
START_EACH_S = 1800
#: Seconds the daemon takes before and between its starts: reconcile, doctor, preflight, smoke.
START_MARGIN_S = 120
#: Seconds beyond the drain and the longest stop grace: the daemon's wait for the memory to
#: come back, and its closing.
STOP_MARGIN_S = 30
#: The doctor's advice: vLLM raises its soft open-files limit to the hard one; llama.cpp's
#: --mlock and RDMA need locked memory.
LIMIT_NOFILE = 1048576
LIMIT_MEMLOCK = "infinity"

_PLAIN = re.compile(r"[A-Za-z0-9_./:@+,=%$-]+")


@dataclass(frozen=True)
class Host:
    """What the unit takes from the machine and the user exporting it."""

    #: ExecStart's argv: this labctl, absolute, and ``up`` with its ``--config``.
    command: tuple[str, ...]
    #: ``LABCTL_HOME``: the lab's state (journal, token, logs), absolute.
    home: Path
    #: The account the lab runs as (None: root, systemd's default).
    user: str | None = None
    #: The drop-in's environment: the model cache, ``PATH``.
    env: Mapping[str, str] = field(default_factory=dict)


def start_timeout(config: LabConfig) -> str:
    """``TimeoutStartSec``: every deployment's ``startup_timeout`` (else 30 min) in turn,
    plus the daemon's margin; ``infinity`` when a deploy may pull its model first
    (``[models] pull``), which takes as long as the network does."""
    if config.models.pull:
        return "infinity"
    each = (d.startup_timeout if d.startup_timeout is not None else START_EACH_S
            for d in config.deployments)  # fmt: skip
    return f"{math.ceil(START_MARGIN_S + sum(each))}s"


def stop_timeout(config: LabConfig) -> str:
    """``TimeoutStopSec``: ``gateway.drain_timeout`` + the longest ``stop_grace`` + margin."""
    grace = max((d.stop_grace for d in config.deployments), default=0.0)
    return f"{math.ceil(config.gateway.drain_timeout + grace + STOP_MARGIN_S)}s"


def unit_text(config: LabConfig, host: Host) -> str:
    """``labctl.service`` for ``config`` (its ``source`` names the lab.toml or the embedded
    default) run as ``host`` says.

    Raises:
        UsageError: a path that a unit file cannot hold (a line break).
    """
    source = _one_line(config.source, "the lab's source")
    return f"""\
# The labctl lab ({source}) as a systemd service: `labctl export systemd` wrote it.
# Install: copy it to /etc/systemd/system/ with its drop-in folder {UNIT}.d/, then
# `systemctl daemon-reload && systemctl enable --now labctl`.
[Unit]
Description=labctl lab ({source})
After=network-online.target nvidia-persistenced.service
Wants=network-online.target nvidia-persistenced.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_line(host.command)}
{environment("LABCTL_HOME", str(host.home))}
# READY=1 waits for every deployment's start (their startup_timeout, else 30 min each).
TimeoutStartSec={start_timeout(config)}
# The daemon drains and stops its engines itself: SIGTERM to it alone, SIGKILL to what is
# left after gateway.drain_timeout + the longest stop_grace + {STOP_MARGIN_S} s.
KillMode=mixed
TimeoutStopSec={stop_timeout(config)}
Restart=on-failure
RestartSec=5s
LimitNOFILE={LIMIT_NOFILE}
LimitMEMLOCK={LIMIT_MEMLOCK}

[Install]
WantedBy=multi-user.target
"""


def dropin_text(host: Host) -> str:
    """``labctl.service.d/paths.conf``: the account and the paths of the user who exported
    the unit.

    Raises:
        UsageError: a value that a unit file cannot hold (a line break).
    """
    lines = [
        "# The user's account and paths for labctl.service (`labctl export systemd` wrote them;",
        "# `systemctl edit labctl` changes them): the lab runs with the same state, model cache",
        "# and engine binaries as `labctl up` in that user's shell.",
        "[Service]",
    ]
    if host.user:
        lines.append(f"User={_one_line(host.user, 'the user name')}")
    lines += [environment(name, value) for name, value in sorted(host.env.items())]
    return "\n".join(lines) + "\n"


def exec_line(argv: Sequence[str]) -> str:
    """``argv`` as ExecStart= reads it: specifiers (``%``) and variables (``$``) escaped,
    words with other characters quoted."""
    return " ".join(_quote(_one_line(a, "the command").replace("%", "%%").replace("$", "$$"))
                    for a in argv)  # fmt: skip


def environment(name: str, value: str) -> str:
    """One ``Environment=`` line setting ``name`` to ``value`` exactly."""
    text = _one_line(f"{name}={value}", name).replace("%", "%%")
    return f"Environment={_quote(text)}"


def search_path(value: str) -> str:
    """``PATH`` as the unit should set it: its absolute folders, in order, once each."""
    return ":".join(dict.fromkeys(p for p in value.split(":") if p.startswith("/")))


def files(config: LabConfig, host: Host) -> Iterable[tuple[str, str]]:
    """The files to write, as (path relative to ``--out``, text)."""
    yield UNIT, unit_text(config, host)
    yield DROPIN, dropin_text(host)


def _quote(word: str) -> str:
    if _PLAIN.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _one_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise UsageError(f"{what} {value!r} has a line break, which a systemd unit cannot hold; "
                         "move or rename it")  # fmt: skip
    return value
