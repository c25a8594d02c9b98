"""``labctl exporter``: GPU and host telemetry as a Prometheus endpoint."""

from __future__ import annotations

import signal
import threading

import click

from labctl.cli.output import console
from labctl.config import state_dir
from labctl.errors import UsageError
from labctl.gpu import BACKENDS
from labctl.units import parse_duration


@click.command()
@click.option(
    "--listen", default="127.0.0.1:9400", show_default=True, help="HOST:PORT to serve /metrics on"
)
@click.option(
    "--gpu-backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
    help="real GPUs through NVML, simulated GPUs, or NVML when it sees a GPU",
)  # fmt: skip
@click.option(
    "--sim-gpus",
    metavar="IDS",
    help="catalog GPUs to simulate, e.g. rtx-3090,h100-sxm or 8xh100-sxm (default: as last set)",
)
@click.option("--interval", default="1s", show_default=True, help="time between GPU reads")
@click.option(
    "--label-style", type=click.Choice(["dcgm", "prometheus"]), default="dcgm", show_default=True,
    help="dcgm: DCGM's own labels (modelName); prometheus: snake_case (model_name)",
)  # fmt: skip
@click.option(
    "--owner",
    "owner_flags",
    multiple=True,
    metavar="PID=NAME",
    help="count PID's process tree as deployment NAME (repeatable; also read from "
    "$LABCTL_HOME/owners.json)",
)
def exporter(
    listen: str,
    gpu_backend: str,
    sim_gpus: str | None,
    interval: str,
    label_style: str,
    owner_flags: tuple[str, ...],
) -> None:
    """Serve GPU and host telemetry for Prometheus, with DCGM's metric names.

    A thread reads the GPUs once per interval; scrapes read its last snapshot and
    never call NVML. Runs until Ctrl-C or SIGTERM.
    """
    from labctl.gpu import open_backend
    from labctl.gpu.host import HostSampler
    from labctl.gpu.sim import parse_sim_gpus
    from labctl.telemetry.attribution import parse_owner_flags, read_owners
    from labctl.telemetry.exporter import parse_listen, serve
    from labctl.telemetry.sampler import Sampler

    try:
        seconds = parse_duration(interval)
    except ValueError as exc:
        raise UsageError(f"--interval: {exc}") from exc
    if not 0.05 <= seconds <= 3600:
        raise UsageError(f"--interval {interval}: use 50ms to 1h, e.g. 1s")
    host, port = parse_listen(listen)
    static = parse_owner_flags(owner_flags)
    specs = parse_sim_gpus(sim_gpus) if sim_gpus is not None else None
    home = state_dir()
    backend = open_backend(gpu_backend, home, specs)
    owners_file = home / "owners.json"

    def owners() -> dict[int, str]:
        return {**read_owners(owners_file), **static}

    sampler = Sampler(backend, HostSampler(), owners, interval=seconds)
    running = serve(sampler, host, port, label_style=label_style)
    snap = sampler.latest
    n = len(snap.reading.devices) if snap and snap.reading else 0
    names = sorted({d.name for d in snap.reading.devices}) if snap and snap.reading else []
    console().print(
        f"labctl exporter: serving {running.url} · {backend.name}: {n} GPU{'s' * (n != 1)}"
        f"{' (' + ', '.join(names) + ')' if names else ''} · every {interval}"
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop.wait(3600):
            pass
    finally:
        running.close()
        backend.close()
